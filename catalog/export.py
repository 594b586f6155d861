"""Export the catalogue for other systems: JSON (everything public about it) and DCAT-AP
JSON-LD (datasets and their distributions, with field-level metadata DCAT leaves out)."""

from __future__ import annotations

from typing import Any

from catalog.model import Catalog

__all__ = ["to_dcat", "to_json"]

_ACCESS = {"unconditional": "PUBLIC", "conditional": "RESTRICTED", "none": "NON_PUBLIC"}
_PERIOD = {"realtime": "CONT", "daily": "DAILY", "weekly": "WEEKLY", "monthly": "MONTHLY",
           "quarterly": "QUARTERLY", "yearly": "ANNUAL", "irregular": "IRREG"}


def to_json(cat: Catalog) -> dict[str, Any]:
    """The catalogue without deployment details (no URLs, no headers)."""
    return {
        "departments": [d.model_dump(mode="json", exclude_none=True) for d in cat.departments.values()],
        "entities": [e.model_dump(mode="json") for e in cat.entities.values()],
        "datasets": [
            {**d.model_dump(mode="json", exclude_none=True, by_alias=True, exclude={"table", "endpoint"}),
             "source_kind": cat.sources[d.source].kind}
            for d in cat.datasets.values()
        ],
        "purposes": [p.model_dump(mode="json", exclude_none=True) for p in cat.purposes.values()],
    }


def _access(shares: set[str]) -> str:
    # A dataset is as open as its most open field allows its records to be found, but
    # RESTRICTED as soon as anything in it needs conditions.
    if shares == {"unconditional"}:
        return "PUBLIC"
    return "RESTRICTED" if "unconditional" in shares or "conditional" in shares else "NON_PUBLIC"


def to_dcat(cat: Catalog, base_uri: str = "urn:hutong:") -> dict[str, Any]:
    graph: list[dict[str, Any]] = []
    for d in cat.datasets.values():
        provider = cat.departments[d.provider or ""]
        graph.append({
            "@id": f"{base_uri}dataset:{d.code}",
            "@type": "dcat:Dataset",
            "dct:identifier": d.code,
            "dct:title": [{"@value": d.name, "@language": "en"}]
            + ([{"@value": d.name_zh, "@language": "zh"}] if d.name_zh else []),
            "dct:description": d.description,
            "dct:publisher": {"@id": f"{base_uri}department:{provider.code}", "foaf:name": provider.name},
            "dcat:contactPoint": {"@type": "vcard:Kind", "vcard:fn": provider.contact.name,
                                  **({"vcard:hasEmail": f"mailto:{provider.contact.email}"}
                                     if provider.contact.email else {})},
            "dcat:keyword": d.keywords,
            "dct:accrualPeriodicity": {"@id": "http://publications.europa.eu/resource/authority/frequency/"
                                              + _PERIOD[d.update_cycle.value]},
            "dct:accessRights": {"@id": "http://publications.europa.eu/resource/authority/access-right/"
                                        + _access({f.share.value for f in d.fields})},
            "dcat:distribution": [{"@type": "dcat:Distribution", "dct:format": "GraphQL",
                                   "dcat:accessService": {"@type": "dcat:DataService",
                                                          "dct:title": "hutong gateway",
                                                          "dcat:endpointDescription": f"Query.{d.graphql.list}"}}],
            "hutong:fields": [
                {"name": f.name, "graphqlName": f.graphql_name, "type": f.type.value, "description": f.description,
                 "sensitivity": f.sensitivity.value, "shareType": f.share.value,
                 "accessRights": _ACCESS[f.share.value], "defaultMask": f.mask, **({"key": f.key} if f.key else {})}
                for f in d.fields
            ],
        })
    return {
        "@context": {"dcat": "http://www.w3.org/ns/dcat#", "dct": "http://purl.org/dc/terms/",
                     "foaf": "http://xmlns.com/foaf/0.1/", "vcard": "http://www.w3.org/2006/vcard/ns#",
                     "hutong": f"{base_uri}vocab#"},
        "@graph": graph,
    }
