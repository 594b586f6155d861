"""Who is calling: what a verified access token says, in the gateway's own terms.

Besides its department and roles a client may carry **attributes**: named strings such as
``district = "北苑区"`` that row rules compare records with (a street office sees only the
residents of its own district). A registered client's attributes are in the client store and
travel in the access token's ``attributes`` claim; an external identity provider's are mapped
from its token's claims by configuration. Either way they are checked here, with one rule:
names ``^[a-z][a-z0-9_]*$`` (at most 64 characters), values non-empty strings of at most 200
characters without control characters, and at most ``MAX_ATTRIBUTES`` of them taking at most
``MAX_ATTRIBUTES_BYTES`` in a token.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["ATTRIBUTE_NAME", "Attributes", "Identity", "check_attribute_name", "check_attribute_value",
           "check_attributes"]

ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_VALUE_CHARS = 200
MAX_ATTRIBUTES = 32
# What the attributes may take in a token (UTF-8 JSON, as joserfc writes claims), so that a token
# with every attribute stays far below tokens.MAX_TOKEN_BYTES.
MAX_ATTRIBUTES_BYTES = 2048


class Attributes(Mapping[str, str]):
    """An immutable, hashable ``str -> str`` mapping (an Identity is a frozen, hashable value)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = dict(sorted((items or {}).items()))

    def __getitem__(self, name: str) -> str:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"Attributes({self._items!r})"


EMPTY = Attributes()


def check_attribute_name(name: Any) -> str:
    if not isinstance(name, str) or not ATTRIBUTE_NAME.fullmatch(name):
        raise ValueError(f"attribute name {name!r}: use a lower-case letter, then lower-case letters, digits "
                         "or '_' (at most 64 characters), e.g. district")
    return name


def check_attribute_value(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"attribute {name}: the value must be a non-empty string")
    if len(value) > MAX_VALUE_CHARS:
        raise ValueError(f"attribute {name}: the value has {len(value)} characters; at most {MAX_VALUE_CHARS}")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"attribute {name}: the value holds a control character (a newline, a tab...)")
    return value


def check_attributes(attributes: Mapping[str, Any] | None) -> Attributes:
    """The attributes, checked; ValueError saying which one is wrong and why."""
    if not attributes:
        return EMPTY
    if not isinstance(attributes, Mapping):
        raise ValueError("attributes must be a table of name = \"value\"")
    checked = {check_attribute_name(n): check_attribute_value(n, v) for n, v in attributes.items()}
    if len(checked) > MAX_ATTRIBUTES:
        raise ValueError(f"{len(checked)} attributes; a client may have at most {MAX_ATTRIBUTES}")
    size = len(json.dumps(checked, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"the attributes take {size} bytes in an access token; at most {MAX_ATTRIBUTES_BYTES}")
    return Attributes(checked)


@dataclass(frozen=True)
class Identity:
    client_id: str  # the registered client (an application of a department), never a person;
    #                 an external IdP's clients are namespaced: "idp:hospital-his" (see external.py)
    department: str  # the department code the client acts for, e.g. "civil", "health"
    roles: frozenset[str]  # what authorisation decides on, e.g. {"street-office"}
    token_id: str | None  # the token's jti, for the audit trail (external IdPs may omit it)
    issuer: str
    expires_at: datetime  # UTC
    # Named strings for row rules, e.g. {"district": "北苑区"}; empty unless the client has some.
    attributes: Mapping[str, str] = field(default=EMPTY)

    def __post_init__(self) -> None:
        if not isinstance(self.attributes, Attributes):  # a plain dict given: frozen (and checked) here
            object.__setattr__(self, "attributes", check_attributes(self.attributes))

    @property
    def jti(self) -> str | None:
        """The token's ``jti`` claim (the same as ``token_id``); None when the token had none."""
        return self.token_id
