"""The estimated cost of a plan, before anything runs: how many rows its fetches may bring back.

A fetch's estimate is the most rows it can return as planned, tightened by the catalogue's hints:

- a root page: its page size (``limit``), at most the dataset's ``rows_hint``;
- an entity root (``persons(idNumbers: [...])``) and every fetch keyed by its parent's rows: one
  estimate per key, times the per-key count: the query's per-parent ``limit`` if it gives one, else
  the dataset's ``rows_per_key`` hint, else ``DEFAULT_PER_KEY`` (one, when the key is the dataset's
  primary key); at most the fetch's ``max_rows`` cap;
- a ``verify`` claim: one row.

The cost is the sum over fetches: each row is fetched, shaped and sent once (or, fanned out, more:
``max_nodes`` catches that while shaping). It is a bound on work, not a prediction: a filter that
matches little still costs its limit. ``[limits] cost_mode = "measure"`` estimates and records
without refusing, so that a deployment can learn its clients' costs before enforcing ``max_cost``.
"""

from __future__ import annotations

from catalog.model import Catalog
from gateway.plan import Fetch, Plan

__all__ = ["DEFAULT_PER_KEY", "estimate"]

# Records per key when neither the query nor the catalogue says (a person's jobs, cases, properties).
DEFAULT_PER_KEY = 10


def estimate(plan: Plan, catalog: Catalog) -> int:
    rows: dict[int, int] = {}
    for f in plan.fetches:  # parents come first
        rows[f.id] = _rows(f, rows, catalog)
    return sum(rows.values())


def _rows(f: Fetch, known: dict[int, int], catalog: Catalog) -> int:
    ds = catalog.datasets[f.dataset]
    if f.claim:
        return 1
    if f.page and f.query.limit is not None:
        page = f.query.limit - 1  # the planner asks for one row more, to learn whether a next page exists
        return min(page, ds.rows_hint) if ds.rows_hint is not None else page
    keys = len(f.literal_keys or ()) if f.parent is None else known.get(f.parent, 0)
    # Keyed by its own primary key: one record per key at most.
    per_key = (1 if f.query.key_column == ds.primary_key
               else f.query.limit_per_key or ds.rows_per_key or DEFAULT_PER_KEY)
    total = keys * per_key
    if f.row_cap is not None:
        total = min(total, f.row_cap)
    if ds.rows_hint is not None:
        total = min(total, ds.rows_hint)
    return total
