"""Policy administration through GraphQL, for the role ``policy-admin`` and nothing else.

Queries read the rules in force, the numbered history and the diff between two versions;
mutations add, remove, replace, import, roll back, and start or stop a dry run. Every change
is validated against the catalogue, becomes a numbered version with its author (the caller's
``X-Acting-User``, through its client) and reason, is an audit event, and governs the next
request on this gateway at once and on every other within the watcher's reach.
"""

from __future__ import annotations

from typing import Any

import graphene

from gateway.context import require_role
from policies.admin import PolicyAdmin, PolicyAdminUnavailable
from policies.lines import PolicyLine, format_line, parse_csv, parse_line
from policies.repository import PolicyVersion

__all__ = ["PolicyAdminMutation", "PolicyAdminQuery"]

ADMIN_ROLE = "policy-admin"


def _admin(info: Any) -> PolicyAdmin:
    require_role(info.context, ADMIN_ROLE)
    admin = info.context.get("policy_admin")
    if admin is None:
        raise PolicyAdminUnavailable("this gateway reads its policy from a file, which it does not write: edit the "
                                     "file, or configure a policy store ([policies] url) to administer it here")
    return admin


def _author(info: Any) -> str:
    acting = info.context.get("acting_user")
    if not acting:
        raise ValueError("name the administrator making the change in the X-Acting-User header")
    return f"{acting} (via {info.context['subject'].client_id})"


def _parse(lines: list[str] | None, what: str) -> list[PolicyLine]:
    out, problems = [], []
    for i, text in enumerate(lines or []):
        try:
            out.append(parse_line(text))
        except ValueError as exc:
            problems.append(f"{what}[{i}]: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    return out


class PolicyRule(graphene.ObjectType):
    line = graphene.String(required=True, description="As in a Casbin CSV file: p, subject, object, ...")
    type = graphene.String(required=True, description="p (field rule), p2 (row rule) or g (membership)")
    values = graphene.List(graphene.NonNull(graphene.String), required=True)
    expires_at = graphene.DateTime(description="A time-limited grant ends by itself then")


class PolicyVersionInfo(graphene.ObjectType):
    number = graphene.Int(required=True)
    at = graphene.DateTime(required=True)
    author = graphene.String(required=True)
    reason = graphene.String(required=True)
    source = graphene.String(required=True, description="api, cli, import, rollback, share-request, seed")
    added = graphene.Int(required=True)
    removed = graphene.Int(required=True)
    digest = graphene.String(required=True)


class PolicyDiff(graphene.ObjectType):
    added = graphene.List(graphene.NonNull(graphene.String), required=True)
    removed = graphene.List(graphene.NonNull(graphene.String), required=True)


class PolicyDryRun(graphene.ObjectType):
    started_by = graphene.String(required=True)
    started_at = graphene.DateTime(required=True)
    reason = graphene.String(required=True)
    lines = graphene.Int(required=True)


def _version(v: PolicyVersion) -> dict[str, Any]:
    return {"number": v.number, "at": v.at, "author": v.author, "reason": v.reason, "source": v.source,
            "added": v.added, "removed": v.removed, "digest": v.digest}


async def _applied(info: Any, version: PolicyVersion) -> dict[str, Any]:
    """After a change: this gateway takes it at once (the others through the watcher)."""
    refresh = info.context.get("policy_refresh")
    if refresh is not None:
        await refresh()
    return _version(version)


class PolicyAdminQuery(graphene.ObjectType):
    policy_rules = graphene.List(
        graphene.NonNull(PolicyRule), required=True, department=graphene.String(), dataset=graphene.String(),
        purpose=graphene.String(), subject=graphene.String(),
        description="The rules in force, filtered (role policy-admin).")
    policy_versions = graphene.List(graphene.NonNull(PolicyVersionInfo), required=True, limit=graphene.Int(),
                                    before=graphene.Int(description="The last number of the previous page."),
                                    description="The numbered history, newest first.")
    policy_diff = graphene.Field(PolicyDiff, required=True, from_=graphene.Int(required=True, name="from"),
                                 to=graphene.Int(required=True))
    policy_export = graphene.String(required=True, description="The rules in force as a Casbin CSV file.")
    policy_dry_run = graphene.Field(PolicyDryRun, description="The dry run in progress, if any.")

    @staticmethod
    async def resolve_policy_rules(_: Any, info: Any, **filters: str | None) -> list[dict[str, Any]]:
        admin = _admin(info)
        return [{"line": format_line(x), "type": x[0], "values": list(x[1:]), "expires_at": e}
                for x, e in await admin.lines(**filters)]

    @staticmethod
    async def resolve_policy_versions(_: Any, info: Any, limit: int | None = None,
                                      before: int | None = None) -> list[dict[str, Any]]:
        size = 50 if limit is None else limit
        if not 1 <= size <= 500:
            raise ValueError("limit must be from 1 to 500")
        return [_version(v) for v in await _admin(info).repo.versions(size, before)]

    @staticmethod
    async def resolve_policy_diff(_: Any, info: Any, from_: int, to: int) -> dict[str, Any]:
        added, removed = await _admin(info).repo.diff(from_, to)
        return {"added": [format_line(x) for x in added], "removed": [format_line(x) for x in removed]}

    @staticmethod
    async def resolve_policy_export(_: Any, info: Any) -> str:
        return await _admin(info).export_csv()

    @staticmethod
    async def resolve_policy_dry_run(_: Any, info: Any) -> dict[str, Any] | None:
        found = await _admin(info).repo.dry_run()
        if found is None:
            return None
        text, by, at, reason = found
        return {"started_by": by, "started_at": at, "reason": reason, "lines": len(parse_csv(text))}


class PolicyAdminMutation(graphene.ObjectType):
    add_policy_rules = graphene.Field(
        PolicyVersionInfo, required=True, lines=graphene.List(graphene.NonNull(graphene.String), required=True),
        reason=graphene.String(required=True), expires_at=graphene.DateTime(), base_version=graphene.Int(
            description="The version you looked at: if the policy changed since, the change is refused."))
    remove_policy_rules = graphene.Field(
        PolicyVersionInfo, required=True, lines=graphene.List(graphene.NonNull(graphene.String), required=True),
        reason=graphene.String(required=True), base_version=graphene.Int())
    replace_policy_rules = graphene.Field(
        PolicyVersionInfo, required=True, remove=graphene.List(graphene.NonNull(graphene.String), required=True),
        add=graphene.List(graphene.NonNull(graphene.String), required=True), reason=graphene.String(required=True),
        base_version=graphene.Int())
    import_policy = graphene.Field(PolicyVersionInfo, required=True, csv=graphene.String(required=True),
                                   reason=graphene.String(required=True),
                                   description="Make this CSV the whole policy (one version: the diff).")
    rollback_policy = graphene.Field(PolicyVersionInfo, required=True, version=graphene.Int(required=True),
                                     reason=graphene.String(required=True),
                                     description="A new version with the rules of an earlier one.")
    start_policy_dry_run = graphene.Field(
        PolicyDryRun, required=True, reason=graphene.String(required=True), csv=graphene.String(),
        add=graphene.List(graphene.NonNull(graphene.String)), remove=graphene.List(graphene.NonNull(graphene.String)),
        description="Evaluate a proposed policy (a whole CSV, or the current one with lines added and removed) "
                    "beside the one in force on every gateway, logging and recording what it would decide "
                    "differently, without enforcing it.")
    stop_policy_dry_run = graphene.Boolean(required=True, reason=graphene.String(required=True))

    @staticmethod
    async def resolve_add_policy_rules(_: Any, info: Any, lines: list[str], reason: str, expires_at: Any = None,
                                       base_version: int | None = None) -> dict[str, Any]:
        admin = _admin(info)
        return await _applied(info, await admin.change(add=_parse(lines, "lines"), author=_author(info),
                                                       reason=reason, expires_at=expires_at,
                                                       base_version=base_version))

    @staticmethod
    async def resolve_remove_policy_rules(_: Any, info: Any, lines: list[str], reason: str,
                                          base_version: int | None = None) -> dict[str, Any]:
        admin = _admin(info)
        return await _applied(info, await admin.change(remove=_parse(lines, "lines"), author=_author(info),
                                                       reason=reason, base_version=base_version))

    @staticmethod
    async def resolve_replace_policy_rules(_: Any, info: Any, remove: list[str], add: list[str], reason: str,
                                           base_version: int | None = None) -> dict[str, Any]:
        admin = _admin(info)
        return await _applied(info, await admin.change(remove=_parse(remove, "remove"), add=_parse(add, "add"),
                                                       author=_author(info), reason=reason,
                                                       base_version=base_version))

    @staticmethod
    async def resolve_import_policy(_: Any, info: Any, csv: str, reason: str) -> dict[str, Any]:
        admin = _admin(info)
        return await _applied(info, await admin.import_csv(csv, author=_author(info), reason=reason))

    @staticmethod
    async def resolve_rollback_policy(_: Any, info: Any, version: int, reason: str) -> dict[str, Any]:
        admin = _admin(info)
        return await _applied(info, await admin.rollback(version, author=_author(info), reason=reason))

    @staticmethod
    async def resolve_start_policy_dry_run(_: Any, info: Any, reason: str, csv: str | None = None,
                                           add: list[str] | None = None,
                                           remove: list[str] | None = None) -> dict[str, Any]:
        admin = _admin(info)
        if csv is not None and (add or remove):
            raise ValueError("give a whole policy (csv) or a change (add, remove), not both")
        if csv is not None:
            lines = parse_csv(csv)
        else:
            current = [x for x, _ in await admin.repo.live()]
            gone = set(_parse(remove, "remove"))
            missing = [format_line(x) for x in gone if x not in set(current)]
            if missing:
                raise ValueError("not in force, cannot be removed: " + "; ".join(missing))
            lines = [x for x in current if x not in gone] + _parse(add, "add")
        await admin.dry_run(lines, by=_author(info), reason=reason)
        refresh = info.context.get("policy_refresh")
        if refresh is not None:
            await refresh()
        found = await admin.repo.dry_run()
        assert found is not None
        return {"started_by": found[1], "started_at": found[2], "reason": found[3], "lines": len(lines)}

    @staticmethod
    async def resolve_stop_policy_dry_run(_: Any, info: Any, reason: str) -> bool:
        admin = _admin(info)
        await admin.dry_run(None, by=_author(info), reason=reason)
        refresh = info.context.get("policy_refresh")
        if refresh is not None:
            await refresh()
        return True

