"""A gateway starting on a changed catalogue records what changed, before and after, and who."""

from __future__ import annotations

import dataclasses
from typing import Any

from catalog.loader import load_catalog
from catalog.model import ShareType
from gateway.catalogue_events import start_events
from gateway.config import DEMO_CONFIG, load_settings


class _Store:
    """The audit store's newest_admin, over the admin record bodies a test gives it (newest first)."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies = bodies

    async def newest_admin(self, event: str) -> dict[str, Any] | None:
        return next(({"body": b} for b in self.bodies if b.get("event") == event), None)


def _catalog() -> Any:
    return load_catalog(*load_settings(DEMO_CONFIG, environ={}).catalog)


async def test_the_first_start_and_an_unchanged_catalogue_record_only_the_start() -> None:
    cat = _catalog()
    (first,) = await start_events(_Store([]), cat, "hutong.toml", {"version": 1})
    assert first["event"] == "gateway.start" and len(first["after"]["catalogue_digest"]) == 64
    assert first["after"]["catalogue"]["datasets"]["psb.resident"]["fields"]["name"].startswith("unconditional/")
    again = await start_events(_Store([first]), cat, "hutong.toml", {"version": 1})
    assert [e["event"] for e in again] == ["gateway.start"]


async def test_a_changed_share_type_is_a_catalogue_change_with_before_and_after() -> None:
    cat = _catalog()
    (first,) = await start_events(_Store([]), cat, "hutong.toml", {"version": 1})
    ds = cat.datasets["psb.resident"]
    fields = [f.model_copy(update={"share": ShareType.NONE}) if f.name == "address" else f for f in ds.fields]
    resident = ds.model_copy(update={"fields": fields})
    changed = dataclasses.replace(cat, datasets={**cat.datasets, "psb.resident": resident})
    change, start = await start_events(_Store([{"event": "policy.loaded"}, first]), changed, "hutong.toml", {})
    assert change["event"] == "catalogue.change" and start["event"] == "gateway.start"
    old = first["after"]["catalogue"]["datasets"]["psb.resident"]["fields"]["address"]
    assert change["changes"] == [f"psb.resident.address: {old} -> none/{old.split('/', 1)[1]}"]
    assert change["before"]["catalogue_digest"] == first["after"]["catalogue_digest"]
    assert change["after"]["catalogue_digest"] == start["after"]["catalogue_digest"] != change["before"][
        "catalogue_digest"]
    assert "@" in change["actor"]  # who started the gateway on it: user@host
