"""Catalogue changes as audit events: the catalogue is files, edited outside the gateway, so its
changes are noticed when a gateway starts on a catalogue unlike the last one it recorded.

Every ``gateway.start`` admin record carries the catalogue's digest and a summary of its terms
(per dataset, per field: share type, sensitivity, default mask; per purpose: datasets and
``none`` fields). When the digest differs from the previous start's, a ``catalogue.change``
event is recorded first, with that summary before and after, the changes in words, who started
the gateway (operating-system user and host) and from which configuration.
"""

from __future__ import annotations

import getpass
import hashlib
import socket
from typing import Any

import orjson

from catalog.export import to_json
from catalog.model import Catalog
from gateway.audit.admin import admin_event

__all__ = ["catalogue_changes", "catalogue_digest", "catalogue_summary", "start_events"]



def catalogue_digest(catalog: Catalog) -> str:
    """SHA-256 of the catalogue's exported form: a catalogue change shows between two start records."""
    return hashlib.sha256(orjson.dumps(to_json(catalog), option=orjson.OPT_SORT_KEYS)).hexdigest()


def catalogue_summary(catalog: Catalog) -> dict[str, Any]:
    """The terms of sharing, compactly: what a change to them means for who may see what."""
    return {
        "datasets": {ds.code: {"provider": ds.provider, "source": ds.source,
                               "fields": {f.name: f"{f.share.value}/{f.sensitivity.value}/{f.mask}"
                                          for f in ds.fields}}
                     for ds in sorted(catalog.datasets.values(), key=lambda d: d.code)},
        "purposes": {p.code: {"datasets": sorted(p.datasets), "none_fields": sorted(p.none_fields),
                              "legal_basis": p.legal_basis}
                     for p in sorted(catalog.purposes.values(), key=lambda p: p.code)},
    }


def catalogue_changes(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """The differences between two summaries, in words (dataset.field: conditional/L3/redact -> ...)."""
    if not before:
        return ["no earlier catalogue summary recorded"]
    out: list[str] = []
    old_ds, new_ds = before.get("datasets", {}), after["datasets"]
    for code in sorted(set(old_ds) | set(new_ds)):
        if code not in new_ds:
            out.append(f"dataset {code} removed")
        elif code not in old_ds:
            out.append(f"dataset {code} added")
        else:
            a, b = old_ds[code]["fields"], new_ds[code]["fields"]
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    out.append(f"{code}.{name}: {a.get(name, '(none)')} -> {b.get(name, '(removed)')}")
            for key in ("provider", "source"):
                if old_ds[code].get(key) != new_ds[code].get(key):
                    out.append(f"dataset {code}: {key} {old_ds[code].get(key)} -> {new_ds[code].get(key)}")
    old_p, new_p = before.get("purposes", {}), after["purposes"]
    for code in sorted(set(old_p) | set(new_p)):
        if old_p.get(code) != new_p.get(code):
            what = "added" if code not in old_p else "removed" if code not in new_p else "changed"
            out.append(f"purpose {code} {what}")
    return out or ["only descriptions or names changed"]


async def start_events(store: Any, catalog: Catalog, config: str, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The admin records a start appends: ``catalogue.change`` if the catalogue differs from the one
    the previous start recorded, then ``gateway.start``."""
    digest, summary = catalogue_digest(catalog), catalogue_summary(catalog)
    previous = await _previous_start(store) if store is not None else None
    events: list[dict[str, Any]] = []
    before = (previous or {}).get("after") or {}
    if previous is not None and before.get("catalogue_digest") != digest:
        events.append(admin_event("catalogue.change", config, by=_who(),
                                  before={"catalogue_digest": before.get("catalogue_digest"),
                                          "catalogue": before.get("catalogue")},
                                  after={"catalogue_digest": digest, "catalogue": summary},
                                  detail={"changes": catalogue_changes(before.get("catalogue"), summary)}))
    events.append(admin_event("gateway.start", config, by="gateway",
                              after={"catalogue_digest": digest, "catalogue": summary, "policy": policy,
                                     "started_by": _who()}))
    return events


async def _previous_start(store: Any) -> dict[str, Any] | None:
    """The newest gateway.start record's body, however many admin events came since."""
    found = await store.newest_admin("gateway.start")
    return found["body"] if found is not None else None


def _who() -> str:
    """Who started this gateway: the operating-system account and host (the catalogue's editor is
    whoever changed the files; the start is when the change took effect)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
