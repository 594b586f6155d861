"""Discovery of source schemas: draft catalogue entries from a live SQL source, and the
live half of ``hutong catalog check`` (do the declared tables, columns and types exist?)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.loader import expand_env
from catalog.model import Catalog, Dataset, DataType, camel

__all__ = ["DiscoveryError", "LiveCheck", "check_sources", "discover_sql", "draft_yaml", "type_of"]

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

# Schemas of the database system itself: never offered as where a department's tables might be.
_SYSTEM_SCHEMAS = {"information_schema", "pg_catalog", "pg_toast", "mysql", "performance_schema", "sys"}
# A REST gateway or proxy answering these says the service behind it is down, not that it refused.
_UNAVAILABLE_STATUS = {502, 503, 504}


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


def split_table(name: str) -> tuple[str | None, str]:
    """``reg.resident`` -> ``("reg", "resident")``; ``resident`` -> ``(None, "resident")`` (the default
    schema): the same reading as the planner's ``FROM [schema.]table``."""
    schema, _, table = name.rpartition(".")
    return schema or None, table


def _why(exc: BaseException, url: str = "") -> str:
    """What went wrong, by kind and first line, with the URL's password (if any) blanked out."""
    if isinstance(exc, TimeoutError):
        return "no answer within the source's timeout"
    inner = getattr(exc, "orig", None) or exc
    inner = inner.__cause__ or inner  # the driver's own exception under SQLAlchemy's adapted one
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    try:
        password = sa.make_url(url).password if url else None
    except Exception:  # not a SQLAlchemy URL (REST): nothing to blank out
        password = None
    if password:
        text = text.replace(str(password), "***")
    kind = type(inner).__name__
    return f"{kind}: {text[:160]}" if text else kind


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist (None otherwise, or for other databases).
    Checked before connecting: SQLite would create an empty file, or in read-only mode fail in a
    way that leaves aiosqlite's thread complaining after the event loop is gone."""
    try:
        parsed = sa.make_url(url)
    except Exception:  # not a URL SQLAlchemy reads: the connection attempt will say so
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    path = Path(database.removeprefix("file:").partition("?")[0])
    return None if path.exists() else path


def _visible_schemas(names: list[str]) -> list[str]:
    return [s for s in names if s not in _SYSTEM_SCHEMAS and not s.startswith("pg_")]


def _listing(names: list[str] | set[str], limit: int = 12) -> str:
    ordered = sorted(names)
    if not ordered:
        return "(none)"
    more = f", ... ({len(ordered) - limit} more)" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more


# --- the live check ---------------------------------------------------------------------------


@dataclass
class LiveCheck:
    """What ``hutong catalog check`` found on the live sources.

    ``problems``: the catalogue does not match a source that answered (a missing table, column or
    type); these make the check fail. ``not_checked``: sources that could not be reached, so
    nothing about them is known; warnings unless the check is ``--strict``."""

    problems: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # codes of the sources that were compared


@dataclass
class _Reflected:
    default_schema: str | None
    schemas: list[str]
    names: dict[str | None, set[str]]  # schema -> its tables and views (only schemas that exist)
    columns: dict[tuple[str | None, str], dict[str, dict[str, Any]]]


def _reflect_wanted(sync_conn: Any, wanted: dict[str | None, set[str]]) -> _Reflected:
    insp = sa.inspect(sync_conn)
    default = insp.default_schema_name
    schemas = insp.get_schema_names()
    names: dict[str | None, set[str]] = {}
    columns: dict[tuple[str | None, str], dict[str, dict[str, Any]]] = {}
    for schema, tables in wanted.items():
        if schema is not None and schema not in schemas:
            continue
        present = _relations(insp, schema)
        names[schema] = present
        for table in tables & present:
            columns[(schema, table)] = {c["name"]: c for c in insp.get_columns(table, schema=schema)}
    return _Reflected(default, schemas, names, columns)


def _relations(insp: Any, schema: str | None) -> set[str]:
    """The tables and views of ``schema`` (None: the connection's default schema)."""
    return set(insp.get_table_names(schema=schema)) | set(insp.get_view_names(schema=schema))


def _schema_words(schema: str | None, default: str | None) -> str:
    return f"schema {schema!r}" if schema else f"the default schema ({default})"


async def check_sources(catalog: Catalog, urls: dict[str, str], environ: dict[str, str] | None = None
                        ) -> LiveCheck:
    """Compare the catalogue with the live sources: tables (in the schema the dataset names) and
    columns must exist with types the catalogue's can be read from; REST endpoints must accept
    the declared fields. Each message starts with the catalogue file the entry came from."""
    result = LiveCheck()
    for code, src in sorted(catalog.sources.items()):
        datasets = [d for d in catalog.datasets.values() if d.source == code]
        src_at = f"{catalog.origin.get(f'source {code!r}', '?')}: sources[{code}]"
        if src.kind == "sql":
            await _check_sql(catalog, code, src_at, datasets, urls[code], src.timeout, result)
        else:
            await _check_rest(catalog, code, src_at, datasets, urls[code], src, environ, result)
    return result


def _at(catalog: Catalog, ds: Dataset) -> str:
    return f"{catalog.origin.get(f'dataset {ds.code!r}', '?')}: datasets[{ds.code}]"


async def _check_sql(catalog: Catalog, code: str, src_at: str, datasets: list[Dataset], url: str,
                     wait: float, result: LiveCheck) -> None:
    wanted: dict[str | None, set[str]] = {}
    for ds in datasets:
        schema, table = split_table(ds.table or "")
        wanted.setdefault(schema, set()).add(table)
    missing = _missing_sqlite_file(url)
    if missing is not None:
        result.not_checked.append(f"{src_at}: not checked: source {code} unreachable (no such SQLite file: "
                                  f"{missing})")
        return
    try:
        engine = create_async_engine(url, hide_parameters=True)
    except Exception as exc:  # not a usable URL (unknown dialect, driver not installed): the deployment's to fix
        result.problems.append(f"{src_at}: cannot check: the source's URL is not usable ({_why(exc, url)})")
        return
    try:
        try:
            async with asyncio.timeout(max(wait, 5.0)):
                conn = await engine.connect()
        except Exception as exc:  # refused, unknown host, missing file, bad password: nothing can be compared
            result.not_checked.append(f"{src_at}: not checked: source {code} unreachable ({_why(exc, url)})")
            return
        try:
            found = await conn.run_sync(_reflect_wanted, wanted)
        except Exception as exc:  # it answered but would not show its tables (permissions, ...)
            result.problems.append(f"{src_at}: cannot read the source's tables and columns ({_why(exc, url)})")
            return
        finally:
            await conn.close()
    finally:
        await engine.dispose()
    result.checked.append(code)
    schemas = _visible_schemas(found.schemas)
    for ds in datasets:
        at = _at(catalog, ds)
        schema, table = split_table(ds.table or "")
        if schema not in found.names:
            result.problems.append(f"{at}: schema {schema!r} (of table {ds.table!r}) does not exist in source "
                                   f"{code}; its schemas: {_listing(schemas)}")
            continue
        present = found.names[schema]
        if table not in present:
            where = _schema_words(schema, found.default_schema)
            close = [n for n in present if n.lower() == table.lower()]
            hint = (f" (did you mean {close[0]!r}? names are case-sensitive)" if close
                    else f"; {where} has: {_listing(present)}")
            result.problems.append(f"{at}: table {ds.table!r} does not exist in source {code}{hint}")
            continue
        cols = found.columns[(schema, table)]
        for f in ds.fields:
            col = cols.get(f.name)
            fat = f"{at}.fields[{f.name}]"
            if col is None:
                close = [n for n in cols if n.lower() == f.name.lower()]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                result.problems.append(f"{fat}: no such column in {ds.table}{hint}")
            elif not isinstance(col["type"], _COMPATIBLE[f.type]):
                result.problems.append(f"{fat}: declared {f.type.value!r} but the source column is {col['type']}; "
                                       f"declare {(type_of(col['type']) or DataType.STRING).value!r}")


async def _check_rest(catalog: Catalog, code: str, src_at: str, datasets: list[Dataset], url: str, src: Any,
                      environ: dict[str, str] | None, result: LiveCheck) -> None:
    try:
        headers = {k: expand_env(v, environ) for k, v in src.headers.items()}
    except KeyError as exc:
        result.problems.append(f"{src_at}: cannot check: {exc.args[0]}")
        return
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=src.timeout, headers=headers) as client:
        for ds in datasets:
            fields = ",".join(f.name for f in ds.fields)
            try:
                resp = await client.get(ds.endpoint or "", params={"fields": fields, "limit": TYPE_SAMPLE})
            except httpx.TransportError as exc:
                result.not_checked.append(f"{src_at}: not checked: source {code} unreachable "
                                          f"({type(exc).__name__} on {ds.endpoint})")
                return
            if resp.status_code in _UNAVAILABLE_STATUS:
                result.not_checked.append(f"{src_at}: not checked: source {code} unreachable "
                                          f"(HTTP {resp.status_code} on {ds.endpoint})")
                return
            if resp.status_code != 200:
                problems.append(f"{_at(catalog, ds)}: {ds.endpoint} refused the declared fields "
                                f"(HTTP {resp.status_code}: {resp.text[:200]})")
                continue
            problems.extend(_rest_types(catalog, ds, resp))
    result.checked.append(code)
    result.problems.extend(problems)


TYPE_SAMPLE = 20  # records a REST endpoint is asked for, to compare their JSON types with the catalogue's


def _rest_types(catalog: Catalog, ds: Dataset, resp: httpx.Response) -> list[str]:
    """Declared types the sampled records' JSON values cannot be read as (named, never the values)."""
    from resolvers.rest import wrong_types

    try:
        items = resp.json()["items"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return [f"{_at(catalog, ds)}: {ds.endpoint} answered something other than {{\"items\": [...]}}"]
    types = {f.name: f.type for f in ds.fields}
    bad: dict[str, None] = {}
    for item in items:
        bad.update(dict.fromkeys(wrong_types(item, types)))
    return [f"{_at(catalog, ds)}: field {name!r} is declared {types[name].value!r}, but {ds.endpoint} sends values "
            "of another JSON type (docs/rest-sources.md lists what each type reads)" for name in bad]


# --- discovery --------------------------------------------------------------------------------


class DiscoveryError(Exception):
    """Nothing to draft: the message says what was looked for, what exists and what to try."""


@dataclass
class _Table:
    schema: str | None  # None or the default schema: the draft's table is unqualified
    name: str
    columns: list[dict[str, Any]]
    primary: list[str]


def _reflect_for_draft(sync_conn: Any, tables: list[str] | None, schema: str | None
                       ) -> tuple[str | None, list[_Table]]:
    insp = sa.inspect(sync_conn)
    default = insp.default_schema_name
    schemas = insp.get_schema_names()
    shown = _listing([f"{s} (default)" if s == default else s for s in _visible_schemas(schemas)])
    if schema is not None and schema not in schemas:
        raise DiscoveryError(f"schema {schema!r} does not exist in the source; its schemas: {shown}")
    names_cache: dict[str | None, set[str]] = {}

    def names(s: str | None) -> set[str]:
        if s not in names_cache:
            names_cache[s] = _relations(insp, s)
        return names_cache[s]

    targets: list[tuple[str | None, str]] = []
    if tables:
        missing: list[str] = []
        for wanted in tables:
            s, t = split_table(wanted)
            s = s or schema
            if s is not None and s not in schemas:
                missing.append(f"{wanted} (no schema {s!r}; its schemas: {shown})")
            elif t not in names(s):
                missing.append(f"{wanted} (not in {_schema_words(s, default)}, "
                               f"which has: {_listing(names(s))})")
            else:
                targets.append((s, t))
        if missing:
            raise DiscoveryError("no such table or view: " + "; ".join(missing))
    else:
        targets = [(schema, t) for t in sorted(names(schema))]
        if not targets:
            where = _schema_words(schema, default)
            raise DiscoveryError(f"no tables or views in {where} of the source; its schemas: {shown}. "
                                 "Name one with --schema NAME, or tables with --table SCHEMA.TABLE")
    out = []
    for s, t in targets:
        pk = insp.get_pk_constraint(t, schema=s).get("constrained_columns") or []
        out.append(_Table(None if s == default else s, t, insp.get_columns(t, schema=s), pk))
    return default, out


async def discover_sql(url: str, tables: list[str] | None = None, sample: int = 20, *,
                       schema: str | None = None, notes: dict[str, list[str]] | None = None
                       ) -> list[dict[str, Any]]:
    """Draft dataset entries for the tables (and views) of a SQL source: all of ``schema`` (default:
    the connection's default schema), or only ``tables`` (``name`` in ``schema``, or ``schema.name``).

    Key kinds are guessed from sampled values (every non-empty sample must pass the checksum).
    A table with a person or organisation key drafts its other fields ``conditional`` (released
    per data subject); one without drafts them ``none`` (not shared), the safe default, since
    conditional release needs a data subject. Columns no catalogue type can read (JSON, arrays,
    binary) are left out. ``notes`` (drafted table -> sentences), when given, receives what the
    reviewer should know beyond the entry itself (columns left out, a guessed primary key), for
    :func:`draft_yaml`'s comments. Review the draft before use. Raises :class:`DiscoveryError` when there is nothing to
    draft, saying which schemas exist."""
    missing = _missing_sqlite_file(url)
    if missing is not None:
        raise DiscoveryError(f"no such SQLite file: {missing}")
    engine = create_async_engine(url, hide_parameters=True)
    out: list[dict[str, Any]] = []
    try:
        async with engine.connect() as conn:
            _, reflected = await conn.run_sync(_reflect_for_draft, tables, schema)
            names = [t.name for t in reflected]
            for tbl in reflected:
                draft, remarks = await _draft(conn, tbl, sample, clash=names.count(tbl.name) > 1)
                out.append(draft)
                if remarks and notes is not None:
                    notes[draft["table"]] = remarks
    finally:
        await engine.dispose()
    return out


async def _draft(conn: Any, tbl: _Table, sample: int, *, clash: bool) -> tuple[dict[str, Any], list[str]]:
    fields: list[dict[str, Any]] = []
    skipped: list[str] = []
    for col in tbl.columns:
        dtype = type_of(col["type"])
        if dtype is None:  # JSON, arrays, binary ...: no catalogue type reads them
            skipped.append(f"{col['name']} ({col['type']})")
            continue
        entry: dict[str, Any] = {"name": col["name"], "type": dtype.value, "description": "TODO: describe",
                                 "sensitivity": "L2", "share": "conditional",
                                 "mask": "redact" if dtype is DataType.STRING else "null"}
        if dtype is DataType.STRING:
            stmt = sa.select(sa.column(col["name"])).select_from(sa.table(tbl.name, schema=tbl.schema)).where(
                sa.column(col["name"]).is_not(None)).limit(sample)
            values = [r[0] for r in await conn.execute(stmt)]
            kind = _guess_key(values)
            if kind:
                entry["key"] = kind
                entry["mask"] = "id_number" if kind == "id_number" else "none"
        fields.append(entry)
    keyed = [f["name"] for f in fields if "key" in f]
    primary = next((c for c in tbl.primary if any(f["name"] == c for f in fields)), None) or (
        keyed[0] if keyed else fields[0]["name"] if fields else tbl.columns[0]["name"])
    for f in fields:
        if f["name"] == primary or f["name"] in keyed[:1]:
            # Read by the gateway for every record (paging, consent lookup): never conditional.
            # Policies and masks still decide who sees them.
            f["share"] = "unconditional"
        elif not keyed:
            # No person or organisation key: no data subject to release a field to on consent,
            # so the safe default is not shared at all (the reviewer opens what may be shared).
            f["share"] = "none"
    table = f"{tbl.schema}.{tbl.name}" if tbl.schema else tbl.name
    base = f"{tbl.schema}_{tbl.name}" if clash and tbl.schema else tbl.name
    type_name = "".join(p.capitalize() for p in re.split(r"[_\W]+", base) if p)
    draft: dict[str, Any] = {
        "code": f"TODO.{base.lower()}", "name": tbl.name, "description": "TODO: describe",
        "source": "TODO", "table": table, "update_cycle": "daily",
        "primary_key": primary,
        "graphql": {"type": type_name, "list": camel(base) + "List"},
    }
    if len(keyed) > 1:
        draft["subject"] = keyed[0]  # whose record it is: the reviewer checks this guess
    draft["fields"] = fields
    remarks = []
    if skipped:
        remarks.append(f"Left out (no catalogue type reads them): {', '.join(skipped)}.")
    if len(tbl.primary) > 1:
        remarks.append(f"The primary key is composite ({', '.join(tbl.primary)}): primary_key {primary!r} alone may "
                       "not identify each record, as it must (pages are ordered by it).")
    elif primary not in tbl.primary:
        remarks.append(f"primary_key {primary!r} is a guess (no usable primary key is declared): it must identify "
                       "each record.")
    return draft, remarks


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


def _comments(d: dict[str, Any], remarks: list[str]) -> list[str]:
    keyed = [f["name"] for f in d["fields"] if "key" in f]
    lines = [f"{d['table']}:"]
    if not keyed:
        lines.append("  No person or organisation key was found, so there is no data subject to ask consent of:")
        lines.append("  every field but the primary key is drafted share: none (not shared), the safe default.")
        lines.append("  Open what may be shared (share: unconditional), or mark the column that names the person")
        lines.append("  or organisation (key: id_number or credit_code) and make fields conditional.")
    else:
        lines.append(f"  Key column(s): {', '.join(keyed)}. The primary key and {keyed[0]!r} are unconditional "
                     "(read for every record);")
        lines.append("  the other fields are conditional (released per data subject, on consent or legal basis).")
        if len(keyed) > 1:
            lines.append(f"  subject: {keyed[0]} is a guess of whose record this is: check it.")
    lines.extend(f"  {r}" for r in remarks)
    return ["# " + line if line else "#" for line in lines]


def draft_yaml(source_code: str, datasets: list[dict[str, Any]], notes: dict[str, list[str]] | None = None
               ) -> str:
    """The drafts as a YAML catalogue section, each dataset under a comment for its reviewer
    (with the ``notes`` :func:`discover_sql` gave, by drafted table)."""
    head = ("# Draft produced by `hutong catalog discover`. Review every TODO, the share types and the\n"
            "# sensitivity levels with the data owner before adding it to the catalogue.\n")
    parts = [head, "datasets:\n"]
    for d in datasets:
        d["source"] = source_code
        parts.append("\n".join(_comments(d, (notes or {}).get(d["table"], []))) + "\n")
        parts.append(yaml.safe_dump([d], allow_unicode=True, sort_keys=False, width=110))
    return "".join(parts)
