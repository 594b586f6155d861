"""The console's sharing scoreboard: what each department shared and asked for over a period.

Computed from the audit log's request records of the period (only data requests: records naming
datasets) and from the sharing requests, per department:

- as a provider: **requests served** (records answered, ok or partial, that read one of its
  datasets: the catalogue's ``provider`` of each dataset in the record's ``datasets`` of which a
  field was released, in clear, masked or verify-only), **fields
  shared** by the catalogue's share type (distinct ``dataset.field`` of its datasets released per
  record: disposition clear, masked or verify), the **median source latency** (per record and
  source of the department: its time over its queries, from the record's ``sources``) and its
  sources' **availability** (queries that did not fail for the source: a row-limit refusal is the
  request's doing, not the source's);
- as a requester (the record's ``department``, the client's): **requests made**, and how many of
  them met a **denial** (a field denied, or the whole request) or a **consent withholding** (a
  field withheld for want of consent);
- sharing requests (有条件共享申请): **made** in the period (requester), **answered** in the period
  (approved or refused; provider), **overdue**: whose deadline fell in the period (and has passed)
  while still PENDING (provider).

:func:`scoreboard` is the pure computation; the page streams the records into a :class:`Tally`.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from catalog.model import Catalog, ShareType
from gateway.console.app import render
from gateway.console.security import require
from policies.sharing import ShareRequest, ShareStatus

__all__ = ["Chart", "DepartmentScore", "Period", "Tally", "bar_chart", "routes", "scoreboard"]

log = logging.getLogger("hutong.console.scoreboard")

SHARE_TYPES = tuple(t.value for t in ShareType)  # unconditional, conditional, none
SHARED = frozenset({"clear", "masked", "verify"})  # dispositions that release (something of) a field
SERVED = frozenset({"ok", "partial"})  # outcomes of an answered request
NOT_THE_SOURCE = frozenset({"ROW_LIMIT_EXCEEDED"})  # failures that say nothing of a source's availability
DEFAULT_DAYS = 30
MAX_DAYS = 366


@dataclass(frozen=True)
class Period:
    """Calendar days ``first`` to ``last`` (both included) in ``tz``: [start, end) in UTC."""

    first: date
    last: date
    tz: tzinfo = UTC

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time.min, self.tz).astimezone(UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time.min, self.tz).astimezone(UTC)

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def __contains__(self, at: datetime | None) -> bool:
        return at is not None and self.start <= at < self.end


@dataclass
class DepartmentScore:
    code: str
    name: str
    served: int = 0  # request records that read its datasets (answered)
    made: int = 0  # data requests its clients made
    shared: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SHARE_TYPES, 0))
    denials: int = 0  # of the requests made: with a field (or the whole request) denied
    consent_withheld: int = 0  # of the requests made: with a value withheld for want of consent
    latency_ms: float | None = None  # median, per record and source of the department
    availability: float | None = None  # 0..1: source queries that did not fail
    fetches: int = 0  # source queries run
    failures: int = 0  # of those, failed for the source's sake
    share_made: int = 0
    share_answered: int = 0
    share_overdue: int = 0

    @property
    def fields_shared(self) -> int:
        return sum(self.shared.values())


class Tally:
    """The scoreboard, one record (or sharing request) at a time."""

    def __init__(self, catalog: Catalog, period: Period, now: datetime | None = None) -> None:
        self.catalog = catalog
        self.period = period
        self.now = now or datetime.now(UTC)
        self.scores: dict[str, DepartmentScore] = {
            code: DepartmentScore(code, d.name) for code, d in sorted(catalog.departments.items())}
        self._latency: dict[str, list[float]] = {}
        self._source_dept: dict[str, str] = {}
        for ds in catalog.datasets.values():  # a source without a department: its datasets' provider's
            if ds.provider is not None:
                self._source_dept.setdefault(ds.source, ds.provider)
        self._source_dept.update({code: s.department for code, s in catalog.sources.items() if s.department})

    def _dept(self, code: str) -> DepartmentScore:
        if code not in self.scores:
            self.scores[code] = DepartmentScore(code, code)
        return self.scores[code]

    def _provider(self, dataset: Any) -> str | None:
        ds = self.catalog.datasets.get(dataset) if isinstance(dataset, str) else None
        return ds.provider if ds is not None else None

    def add(self, body: Mapping[str, Any]) -> None:
        """One request record's body."""
        datasets = [d for d in body.get("datasets") or () if isinstance(d, str)]
        if not datasets:
            return  # no data asked for (metadata, administration, a rejected query)
        answered = body.get("outcome") in SERVED
        fields = [f for f in body.get("fields") or () if isinstance(f, Mapping)]
        if answered:
            released = {(f.get("dataset"), f.get("field")) for f in fields if f.get("disposition") in SHARED}
            read = {d for d, _ in released if d in datasets}  # withheld as a whole: not read
            for provider in {p for d in read if (p := self._provider(d)) is not None}:
                self._dept(provider).served += 1
            for ds_code, name in released:
                provider = self._provider(ds_code)
                if provider is None:
                    continue  # a dataset no longer in the catalogue
                try:
                    share = self.catalog.datasets[ds_code].field(str(name)).share.value
                except KeyError:
                    continue  # a field no longer in the catalogue
                self._dept(provider).shared[share] += 1
        department = body.get("department")
        if isinstance(department, str) and department:
            dept = self._dept(department)
            dept.made += 1
            dispositions = {f.get("disposition") for f in fields}
            dept.denials += body.get("outcome") == "denied" or "denied" in dispositions
            dept.consent_withheld += "consent_required" in dispositions or bool(body.get("consent_withheld"))
        sources = body.get("sources")
        for source, s in (sources.items() if isinstance(sources, Mapping) else ()):
            owner = self._source_dept.get(source)
            if owner is None or not isinstance(s, Mapping):
                continue
            n = int(s.get("fetches") or 0)
            if n < 1:
                continue
            dept = self._dept(owner)
            dept.fetches += n
            dept.failures += sum(1 for e in s.get("errors") or () if e not in NOT_THE_SOURCE)
            self._latency.setdefault(owner, []).append(float(s.get("ms") or 0.0) / n)

    def add_request(self, req: ShareRequest) -> None:
        """One sharing request (any age: what happened to it in the period counts)."""
        if req.created_at in self.period:
            self._dept(req.requester).share_made += 1
        if req.status in (ShareStatus.APPROVED, ShareStatus.REFUSED) and req.decided_at in self.period:
            self._dept(req.provider).share_answered += 1
        if req.deadline in self.period and req.deadline < self.now:
            late = req.decided_at > req.deadline if req.decided_at is not None else req.status is ShareStatus.PENDING
            self._dept(req.provider).share_overdue += late

    def result(self) -> list[DepartmentScore]:
        out = []
        for code, score in self.scores.items():
            samples = self._latency.get(code)
            score.latency_ms = round(statistics.median(samples), 2) if samples else None
            score.availability = (score.fetches - score.failures) / score.fetches if score.fetches else None
            out.append(score)
        return sorted(out, key=lambda s: (s.code not in self.catalog.departments, s.code))


def scoreboard(bodies: Iterable[Mapping[str, Any]], catalog: Catalog, period: Period,
               requests: Iterable[ShareRequest] = (), now: datetime | None = None) -> list[DepartmentScore]:
    """Per department (the catalogue's, then any other that made requests): ``bodies`` are the
    request records' bodies of ``period``, ``requests`` the sharing requests (all of them)."""
    tally = Tally(catalog, period, now)
    for body in bodies:
        tally.add(body)
    for req in requests:
        tally.add_request(req)
    return tally.result()


# --- charts -------------------------------------------------------------------------------------------


@dataclass
class Chart:
    """A horizontal bar chart, laid out for inline SVG (every coordinate computed here)."""

    title: str
    width: int
    height: int
    bars: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    legend: list[dict[str, str]]
    empty: bool


def bar_chart(title: str, labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], *,
              stacked: bool = False, label_width: int = 140, bar_width: int = 460, bar: int = 14) -> Chart:
    """One group per label; ``series``: (name, CSS class, values). Grouped bars side by side, or
    one stacked bar per label."""
    if stacked:
        totals = [sum(values[i] for _, _, values in series) for i in range(len(labels))]
    else:
        totals = [max((values[i] for _, _, values in series), default=0) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    rows_per_group = 1 if stacked else len(series)
    group = rows_per_group * (bar + 2) + 10
    bars: list[dict[str, Any]] = []
    texts: list[dict[str, Any]] = []
    for i, label in enumerate(labels):
        y0 = 6 + i * group
        texts.append({"x": label_width - 8, "y": y0 + rows_per_group * (bar + 2) / 2 + 4, "text": label,
                      "anchor": "end", "cls": "label"})
        x = float(label_width)
        for j, (name, cls, values) in enumerate(series):
            value = values[i]
            w = round(value / top * bar_width, 1)
            y = y0 if stacked else y0 + j * (bar + 2)
            bars.append({"x": round(x, 1), "y": y, "width": w, "height": bar, "cls": cls,
                         "title": f"{label}: {name} {value:g}"})
            if stacked:
                x += w
            else:
                texts.append({"x": round(x + w + 4, 1), "y": y + bar - 3, "text": f"{value:g}", "anchor": "start",
                              "cls": "value"})
        if stacked:
            texts.append({"x": round(x + 4, 1), "y": y0 + bar - 3, "text": f"{totals[i]:g}", "anchor": "start",
                          "cls": "value"})
    return Chart(title=title, width=label_width + bar_width + 60, height=12 + len(labels) * group, bars=bars,
                 labels=texts, legend=[{"name": n, "cls": c} for n, c, _ in series], empty=not any(totals))


# --- the page -----------------------------------------------------------------------------------------


def _period(request: Request, tz: tzinfo, today: date) -> tuple[Period, str | None]:
    """The period asked for (from/to, YYYY-MM-DD), or the last 30 days and why not."""
    default = Period(today - timedelta(days=DEFAULT_DAYS - 1), today, tz)
    q = request.query_params
    raw_from, raw_to = (q.get("from") or "").strip(), (q.get("to") or "").strip()
    if not raw_from and not raw_to:
        return default, None
    try:
        first = date.fromisoformat(raw_from) if raw_from else None
        last = date.fromisoformat(raw_to) if raw_to else today
    except ValueError:
        return default, "from and to must be dates (YYYY-MM-DD): showing the last 30 days"
    try:
        first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    except OverflowError:
        return default, "the period is outside the calendar: showing the last 30 days"
    if first.year < 2000 or last.year > 2999:
        return default, "choose dates between the years 2000 and 2999: showing the last 30 days"
    if first > last:
        return default, f"the period starts ({first}) after it ends ({last}): showing the last 30 days"
    if (last - first).days + 1 > MAX_DAYS:
        return default, f"choose at most {MAX_DAYS} days at a time: showing the last 30 days"
    return Period(first, last, tz), None


async def scoreboard_page(request: Request) -> Response:
    require(request, "policy-admin", "auditor", "data-owner")
    gateway = request.app.state.gateway
    service = getattr(gateway, "sharing", None)
    tz = service.calendar.tz if service is not None else UTC
    now = service.clock() if service is not None else datetime.now(UTC)
    period, problem = _period(request, tz, now.astimezone(tz).date())
    tally = Tally(gateway.catalog, period, now)
    notes: list[str] = []
    store = getattr(gateway, "audit_store", None)
    try:
        if store is None:
            notes.append("this gateway's audit log cannot be searched: requests are not counted")
        else:
            async for rec in store.bodies({"kind": "request", "time_from": period.start, "time_to": period.end}):
                tally.add(rec["body"])
        if service is None:
            notes.append("sharing requests are not available in this gateway")
        else:
            after: str | None = None
            while True:
                page = await service.search(limit=500, after=after, now=now)
                for req in page:
                    tally.add_request(req)
                if len(page) < 500:
                    break
                after = page[-1].id
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.error("scoreboard: a store failed: %s", type(exc).__name__)
        return render(request, "scoreboard.html", 503, period=period, scores=[], charts=[], notes=notes,
                      flash="the audit log or the sharing store cannot be read: retry later", flash_kind="error")
    scores = tally.result()
    shown = [s for s in scores if s.code in gateway.catalog.departments or s.made or s.served]
    names = [s.code for s in shown]
    charts = [
        bar_chart("Requests served and made per department", names, [
            ("served", "bar-served", [s.served for s in shown]),
            ("made", "bar-made", [s.made for s in shown])]),
        bar_chart("Fields shared per department, by share type", names, [
            (t, f"bar-{t}", [s.shared[t] for s in shown]) for t in SHARE_TYPES], stacked=True),
    ]
    return render(request, "scoreboard.html", 400 if problem else 200, period=period, scores=shown, charts=charts,
                  notes=notes, share_types=SHARE_TYPES, flash=problem, flash_kind="error" if problem else None,
                  tz_name=str(tz))


def routes() -> list[BaseRoute]:
    return [Route("/scoreboard", scoreboard_page, methods=["GET"], name="scoreboard")]
