"""The console's catalogue browser: departments, datasets and fields, and the terms they are shared on.

For every signed-in role (policy administrators, auditors, data owners). ``/console/catalog``
lists each department's datasets, narrowed by a search (every word must appear in a dataset's
codes, names, description, keywords or field names, as ``catalog { datasets(search:) }`` does);
``/console/catalog/{dataset}`` shows every field with its type, sensitivity, share type, mask
and key, the dataset's subject and date fields, and the purposes that may read it. Metadata
only: no connection URL or other deployment detail is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from catalog.model import Catalog, Dataset, FieldSpec, Sensitivity
from gateway.console.app import render
from gateway.console.security import require

__all__ = ["routes"]

ROLES = ("policy-admin", "auditor", "data-owner")
SENSITIVITY = {Sensitivity.PUBLIC: "public", Sensitivity.INTERNAL: "internal", Sensitivity.SENSITIVE: "sensitive",
               Sensitivity.HIGHLY_SENSITIVE: "highly sensitive"}
SHARE_ZH = {"unconditional": "无条件共享", "conditional": "有条件共享", "none": "不予共享"}


def _field_text(spec: FieldSpec) -> str:
    return f"{spec.name} {spec.graphql_name} {spec.description}".lower()


def _dataset_text(catalog: Catalog, ds: Dataset) -> str:
    dep = catalog.departments.get(ds.provider or "")
    return " ".join([ds.code, ds.name, ds.name_zh or "", ds.description, *ds.keywords,
                     dep.code if dep else "", dep.name if dep else "", (dep.name_zh or "") if dep else "",
                     *(_field_text(f) for f in ds.fields)]).lower()


@dataclass(frozen=True, slots=True)
class Hit:
    dataset: Dataset
    fields: tuple[str, ...]  # the fields a search word names (empty without a search)


def search(catalog: Catalog, q: str) -> dict[str, list[Hit]]:
    """Department code -> its datasets whose metadata hold every word of ``q`` (all of them if ``q`` is blank)."""
    words = q.lower().split()
    out: dict[str, list[Hit]] = {code: [] for code in catalog.departments}
    for ds in catalog.datasets.values():
        if words:
            hay = _dataset_text(catalog, ds)
            if not all(w in hay for w in words):
                continue
        named = tuple(f.name for f in ds.fields if words and any(w in _field_text(f) for w in words))
        out.setdefault(ds.provider or "", []).append(Hit(ds, named))
    return out


async def catalog_index(request: Request) -> Response:
    require(request, *ROLES)
    catalog: Catalog = request.app.state.gateway.catalog
    q = request.query_params.get("q", "").strip()[:200]
    found = search(catalog, q)
    departments = [(dep, found.get(code, [])) for code, dep in sorted(catalog.departments.items())]
    if q:
        departments = [(dep, hits) for dep, hits in departments if hits]
    count = sum(len(hits) for _, hits in departments)
    return render(request, "catalog.html", q=q, departments=departments, count=count,
                  total=len(catalog.datasets))


async def catalog_dataset(request: Request) -> Response:
    user = require(request, *ROLES)
    catalog: Catalog = request.app.state.gateway.catalog
    code = request.path_params["dataset"]
    ds = catalog.datasets.get(code)
    if ds is None:
        raise HTTPException(404, f"the catalogue has no dataset {code!r}: see the list of datasets")
    subject = ds.subject_field
    purposes = [(p, [f for f in p.none_fields if f.startswith(f"{ds.code}.")])
                for p in sorted(catalog.purposes.values(), key=lambda p: p.code) if ds.code in p.datasets]
    fields: list[dict[str, Any]] = [{
        "spec": f, "sensitivity": f"{f.sensitivity.value} {SENSITIVITY[f.sensitivity]}", "share": f.share.value,
        "share_zh": SHARE_ZH[f.share.value], "primary": f.name == ds.primary_key,
        "subject": subject is not None and f.name == subject.name, "dated": f.name == ds.dated_by,
    } for f in ds.fields]
    return render(request, "catalog_dataset.html", ds=ds, provider=catalog.provider_of(ds.code), fields=fields,
                  subject=subject, purposes=purposes, links=catalog.links_of_dataset(ds.code),
                  can_edit_policy=user.has("policy-admin"))


def routes() -> list[BaseRoute]:
    return [
        Route("/catalog", catalog_index, methods=["GET"], name="catalog"),
        Route("/catalog/{dataset}", catalog_dataset, methods=["GET"], name="catalog_dataset"),
    ]
