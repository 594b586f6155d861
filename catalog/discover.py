"""Discovery of source schemas: draft catalogue entries from a live SQL source, and the
live half of ``hutong catalog check`` (do the declared tables, columns and types exist?)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog, DataType, camel

__all__ = ["check_sources", "discover_sql", "draft_yaml", "type_of"]

# Source column types each catalogue type may be read from (by SQLAlchemy's generic class).
_COMPATIBLE: dict[DataType, tuple[type[Any], ...]] = {
    DataType.STRING: (sa.String, sa.Text, sa.Enum, sa.Uuid),
    DataType.INTEGER: (sa.Integer,),
    DataType.FLOAT: (sa.Float, sa.Numeric, sa.Integer),
    DataType.DECIMAL: (sa.Numeric, sa.Integer),
    DataType.BOOLEAN: (sa.Boolean, sa.Integer),
    DataType.DATE: (sa.Date, sa.DateTime),
    DataType.DATETIME: (sa.DateTime,),
}


def type_of(col_type: Any) -> DataType | None:
    """The catalogue type a reflected column type maps to (None if it maps to none)."""
    for data_type, classes in (
        (DataType.BOOLEAN, (sa.Boolean,)), (DataType.INTEGER, (sa.Integer,)),
        (DataType.FLOAT, (sa.Float,)), (DataType.DECIMAL, (sa.Numeric,)),
        (DataType.DATETIME, (sa.DateTime,)), (DataType.DATE, (sa.Date,)),
        (DataType.STRING, (sa.String, sa.Text, sa.Enum, sa.Uuid)),
    ):
        if isinstance(col_type, classes):
            return data_type
    return None


async def _reflect(url: str) -> dict[str, list[dict[str, Any]]]:
    engine = create_async_engine(url, hide_parameters=True)
    try:
        async with engine.connect() as conn:
            def go(sync_conn: Any) -> dict[str, list[dict[str, Any]]]:
                insp = sa.inspect(sync_conn)
                return {t: insp.get_columns(t) for t in insp.get_table_names()}
            return await conn.run_sync(go)
    finally:
        await engine.dispose()


async def check_sources(catalog: Catalog, urls: dict[str, str]) -> list[str]:
    """Problems found by looking at the live sources: missing tables or columns, types the
    source does not have, REST endpoints that refuse the declared fields."""
    problems: list[str] = []
    for code, src in sorted(catalog.sources.items()):
        datasets = [d for d in catalog.datasets.values() if d.source == code]
        url = urls[code]
        if src.kind == "sql":
            try:
                tables = await _reflect(url)
            except Exception as exc:  # any connection failure: reported by kind
                problems.append(f"source {code}: cannot connect to reflect its tables ({type(exc).__name__})")
                continue
            for ds in datasets:
                name = (ds.table or "").rpartition(".")[2]
                if name not in tables:
                    problems.append(f"dataset {ds.code}: table {ds.table!r} does not exist in source {code}")
                    continue
                cols = {c["name"]: c for c in tables[name]}
                for f in ds.fields:
                    col = cols.get(f.name)
                    if col is None:
                        problems.append(f"dataset {ds.code}: field {f.name!r}: no such column in {ds.table}")
                    elif not isinstance(col["type"], _COMPATIBLE[f.type]):
                        problems.append(f"dataset {ds.code}: field {f.name!r} is declared {f.type.value!r} but the "
                                        f"source column is {col['type']}; declare "
                                        f"{(type_of(col['type']) or DataType.STRING).value!r}")
        else:
            async with httpx.AsyncClient(base_url=url, timeout=src.timeout) as client:
                for ds in datasets:
                    fields = ",".join(f.name for f in ds.fields)
                    try:
                        resp = await client.get(ds.endpoint or "", params={"fields": fields, "limit": 1})
                    except httpx.HTTPError as exc:
                        problems.append(f"source {code}: cannot reach {ds.endpoint} ({type(exc).__name__})")
                        continue
                    if resp.status_code != 200:
                        problems.append(f"dataset {ds.code}: {ds.endpoint} refused the declared fields "
                                        f"(HTTP {resp.status_code}: {resp.text[:200]})")
    return problems


async def discover_sql(url: str, tables: list[str] | None = None, sample: int = 20) -> list[dict[str, Any]]:
    """Draft dataset entries for the tables of a SQL source. Key kinds are guessed from sampled
    values (every non-empty sample must pass the checksum), so review the draft before use."""
    engine = create_async_engine(url, hide_parameters=True)
    out: list[dict[str, Any]] = []
    try:
        async with engine.connect() as conn:
            def meta(sync_conn: Any) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
                insp = sa.inspect(sync_conn)
                names = tables or insp.get_table_names()
                return {t: (insp.get_columns(t), insp.get_pk_constraint(t).get("constrained_columns") or [])
                        for t in names}
            reflected = await conn.run_sync(meta)
            for table, (cols, pk) in reflected.items():
                fields = []
                for col in cols:
                    dtype = type_of(col["type"]) or DataType.STRING
                    entry: dict[str, Any] = {"name": col["name"], "type": dtype.value,
                                             "description": "TODO: describe", "sensitivity": "L2",
                                             "share": "conditional", "mask": "redact" if dtype is DataType.STRING
                                             else "null"}
                    if dtype is DataType.STRING:
                        stmt = sa.select(sa.column(col["name"])).select_from(sa.table(table)).where(
                            sa.column(col["name"]).is_not(None)).limit(sample)
                        values = [r[0] for r in await conn.execute(stmt)]
                        kind = _guess_key(values)
                        if kind:
                            entry["key"] = kind
                            entry["mask"] = "id_number" if kind == "id_number" else "none"
                    fields.append(entry)
                type_name = "".join(p.capitalize() for p in re.split(r"[_\W]+", table) if p)
                keyed = [f["name"] for f in fields if "key" in f]
                subject = {"subject": keyed[0]} if len(keyed) > 1 else {}  # TODO for the reviewer: whose record
                primary = pk[0] if pk else cols[0]["name"]
                for f in fields:
                    # Read by the gateway for every record (paging, consent lookup): never conditional.
                    # Policies and masks still decide who sees them.
                    if f["name"] == primary or f["name"] in keyed[:1]:
                        f["share"] = "unconditional"
                out.append({
                    "code": f"TODO.{table.lower()}", "name": table, "description": "TODO: describe",
                    "source": "TODO", "table": table, "update_cycle": "daily",
                    "primary_key": primary,
                    "graphql": {"type": type_name, "list": camel(table) + "List"},
                    **subject,
                    "fields": fields,
                })
    finally:
        await engine.dispose()
    return out


def _guess_key(values: list[Any]) -> str | None:
    if not values or not all(isinstance(v, str) for v in values):
        return None
    for kind, spec in KEY_KINDS.items():
        try:
            for v in values:
                spec.normalise(v)
        except InvalidKey:
            continue
        return kind
    return None


def draft_yaml(source_code: str, datasets: list[dict[str, Any]]) -> str:
    for d in datasets:
        d["source"] = source_code
    head = ("# Draft produced by `hutong catalog discover`. Review every TODO, the share types (all\n"
            "# drafted as conditional) and the sensitivity levels before adding it to the catalogue.\n")
    return head + yaml.safe_dump({"datasets": datasets}, allow_unicode=True, sort_keys=False, width=110)
