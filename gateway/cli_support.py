"""What every ``hutong`` command module shares: the consoles, the --config option, the error line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["ConfigOpt", "err", "error", "out"]

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Configuration file (default: $HUTONG_CONFIG, "
                                                                      "else the demo's).")]


def error(message: str) -> None:
    """``error: message`` on standard error (the message as text, never as markup)."""
    err.print(Text("error: ", style="red") + Text(message))
