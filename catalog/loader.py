"""Load catalogue files (YAML or TOML) into a validated :class:`~catalog.model.Catalog`.

A catalogue is a directory (or a list of files); each file may hold any of the sections
``department`` (the file's own department, the default provider of what follows),
``departments``, ``sources``, ``datasets`` and ``entities``. Loading collects *every*
problem before failing, and each message names the file, the entry and what to do.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from catalog.model import Catalog, Dataset, Department, Entity, EntityGraphQL, Purpose, Source
from catalog.validate import Broken, Problems, cross_validate

__all__ = ["DEFAULT_ENTITIES", "CatalogError", "catalog_files", "expand_env", "load_catalog"]

M = TypeVar("M", bound=BaseModel)

SECTIONS = ("department", "departments", "sources", "datasets", "entities", "purposes")
KINDS = ("department", "source", "dataset", "entity", "purpose")

DEFAULT_ENTITIES = (
    Entity(
        code="person",
        key="id_number",
        description="A natural person, identified by the 18-digit resident ID number (GB 11643).",
        graphql=EntityGraphQL(type="Person", one="person", many="persons", argument="idNumber"),
    ),
    Entity(
        code="organisation",
        key="credit_code",
        description="An organisation, identified by its unified social credit code (GB 32100).",
        graphql=EntityGraphQL(
            type="Organisation", one="organisation", many="organisations", argument="creditCode"
        ),
    ),
)


class CatalogError(Exception):
    """The catalogue is invalid. ``problems`` lists each one as ``file: entry: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        head = f"catalogue invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


def catalog_files(path: Path) -> list[Path]:
    """The catalogue files under ``path`` (a file or a directory), in a stable order."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".toml") and p.is_file())
    return [path]


def load_catalog(*paths: Path | str) -> Catalog:
    problems = Problems()
    departments: dict[str, Department] = {}
    sources: dict[str, Source] = {}
    datasets: dict[str, Dataset] = {}
    entities: dict[str, Entity] = {}
    purposes: dict[str, Purpose] = {}
    origin: dict[str, str] = {}
    broken = Broken()  # declared but not parsed: references to them are not "unknown" too

    files = [f for p in paths for f in catalog_files(Path(p))]
    if not files:
        raise CatalogError([f"no catalogue files (*.yaml, *.yml, *.toml) found in {', '.join(map(str, paths))}"])

    def add(kind: str, store: dict[str, Any], entry: BaseModel, file: Path, section: str) -> None:
        code = entry.code  # type: ignore[attr-defined]
        key = f"{kind} {code!r}"
        if code in store:
            problems.add(f"{file}: {section}[{code}]",
                         f"duplicate {kind} code {code!r} (first defined in {origin[key]}): codes must be unique "
                         "across the catalogue")
            return
        store[code] = entry
        origin[key] = str(file)

    for file in files:
        raw = _read(file, problems)
        if raw is None:  # unreadable: whatever it declares is unknown, so nothing is "unknown" because of it
            for kind in KINDS:
                broken.add(kind, "*")
            continue
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            problems.add(str(file), f"unknown section(s) {', '.join(unknown)}; expected {', '.join(SECTIONS)}")
        home: str | None = None
        own = isinstance(raw.get("department"), dict)  # the file's own department, first of the entries
        if "department" in raw and not own:
            problems.add(f"{file}: department", "expected one department (a mapping with code, name, contact); "
                                                "use 'departments' for a list")
            broken.add("home", str(file))
            broken.add("department", raw["department"] if isinstance(raw["department"], str) else "*")
        dept_entries = ([raw["department"]] if own else []) + list(
            _list(raw, "departments", file, problems, broken, "department"))
        for i, item in enumerate(dept_entries):
            dep = _parse(Department, item, f"{file}: department[{_ident(item, i)}]", problems, broken, "department")
            if i == 0 and own:
                # The file's department is the default of what follows, even when it has a mistake
                # of its own (reported once, above), so its sources are not "without department" too.
                home = dep.code if dep else item.get("code") if isinstance(item.get("code"), str) else None
                if home is None:  # its own error says so: no "no department" for each entry of the file
                    broken.add("home", str(file))
            if dep:
                add("department", departments, dep, file, "department")
        for i, item in enumerate(_list(raw, "sources", file, problems, broken, "source")):
            item = _default(item, "department", home)
            src = _parse(Source, item, f"{file}: sources[{_ident(item, i)}]", problems, broken, "source")
            if src:
                add("source", sources, src, file, "sources")
        for i, item in enumerate(_list(raw, "datasets", file, problems, broken, "dataset")):
            item = _default(item, "provider", home)
            ds = _parse(Dataset, item, f"{file}: datasets[{_ident(item, i)}]", problems, broken, "dataset")
            if ds:
                add("dataset", datasets, ds, file, "datasets")
        for i, item in enumerate(_list(raw, "entities", file, problems, broken, "entity")):
            ent = _parse(Entity, item, f"{file}: entities[{_ident(item, i)}]", problems, broken, "entity")
            if ent:
                add("entity", entities, ent, file, "entities")
        for i, item in enumerate(_list(raw, "purposes", file, problems, broken, "purpose")):
            pur = _parse(Purpose, item, f"{file}: purposes[{_ident(item, i)}]", problems, broken, "purpose")
            if pur:
                add("purpose", purposes, pur, file, "purposes")

    for ent in DEFAULT_ENTITIES:
        entities.setdefault(ent.code, ent)

    catalog = Catalog(departments, sources, datasets, entities, links=[], purposes=purposes, origin=origin)
    # Always: a parse error in one entry must not hide the cross-reference problems of the others.
    catalog.links = cross_validate(catalog, problems, broken)
    if problems:
        raise CatalogError(problems.items)
    return catalog


def _read(file: Path, problems: Problems) -> dict[str, Any] | None:
    try:
        text = file.read_text(encoding="utf-8")
        data = tomllib.loads(text) if file.suffix == ".toml" else yaml.safe_load(text)
    except FileNotFoundError:
        problems.add(str(file), "file not found (check the catalog setting of the configuration)")
        return None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.add(str(file), f"not valid {'TOML' if file.suffix == '.toml' else 'YAML'}: {exc}")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.add(str(file), "expected a mapping of sections at the top level")
        return None
    return data


def _list(raw: dict[str, Any], section: str, file: Path, problems: Problems, broken: Broken, kind: str
          ) -> list[Any]:
    value = raw.get(section) or []
    if not isinstance(value, list):
        problems.add(f"{file}: {section}", f"expected a list of entries (- code: ...), not a {_kind_of(value)}")
        broken.add(kind, "*")
        return []
    return value


def _kind_of(value: Any) -> str:
    return {dict: "mapping", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__)


def _default(item: Any, key: str, value: str | None) -> Any:
    if isinstance(item, dict) and value is not None and key not in item:
        return {**item, key: value}
    return item


def _ident(item: Any, index: int) -> str:
    if isinstance(item, dict) and isinstance(item.get("code"), str):
        return item["code"]
    return f"#{index + 1}"


def _parse(model: type[M], item: Any, where: str, problems: Problems, broken: Broken, kind: str) -> M | None:
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        for err in exc.errors():
            problems.add(where, _describe(item, err))
        code = item.get("code") if isinstance(item, dict) else None
        broken.add(kind, code if isinstance(code, str) else "*")
        return None


def _describe(item: Any, err: Any) -> str:
    """Turn a pydantic error into a sentence naming the offending key, e.g. ``fields[3] 'sex': ...``."""
    loc = list(err["loc"])
    parts: list[str] = []
    node = item
    for step in loc:
        if isinstance(step, int):
            name = node[step].get("name") if isinstance(node, list) and isinstance(node[step], dict) else None
            parts[-1:] = [f"{parts[-1] if parts else ''}[{step + 1}{f':{name}' if name else ''}]"]
        else:
            parts.append(str(step))
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
    where = ".".join(parts) or "entry"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {where}: check its spelling against docs/catalogue.md"
    if kind == "missing":
        return f"missing required key {where}"
    return f"{where}: {err['msg']}"


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, environ: dict[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; a missing variable is an error naming it."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise KeyError(f"environment variable {name} is not set (it is referenced by the catalogue)")

    return _ENV.sub(sub, value)
