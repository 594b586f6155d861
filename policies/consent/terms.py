"""Checking a proposed consent or legal basis before it is recorded.

Every problem is reported at once, each naming what is wrong and what to do: an unknown
department, purpose, dataset or field; a field that is not conditional (it needs no consent,
or is never shared); a dataset the purpose does not cover; an expiry before the start; and
anything broader than the purpose's consent bounds (``consent:`` in the catalogue's purpose:
longest validity, most uses per period, widest data range), so an over-broad consent is
refused rather than trimmed silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog, ShareType
from policies.consent.model import BASIS_TYPES, METHODS, Kind, Terms
from policies.masks import mask_for

__all__ = ["MAX_COVERT_DAYS_AFTER", "MAX_LEGAL_BASIS_DAYS", "ConsentInputError", "GrantRequest", "build_terms"]

MAX_LEGAL_BASIS_DAYS = 3650  # a legal basis is reviewed at least every ten years
MAX_COVERT_DAYS_AFTER = 365  # a covert basis is disclosed at most a year after it ends


class ConsentInputError(ValueError):
    """A proposed grant that cannot be recorded; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(kw_only=True)
class GrantRequest:
    kind: Kind
    subject: str | None  # the raw ID number or credit code
    every_subject: bool = False  # a legal basis for everyone (a statutory duty): said explicitly, never implied
    requester: str
    purpose: str
    fields: list[str]  # dataset.field, or a dataset code for all its conditional fields
    valid_until: datetime
    valid_from: datetime | None = None  # default: now
    data_from: date | None = None
    data_to: date | None = None
    max_uses: int | None = None
    per_days: int | None = None
    explicit_request: bool | None = None
    method: str | None = None
    basis_type: str | None = None
    reference: str | None = None
    covert: bool = False
    disclose_after: date | None = None
    recorded_by: str = ""
    recorded_via: str = ""


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def build_terms(req: GrantRequest, catalog: Catalog, hasher: Callable[[str], str], now: datetime) -> Terms:
    """The signed-to-be terms of ``req``, or ConsentInputError listing every problem.
    ``hasher`` turns a normalised key into its pseudonym (the audit log's keyed HMAC)."""
    problems: list[str] = []
    consent = req.kind is Kind.CONSENT
    what = "consent" if consent else "legal basis"

    if req.requester not in catalog.departments:
        problems.append(f"unknown requesting department {req.requester!r}; known: "
                        f"{', '.join(sorted(catalog.departments))}")
    purpose = catalog.purposes.get(req.purpose)
    if purpose is None:
        problems.append(f"unknown purpose {req.purpose!r}; known: {', '.join(sorted(catalog.purposes))}")

    covered: set[str] = set()
    subject_kinds: set[str] = set()
    dated: set[str] = set()
    if not req.fields:
        problems.append("name the fields covered: dataset.field, or a dataset for all its conditional fields")
    for ref in req.fields:
        ref = ref.strip()
        if ref in catalog.datasets:
            ds_code, names = ref, [f.name for f in catalog.datasets[ref].conditional_fields]
            if not names:
                problems.append(f"dataset {ref} has no conditional fields: nothing in it needs consent")
                continue
        else:
            ds_code, _, name = ref.rpartition(".")
            ds = catalog.datasets.get(ds_code)
            if ds is None:
                problems.append(f"unknown field {ref!r}: give dataset.field (see `hutong catalog export` or "
                                "catalog { datasets { fields { code } } })")
                continue
            spec = next((f for f in ds.fields if f.name == name), None)
            if spec is None:
                problems.append(f"unknown field {ref!r}: {ds_code} has "
                                f"{', '.join(f.name for f in ds.fields)}")
                continue
            if spec.share is ShareType.UNCONDITIONAL:
                problems.append(f"{ref} is shared unconditionally: it needs no {what}; list only conditional fields")
                continue
            if spec.share is ShareType.NONE:
                problems.append(f"{ref} is not shared (share type none): no {what} opens it; only a purpose's "
                                "legal basis in the catalogue (none_fields) can")
                continue
            names = [name]
        ds = catalog.datasets[ds_code]
        if purpose is not None and ds_code not in purpose.datasets:
            problems.append(f"purpose {purpose.code} does not cover dataset {ds_code}; it covers "
                            f"{', '.join(purpose.datasets)}")
            continue
        subject = ds.subject_field
        if subject is not None and subject.key is not None:
            subject_kinds.add(subject.key)
        if ds.dated_by is not None:
            dated.add(ds_code)
        covered.update(f"{ds_code}.{n}" for n in names)

    # The subject: one key kind across the datasets covered.
    subject_kind: str | None = None
    subject_hash: str | None = None
    subject_hint: str | None = None
    if len(subject_kinds) > 1:
        problems.append(f"the fields belong to different kinds of subject ({', '.join(sorted(subject_kinds))}): "
                        "record one consent per subject")
    elif subject_kinds:
        subject_kind = next(iter(subject_kinds))
    if req.subject is not None and not req.subject.strip():
        problems.append("the subject is empty: give the ID number or credit code"
                        + ("" if consent else ", or leave it out and set every_subject for a basis covering everyone"))
    elif req.subject is None and consent:
        problems.append("name the data subject: the ID number or credit code of the person or organisation consenting")
    elif req.subject is None and not req.every_subject:
        problems.append("name the subject the legal basis covers, or set every_subject for one covering everyone "
                        "(a statutory duty)")
    elif req.subject is not None and req.every_subject:
        problems.append("give a subject or every_subject, not both")
    elif consent and req.every_subject:
        problems.append("a consent is one subject's: every_subject applies to legal bases only")
    elif req.subject is not None and subject_kind is not None:
        try:
            key = KEY_KINDS[subject_kind].normalise(req.subject)
        except InvalidKey as exc:
            problems.append(f"subject: {exc}")
        else:
            subject_hash = hasher(key)
            hint = mask_for("id_number")
            subject_hint = str(hint.apply(key)) if hint else None

    # Validity.
    valid_from = _aware(req.valid_from) if req.valid_from else now
    valid_until = _aware(req.valid_until)
    if valid_until <= valid_from:
        problems.append(f"the expiry ({valid_until.isoformat()}) is not after the start ({valid_from.isoformat()})")
    elif valid_until <= now:
        problems.append(f"the expiry ({valid_until.isoformat()}) is already past")
    longest = purpose.consent.max_validity_days if (purpose and consent) else MAX_LEGAL_BASIS_DAYS
    if valid_until - valid_from > timedelta(days=longest):
        whose = f"purpose {req.purpose}" if consent else "a legal basis"
        problems.append(f"over-broad: valid for {(valid_until - valid_from).days} days, but {whose} allows at most "
                        f"{longest}; give an earlier expiry")

    # Frequency.
    if (req.max_uses is None) != (req.per_days is None):
        problems.append("give max_uses and per_days together: at most max_uses requests in any per_days days")
    elif req.max_uses is not None and req.per_days is not None and (req.max_uses < 1 or req.per_days < 1):
        problems.append("max_uses and per_days must be at least 1")
    if consent and purpose is not None and purpose.consent.max_uses is not None:
        bound_uses, bound_days = purpose.consent.max_uses, purpose.consent.per_days or 1
        if req.max_uses is None or req.per_days is None:
            problems.append(f"over-broad: purpose {purpose.code} allows at most {bound_uses} uses per {bound_days} "
                            "days; give max_uses and per_days")
        elif req.max_uses > bound_uses or req.max_uses * bound_days > bound_uses * req.per_days:
            problems.append(f"over-broad: {req.max_uses} uses per {req.per_days} days exceeds what purpose "
                            f"{purpose.code} allows ({bound_uses} per {bound_days} days)")

    # Data range.
    ranged = req.data_from is not None or req.data_to is not None
    if req.data_from and req.data_to and req.data_from > req.data_to:
        problems.append(f"the data range starts ({req.data_from}) after it ends ({req.data_to})")
    if ranged:
        undated = sorted({ref.rpartition(".")[0] for ref in covered} - dated)
        if undated:
            problems.append(f"a data range cannot apply to {', '.join(undated)}: their records carry no date "
                            "(dated_by in the catalogue); record a separate consent without a range for them")
    if consent and purpose is not None and purpose.consent.max_data_range_days is not None and dated:
        widest = purpose.consent.max_data_range_days
        if req.data_from is None or req.data_to is None:
            problems.append(f"over-broad: purpose {purpose.code} allows a data range of at most {widest} days; "
                            "give data_from and data_to")
        elif (req.data_to - req.data_from).days > widest:
            problems.append(f"over-broad: the data range spans {(req.data_to - req.data_from).days} days, but "
                            f"purpose {purpose.code} allows at most {widest}")

    # What kind of grant it is.
    if consent:
        if req.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)} (how the consent was collected)")
        if req.explicit_request is None:
            problems.append("say whether the subject explicitly asked for the sharing (explicit_request)")
        if req.basis_type or req.reference or req.covert or req.disclose_after:
            problems.append("basis_type, reference, covert and disclose_after belong to legal bases, not consents")
    else:
        if req.basis_type not in BASIS_TYPES:
            problems.append(f"basis_type must be one of {', '.join(BASIS_TYPES)}")
        if not (req.reference or "").strip():
            problems.append("give the reference of the legal basis (document number, statute and article)")
        if req.covert and req.disclose_after is None:
            problems.append("a covert legal basis needs disclose_after: the date from which the person may see "
                            "the accesses")
        if req.covert and req.disclose_after is not None and req.disclose_after <= valid_from.date():
            problems.append("disclose_after must be after the legal basis starts")
        latest = valid_until.date() + timedelta(days=MAX_COVERT_DAYS_AFTER)
        if req.covert and req.disclose_after is not None and req.disclose_after > latest:
            problems.append(f"disclose_after may be at most {MAX_COVERT_DAYS_AFTER} days after the legal basis ends "
                            f"({latest}): a covert access is disclosed in the end")
        if req.covert and req.every_subject:
            problems.append("a covert legal basis must name its subject: it cannot hide accesses to everyone")
        if not req.covert and req.disclose_after is not None:
            problems.append("disclose_after applies only to a covert legal basis (set covert)")
        if req.method or req.explicit_request is not None:
            problems.append("method and explicit_request belong to consents, not legal bases")
    if not req.recorded_by.strip():
        problems.append("name who records it (the official, or the signed-in citizen)")
    if problems:
        raise ConsentInputError(problems)

    assert purpose is not None
    providers = tuple(sorted({catalog.datasets[ref.rpartition(".")[0]].provider or "" for ref in covered}))
    return Terms(
        id=("cst-" if consent else "lb-") + uuid.uuid4().hex[:20],
        kind=req.kind,
        subject_kind=subject_kind if subject_hash else None,
        subject_hash=subject_hash,
        subject_hint=subject_hint,
        requester=req.requester,
        providers=providers,
        purpose=purpose.code,
        fields=tuple(sorted(covered)),
        valid_from=valid_from,
        valid_until=valid_until,
        data_from=req.data_from,
        data_to=req.data_to,
        max_uses=req.max_uses,
        per_days=req.per_days,
        explicit_request=req.explicit_request if consent else None,
        method=req.method if consent else None,
        basis_type=None if consent else req.basis_type,
        reference=None if consent else (req.reference or "").strip(),
        covert=False if consent else req.covert,
        disclose_after=None if consent else req.disclose_after,
        recorded_by=req.recorded_by.strip(),
        recorded_via=req.recorded_via,
        created_at=now,
    )
