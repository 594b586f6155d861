"""Changing the policy: validated, versioned, audited, and refused when it would go wrong.

Every change (add, remove, replace, import, rollback, an approved sharing request) becomes one
numbered version of the repository with its author, time, reason and diff. Before it is
stored, the whole policy it would produce is validated against the catalogue
(:func:`policies.validate.validate_policy`: unknown department, dataset, field, purpose,
action or mask; a ``none`` field granted without the purpose's legal basis ...), and the change
is recorded in the audit log as a ``policy.change`` event before it commits: a change the
audit log cannot take is not made (and one that fails to commit after its event was written is
followed by a ``policy.change_aborted`` event).

The policy in force is also Casbin's ``casbin_rule`` table, which hutong alone writes (see
:mod:`policies.casbin_rule`). If it was changed outside hutong, changes of a few lines are
refused until an administrator settles it; a change that states the whole policy (an import,
a rollback, :meth:`PolicyAdmin.adopt_casbin_rule`, :meth:`PolicyAdmin.restore_casbin_rule`)
rewrites it, and its version and audit event say what was overwritten.

The command line (``hutong policy``) is an operator's tool: whoever can run it with the
configuration can write the store, as with the database's own credentials; it records the
author it is given (``--by``, default the OS account) in the version and the audit log.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from catalog.model import Catalog
from policies.lines import ARITY, PolicyLine, enforcer_of, format_csv, format_line, parse_csv
from policies.repository import PolicyConflict, PolicyRepository, PolicyVersion
from policies.validate import PolicyError, validate_policy

__all__ = ["PolicyAdmin", "PolicyAdminUnavailable", "PolicyConflict", "ensure_seeded", "matches",
           "open_policy_admin"]

Recorder = Callable[[dict[str, Any]], Awaitable[Any]]  # appends an admin event to the audit log


class PolicyAdminUnavailable(ValueError):
    """The configured policy cannot be administered (a file, read-only for the gateway)."""


def matches(line: PolicyLine, *, department: str | None = None, dataset: str | None = None,
            purpose: str | None = None, subject: str | None = None) -> bool:
    """Does ``line`` concern this department (its ``dept:`` subject), dataset (its objects, wildcards
    included), purpose (or ``*``) and subject name? ``g`` lines match on department and subject only."""
    kind = line[0]
    if subject is not None and subject not in line[1:3 if kind == "g" else 2]:
        return False
    if department is not None and f"dept:{department}" not in (line[1:3] if kind == "g" else line[1:2]):
        return False
    if kind == "g":
        return dataset is None and purpose is None
    if purpose is not None and (line[4] if kind == "p" else line[3]) not in (purpose, "*"):
        return False
    if dataset is not None:
        target = line[2]
        if kind == "p2":
            return target == dataset
        return target == "*" or target.startswith(f"{dataset}.") or (
            target.endswith("*") and f"{dataset}.".startswith(target[:-1]))
    return True


class PolicyAdmin:
    def __init__(self, repo: PolicyRepository, catalog: Catalog, record: Recorder) -> None:
        self.repo = repo
        self.catalog = catalog
        self.record = record

    async def change(self, *, add: Sequence[PolicyLine] = (), remove: Sequence[PolicyLine] = (), author: str,
                     reason: str, source: str = "api", expires_at: datetime | None = None,
                     base_version: int | None = None, now: datetime | None = None,
                     limits: dict[PolicyLine, datetime | None] | None = None, resync: bool = False) -> PolicyVersion:
        """One new version: ``remove`` leaves force, ``add`` enters it (until ``expires_at``, or each
        line's own time limit in ``limits``). PolicyError when the resulting policy is invalid,
        PolicyConflict when the change does not apply (line absent or present, the base version
        moved); nothing is recorded in either case.

        The audit event is written before the change commits, and the change is rolled back if
        it cannot be written. Should the commit itself fail after the event was written, a
        ``policy.change_aborted`` event follows (best effort), so that the log tells. ``resync``: the
        change states the whole policy, and may rewrite a casbin_rule changed outside hutong."""
        now = now or datetime.now(UTC)
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)  # a time without a zone is UTC, as everywhere in hutong
        if not reason.strip():
            raise PolicyConflict("give a reason for the change: it is kept in the history")
        if not author.strip():
            raise PolicyConflict("name the author of the change")
        if expires_at is not None and expires_at <= now:
            raise PolicyConflict(f"the time limit {expires_at.isoformat()} is already past")
        recorded: list[int] = []

        async def check_and_record(version: PolicyVersion, after: list[PolicyLine]) -> None:
            validate_policy(enforcer_of(after), self.catalog, f"version {version.number}")
            event = {
                "event": "policy.change", "target": f"policy version {version.number}", "actor": author,
                "before": {"version": version.number - 1}, "after": {"version": version.number,
                                                                     "digest": version.digest},
                "reason": version.reason, "source": source, "added": [format_line(x) for x in add],
                "removed": [format_line(x) for x in remove],
                "expires_at": expires_at.isoformat() if expires_at else None, "outcome": "ok"}
            if version.overwritten:  # casbin_rule had been changed outside hutong: what this version undid
                event["casbin_rule_overwritten"] = list(version.overwritten)
            await self.record(event)
            recorded.append(version.number)

        adding = [(x, (limits or {}).get(x, expires_at)) for x in add]
        try:
            return await self.repo.commit(add=adding, remove=list(remove), author=author, reason=reason,
                                          source=source, now=now, base=base_version, then=check_and_record,
                                          resync=resync)
        except Exception:
            if recorded:
                with contextlib.suppress(Exception):
                    await self.record({"event": "policy.change_aborted", "target": f"policy version {recorded[0]}",
                                       "actor": author, "reason": "recorded, then not committed: not in force",
                                       "outcome": "failed"})
            raise

    async def replace_all(self, lines: Sequence[PolicyLine], *, author: str, reason: str, source: str = "import",
                          now: datetime | None = None, limits: dict[PolicyLine, datetime | None] | None = None,
                          resync: bool = True,
                          at_head: tuple[int, list[tuple[PolicyLine, datetime | None]]] | None = None
                          ) -> PolicyVersion:
        """Make ``lines`` the whole policy (an import): the diff from the current one is the change,
        committed against the version it was computed from (a change meanwhile makes it fail).
        It also makes casbin_rule hold exactly those lines, overwriting (and recording) a change made
        to it outside hutong, unless ``resync`` is False. ``at_head``: ``repo.live_at_head`` as the
        caller already read it (the diff is then taken from the very state the caller checked)."""
        head, current = at_head if at_head is not None else await self.repo.live_at_head(now)
        have = {x for x, _ in current}
        wanted = list(dict.fromkeys(lines))
        keep = set(wanted)
        return await self.change(add=[x for x in wanted if x not in have],
                                 remove=[x for x, _ in current if x not in keep], author=author, reason=reason,
                                 source=source, now=now, base_version=head, limits=limits, resync=resync)

    async def import_csv(self, text: str, *, author: str, reason: str, now: datetime | None = None) -> PolicyVersion:
        try:
            lines = parse_csv(text)
        except ValueError as exc:
            raise PolicyError([str(exc)]) from None
        # A file exported while a time-limited grant (a sharing approval) lasted would bring it back for
        # good: refused, unless the line is in force now anyway.
        moment = now or datetime.now(UTC)
        at_head = await self.repo.live_at_head(moment)
        in_force = {x for x, _ in at_head[1]}
        ended = await self.repo.lapsed_ever(moment)
        back = [x for x in dict.fromkeys(lines) if x not in in_force and x in ended]
        if back:
            raise PolicyError([f"{format_line(x)}: was granted for a limited time, which has passed; importing it "
                               "would grant it for good: remove it from the file, or grant it again (a sharing "
                               "request, or `hutong policy add` if it is meant to be permanent)" for x in back])
        return await self.replace_all(lines, author=author, reason=reason, now=now, at_head=at_head)

    async def rollback(self, number: int, *, author: str, reason: str, now: datetime | None = None) -> PolicyVersion:
        """A new version whose lines are those of version ``number`` (history is never rewritten).
        Time-limited lines keep their limit; those whose limit has passed are not brought back."""
        moment = now or datetime.now(UTC)
        old = [(x, e) for x, e in await self.repo.lines_at(number) if e is None or e > moment]
        return await self.replace_all([x for x, _ in old], author=author,
                                      reason=f"rollback to version {number}: {reason}", source="rollback", now=now,
                                      limits=dict(old))

    async def adopt_casbin_rule(self, *, author: str, reason: str, now: datetime | None = None) -> PolicyVersion:
        """Take what casbin_rule holds, changed outside hutong, as the next version (validated and
        audited like any import; lines left in place keep their time limit; time-limited lines that
        have lapsed, and are only waiting to be removed from casbin_rule, are not granted again)."""
        rows = await self.repo.casbin_rule_lines()
        lapsed = await self.repo.lapsed(now or datetime.now(UTC))
        bad = [f"casbin_rule row {n}: {format_line(x) if x else 'unreadable'}: not a policy line of hutong's model"
               for n, x in enumerate(rows, start=1) if x is None or ARITY.get(x[0]) != len(x) - 1]
        if bad:
            raise PolicyError(bad)
        return await self.replace_all([x for x in rows if x is not None and x not in lapsed], author=author,
                                      source="casbin_rule",
                                      reason=f"adopted casbin_rule as changed outside hutong: {reason}", now=now)

    async def restore_casbin_rule(self, *, author: str, reason: str, now: datetime | None = None) -> PolicyVersion:
        """Undo a change made to casbin_rule outside hutong: a version with the same lines as the one in
        force, which rewrites casbin_rule (the audit event lists what it undid)."""
        head, current = await self.repo.live_at_head(now)
        if not await self.repo.casbin_rule_problems(now):
            raise PolicyConflict(f"casbin_rule holds policy version {head}: there is nothing to restore")
        return await self.replace_all([x for x, _ in current], author=author, source="restore", now=now,
                                      reason=f"restored casbin_rule to version {head}: {reason}")

    async def lines(self, **filters: str | None) -> list[tuple[PolicyLine, datetime | None]]:
        return [(x, e) for x, e in await self.repo.live() if matches(x, **filters)]

    async def export_csv(self) -> str:
        """The lines in force as CSV. Time limits are not part of the CSV format: they stay in the store
        (an import keeps the limit of every line it leaves in place)."""
        return format_csv(x for x, _ in await self.repo.live())

    async def dry_run(self, lines: Sequence[PolicyLine] | None, *, by: str, reason: str,
                      now: datetime | None = None) -> None:
        """Start a dry run of ``lines`` as the whole proposed policy (validated first), or stop it (None)."""
        now = now or datetime.now(UTC)
        text = None
        if lines is not None:
            validate_policy(enforcer_of(lines), self.catalog, "the proposed policy")
            text = format_csv(lines)

        async def audit() -> None:
            await self.record({"event": "policy.dry_run" if text else "policy.dry_run_stopped",
                               "target": "dry run", "actor": by, "reason": reason,
                               "after": {"lines": len(lines or [])}, "outcome": "ok"})

        await self.repo.set_dry_run(text, by=by, reason=reason, now=now, then=audit)


async def ensure_seeded(admin: PolicyAdmin, seed: Any) -> PolicyVersion | None:
    """Import ``seed`` (a CSV file) as the first version of an empty repository; None if not needed."""
    if seed is None or await admin.repo.head() > 0:
        return None
    try:
        text = seed.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"{seed}: the policy seed cannot be read ({exc.strerror})"]) from None
    try:
        return await admin.replace_all(parse_csv(text), author="seed", reason=f"seeded from {seed.name}",
                                       source="seed", resync=False)
    except PolicyConflict:
        return None  # another worker seeded it first (or casbin_rule was changed: the gateway says so)
    except ValueError as exc:  # a line of the file that is not a policy line
        raise PolicyError([f"{seed}: {exc}"]) from None


@contextlib.asynccontextmanager
async def open_policy_admin(settings: Any, catalog: Catalog, record: Recorder | None = None
                            ) -> AsyncIterator[PolicyAdmin]:
    """The configured repository's administration, for tools; ``record`` defaults to appending to
    the configured audit log. PolicyAdminUnavailable for a policy file."""
    from gateway.audit.admin import append_admin
    from policies.settings import PolicySettings

    policy = PolicySettings.from_settings(settings)
    if policy.url is None:
        raise PolicyAdminUnavailable(f"this gateway reads its policy from {policy.file}, which hutong does not "
                                     "write: edit the file (it is reloaded), or move the policy to a store "
                                     "([policies] url, seeded from the file) to administer it here")

    async def audit(body: dict[str, Any]) -> None:
        await append_admin(settings, body)

    repo = PolicyRepository(policy.url)
    try:
        await repo.init()
        admin = PolicyAdmin(repo, catalog, record or audit)
        await ensure_seeded(admin, policy.seed)
        yield admin
    finally:
        await repo.close()
