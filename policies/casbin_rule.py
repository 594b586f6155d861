"""``casbin_rule``: the policy in force, in the standard table of pycasbin's SQLAlchemy adapters.

The versioned repository (:mod:`policies.repository`) keeps the history; the lines of the
version in force are also in ``casbin_rule``, with exactly the schema of the maintained adapter
``casbin-async-sqlalchemy-adapter`` (``id, ptype, v0 .. v5``; unused values NULL), written in the
same transaction as every version, so the two cannot disagree. Gateways load the policy they
enforce from it through that adapter's ``load_policy``, and any Casbin tool can read it::

    enforcer = casbin.AsyncEnforcer("policies/model.conf", Adapter(engine))   # or url
    await enforcer.load_policy()

What it holds, at any moment: the lines of the latest version, less the time-limited lines that
have lapsed (removed by the first gateway that reloads at their expiry, and by the next version
in any case: until then an outside tool still sees a lapsed line, which hutong no longer applies).

hutong is its only writer. A change made to it directly (by SQL or another Casbin tool) is not
a change of policy: every load and every write compares the table with the version's lines, and
a difference is refused with a clear error that lists it, never enforced nor overwritten
silently. The gateway keeps the policy it has and stops serving data after ``max_staleness``;
changes are refused until an administrator adopts the edit as a new version (``hutong policy
import`` of the edited lines, or :meth:`policies.admin.PolicyAdmin.adopt_casbin_rule`) or
restores the version (``hutong policy rollback N``, or ``restore_casbin_rule``). Triggers on the
table count every write (and on PostgreSQL notify ``hutong_policy``), so a direct edit is noticed
within a poll, not at the next version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import casbin
import sqlalchemy as sa
from casbin.persist.adapter import _extract_tokens  # how every pycasbin adapter splits a stored row
from casbin_async_sqlalchemy_adapter import Adapter, CasbinRule
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from policies.lines import ARITY, PolicyLine, format_line

__all__ = ["SKEW", "TABLE", "WIDTH", "CasbinRule", "differences", "edited", "install_triggers", "line_of_row",
           "load_rules", "readable", "row_of", "unstorable"]

TABLE = CasbinRule.__tablename__  # "casbin_rule"
WIDTH = 255  # the adapter's columns are String(255)
VALUES = ("v0", "v1", "v2", "v3", "v4", "v5")
# A time-limited line may already be gone from the table when this machine's clock says it has a
# little while left: another gateway, whose clock is ahead, removed it at its expiry.
SKEW = timedelta(minutes=2)
SHOWN = 20  # differences listed in one error


def row_of(line: PolicyLine) -> dict[str, str | None]:
    """A policy line as a casbin_rule row, as the adapter's ``add_policy`` writes it."""
    return {"ptype": line[0], **{v: (line[i + 1] if i + 1 < len(line) else None) for i, v in enumerate(VALUES)}}


def line_of_row(row: Any) -> PolicyLine | None:
    """A stored row as every Casbin adapter reads it (its text, split by Casbin), or None if Casbin cannot."""
    try:
        text = CasbinRule.__str__(row)  # the adapter's own rendering: values up to the first NULL
        tokens = _extract_tokens(text)
    except (TypeError, IndexError):  # a NULL ptype, an unbalanced bracket
        return None
    return tuple(tokens) if tokens else None


def unstorable(line: PolicyLine) -> str | None:
    """Why ``line`` cannot go into casbin_rule and be read back the same by Casbin, if it cannot."""
    if any(len(v) > WIDTH for v in line):
        return f"{format_line(line)}: a value is longer than {WIDTH} characters, the width of {TABLE}'s columns"
    if line_of_row(_Values(row_of(line))) != tuple(line):
        return (f"{format_line(line)}: Casbin would read it back differently (a value holds a comma outside "
                "brackets, an unbalanced bracket or surrounding spaces)")
    return None


class _Values:
    """Attribute access over a row's values (what the adapter's ``__str__`` reads)."""

    def __init__(self, values: dict[str, str | None]) -> None:
        self.__dict__.update(values)


async def load_rules(conn: AsyncConnection, enforcer: casbin.Enforcer) -> None:
    """Load casbin_rule into ``enforcer``'s model through the maintained adapter, inside ``conn``'s
    transaction (so that it is read together with the version it should hold)."""
    session = AsyncSession(bind=conn)
    try:
        await Adapter(conn.engine, db_session=session).load_policy(enforcer.get_model())
    finally:
        await session.close()


def differences(found: Iterable[PolicyLine], live: Sequence[tuple[PolicyLine, str | None]], soon: str,
                version: int, *, unread: int = 0) -> list[str]:
    """How casbin_rule (``found``: its lines as Casbin reads them) differs from version ``version``
    (``live``: its lines with their time limit, as stored stamps). Empty when it holds every line in
    force, may hold lines that have lapsed or lapse before ``soon`` (now + ``SKEW``), and holds nothing
    else, each line once. ``unread``: rows that Casbin cannot read or that are no line of hutong's model."""
    allowed = {x for x, _ in live}
    counts = Counter(found)
    problems: list[str] = []
    if unread:
        problems.append(f"{TABLE}: {unread} row(s) that are not policy lines of hutong's model "
                        "(an unknown ptype, or values Casbin cannot read)")
    for x, n in counts.items():
        if x not in allowed:
            problems.append(f"{TABLE}: {format_line(x)}: added outside hutong (not in policy version {version})")
        elif n > 1:
            problems.append(f"{TABLE}: {format_line(x)}: {n} times")
    problems += [f"{TABLE}: {format_line(x)}: removed outside hutong (in force in policy version {version})"
                 for x, e in live if (e is None or e > soon) and x not in counts]
    shown = problems[:SHOWN]
    if len(problems) > SHOWN:
        shown.append(f"{TABLE}: ... and {len(problems) - SHOWN} more")
    return shown


def edited(version: int) -> str:
    """The first words of every error about a casbin_rule changed outside hutong."""
    return (f"{TABLE} was changed outside hutong and no longer holds policy version {version}: that is refused "
            "until a policy administrator adopts the edit as a new version (hutong policy import of the edited "
            f"lines) or restores the version (hutong policy rollback {version})")


def readable(line: PolicyLine | None) -> bool:
    """Whether Casbin loads a row read as ``line`` into hutong's model (p, p2 and g lines)."""
    return line is not None and line[0] in ARITY


# --- noticing direct edits ----------------------------------------------------------------------------

_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS hutong_casbin_rule_insert AFTER INSERT ON casbin_rule "
    "BEGIN UPDATE policy_rule_writes SET n = n + 1 WHERE id = 1; END",
    "CREATE TRIGGER IF NOT EXISTS hutong_casbin_rule_update AFTER UPDATE ON casbin_rule "
    "BEGIN UPDATE policy_rule_writes SET n = n + 1 WHERE id = 1; END",
    "CREATE TRIGGER IF NOT EXISTS hutong_casbin_rule_delete AFTER DELETE ON casbin_rule "
    "BEGIN UPDATE policy_rule_writes SET n = n + 1 WHERE id = 1; END",
]
_PG_FUNCTION = (
    "CREATE OR REPLACE FUNCTION hutong_casbin_rule_written() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
    "BEGIN UPDATE policy_rule_writes SET n = n + 1 WHERE id = 1; "
    "PERFORM pg_notify('hutong_policy', 'casbin_rule'); RETURN NULL; END $fn$"
)
_PG_TRIGGER = (
    "CREATE TRIGGER hutong_casbin_rule_written AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON casbin_rule "
    "FOR EACH STATEMENT EXECUTE FUNCTION hutong_casbin_rule_written()"
)


async def install_triggers(conn: AsyncConnection, backend: str) -> bool:
    """Count every write to casbin_rule in ``policy_rule_writes`` (part of the repository's stamp), and
    on PostgreSQL notify the gateways' watchers too. Idempotent; call it holding the write lock.
    False where there are none (another database): a direct edit is then noticed at the next version."""
    if backend == "sqlite":
        for ddl in _SQLITE_TRIGGERS:
            await conn.exec_driver_sql(ddl)
        return True
    if backend == "postgresql":
        present = (await conn.execute(sa.text(
            "SELECT 1 FROM pg_trigger WHERE tgname = 'hutong_casbin_rule_written' "
            "AND tgrelid = to_regclass(:t)"), {"t": TABLE})).first()
        if present is None:
            await conn.exec_driver_sql(_PG_FUNCTION)
            await conn.exec_driver_sql(_PG_TRIGGER)
        return True
    return False
