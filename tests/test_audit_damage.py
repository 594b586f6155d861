"""Every kind of damage is found by verify, with the first bad record, in the live store (SQLite
and PostgreSQL, tampered with through a privileged connection) and in export files (edited),
including checkpoints deleted (with the chain rewritten or cut after them) and an export cut
after its last checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit.keys import AuditKeys
from gateway.audit.record import GENESIS_HASH, chain_hash, checkpoint_message, end_message
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_file, verify_store
from tests.test_audit_support import (
    BACKENDS,
    body,
    export_objects,
    fill,
    forge,
    new_keys,
    renumber,
    rows,
    sql,
    sqlite_url,
    write_export,
)

N = 35  # checkpoints at 10, 20, 30; records 31..35 chained but not yet signed


@pytest.fixture(params=BACKENDS)
async def chain(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, AuditStore, AuditKeys]]:
    url = request.getfixturevalue("pg_audit_url") if request.param == "postgresql" else sqlite_url(tmp_path)
    keys = new_keys(tmp_path)
    store = AuditStore(url)
    await store.init()
    await fill(store, keys, N, head_mark=tmp_path / "head-mark.json")
    try:
        yield url, store, keys
    finally:
        await store.close()


async def test_intact_chain_verifies(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    _, store, keys = chain
    report = await verify_store(store, keys)
    assert report.ok, report
    assert (report.records, report.checkpoints, report.first_seq, report.last_seq) == (N, 3, 1, N)
    assert report.warnings == ["records 31 to 35 are after the last checkpoint: they are chained but not yet signed"]


async def expect(store: AuditStore, keys: AuditKeys, damage: str, seq: int, **kwargs: Any) -> None:
    report = await verify_store(store, keys, **kwargs)
    assert not report.ok
    assert (report.damage, report.first_bad_seq) == (damage, seq), report


async def test_changed_body(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "UPDATE audit_record SET body = replace(body, 'official-', 'nobody-') WHERE seq = 12")
    await expect(store, keys, "changed", 12)


async def test_changed_time(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "UPDATE audit_record SET time = '2000-01-01T00:00:00.000000Z' WHERE seq = 33")
    await expect(store, keys, "changed", 33)


async def test_changed_search_column_only(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    """Hiding a record from search (its copied columns or index rows) is damage too."""
    url, store, keys = chain
    await sql(url, "UPDATE audit_record SET department = 'elsewhere' WHERE seq = 7")
    await expect(store, keys, "changed", 7)


async def test_changed_subject_index(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_subject WHERE seq = 8")
    await expect(store, keys, "changed", 8)


async def test_changed_with_recomputed_hash(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    """Record 12 rewritten and its hash recomputed: record 13 no longer links to it."""
    url, store, keys = chain
    old = (await rows(url))[11]
    fake = forge(12, old["time"], body(12, outcome="ok", acting_user="nobody"), old["prev_hash"])
    await sql(url, "UPDATE audit_record SET body = :body, hash = :hash WHERE seq = 12", params=fake)
    await expect(store, keys, "changed", 12)


async def test_deleted(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_record WHERE seq = 12")
    await expect(store, keys, "deleted", 12)


async def test_deleted_first(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_record WHERE seq <= 3")
    await expect(store, keys, "deleted", 1)


async def test_deleted_and_renumbered(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_record WHERE seq = 12")
    await renumber(url, "seq > 12", -1)
    await expect(store, keys, "deleted", 12)


async def test_inserted_forged_record(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    """A forged record appended at the end, copying a real record's link, its hash recomputed."""
    url, store, keys = chain
    old = (await rows(url))[11]
    async with store.write_transaction() as conn:
        await store.insert(conn, [forge(N + 1, old["time"], body(99), old["prev_hash"])])
    await expect(store, keys, "inserted", N + 1)


async def test_inserted_and_renumbered(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    """Records from 12 on moved up by one to make room for a forged record 12 linked to 11."""
    url, store, keys = chain
    eleven = (await rows(url))[10]
    await renumber(url, "seq >= 12", 1)
    await sql(url, "UPDATE audit_subject SET seq = seq + 1000 WHERE seq >= 12")
    await sql(url, "UPDATE audit_field SET seq = seq + 1000 WHERE seq >= 12")
    async with store.write_transaction() as conn:
        await store.insert(conn, [forge(12, eleven["time"], body(99), eleven["hash"])])
    await expect(store, keys, "inserted", 12)


async def test_reordered(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "UPDATE audit_record SET seq = -1 WHERE seq = 12", "UPDATE audit_record SET seq = 12 WHERE seq = 13",
              "UPDATE audit_record SET seq = 13 WHERE seq = -1")
    await expect(store, keys, "reordered", 12)


async def test_reordered_far_apart(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "UPDATE audit_record SET seq = -1 WHERE seq = 5", "UPDATE audit_record SET seq = 5 WHERE seq = 25",
              "UPDATE audit_record SET seq = 25 WHERE seq = -1")
    await expect(store, keys, "reordered", 5)


async def test_truncated_after_checkpoint(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_record WHERE seq > 25")
    await expect(store, keys, "truncated", 26)


async def test_truncated_everything(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_record")
    await expect(store, keys, "truncated", 1)


async def test_bad_checkpoint_signature(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "UPDATE audit_checkpoint SET signature = :s WHERE seq = 20", params={"s": "A" * 86})
    await expect(store, keys, "bad_checkpoint", 20)


async def rewrite_chain(url: str, store: AuditStore, change_seq: int) -> list[dict[str, Any]]:
    """Recompute the whole chain with record ``change_seq`` altered: every link consistent."""
    old = await rows(url)
    await sql(url, "DELETE FROM audit_record", "DELETE FROM audit_subject", "DELETE FROM audit_field")
    prev, new = GENESIS_HASH, []
    for r in old:
        b = orjson.loads(r["body"])
        if r["seq"] == change_seq:
            b["acting_user"] = "nobody"
        new.append(forge(r["seq"], r["time"], b, prev))
        prev = new[-1]["hash"]
    async with store.write_transaction() as conn:
        await store.insert(conn, new)
    return new


async def test_rewritten_chain_keeping_checkpoints(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await rewrite_chain(url, store, 5)
    await expect(store, keys, "bad_checkpoint", 10)


async def test_rewritten_chain_resigned_with_another_key(chain: tuple[str, AuditStore, AuditKeys],
                                                         tmp_path: Path) -> None:
    url, store, keys = chain
    new = await rewrite_chain(url, store, 5)
    forger = new_keys(tmp_path, "forger.pem")
    await sql(url, "DELETE FROM audit_checkpoint")
    async with store.write_transaction() as conn:
        for seq in (10, 20, 30):
            r = new[seq - 1]
            kid = forger.signing_id
            await store.insert(conn, [], {"seq": seq, "hash": r["hash"], "time": r["time"], "key_id": kid,
                                          "signature": forger.sign(checkpoint_message(seq, r["hash"], r["time"],
                                                                                      kid))})
    await expect(store, keys, "bad_checkpoint", 10)
    assert (await verify_store(store, forger)).ok  # consistent in itself: only the trusted key tells


# --- checkpoints deleted: the chain rewritten, or cut back to a checkpoint -----------------------------


async def test_checkpoints_deleted_and_chain_rewritten(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    """Every checkpoint deleted, then every record rewritten with recomputed hashes: a chain consistent
    in itself, but one that lacks the checkpoint due at every 10th record."""
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_checkpoint")
    await rewrite_chain(url, store, 5)
    await expect(store, keys, "missing_checkpoint", 10, checkpoint_every=10)
    store.checkpoint_every = 10  # as configured ([audit] checkpoint_every, set by AuditWriter.from_settings)
    await expect(store, keys, "missing_checkpoint", 10)


async def test_checkpoints_deleted_then_the_gateway_writes_on(chain: tuple[str, AuditStore, AuditKeys],
                                                              tmp_path: Path) -> None:
    """The gateway's next checkpoints must not hide the deleted ones: the writer does not sign the
    multiples it finds unsigned, and each new checkpoint signs its interval."""
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_checkpoint")
    await rewrite_chain(url, store, 5)
    await fill(store, keys, 10, start=N)
    assert [c["seq"] for c in await store.checkpoints()] == [40]
    await expect(store, keys, "missing_checkpoint", 10)  # checkpoint 40 signs "every 10": 10, 20, 30 are gone


async def test_a_checkpoint_deleted(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_checkpoint WHERE seq = 20")
    await expect(store, keys, "missing_checkpoint", 20)


async def test_the_last_checkpoint_deleted(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_checkpoint WHERE seq = 30")
    await expect(store, keys, "missing_checkpoint", 30)
    await expect(store, keys, "missing_checkpoint", 30, checkpoint_every=10)


async def test_tail_replaced_after_its_checkpoint_was_deleted(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    """Records 21..35 rewritten with recomputed hashes once checkpoint 30 is gone."""
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_checkpoint WHERE seq = 30")
    old = await rows(url)
    await sql(url, "DELETE FROM audit_record WHERE seq > 20", "DELETE FROM audit_subject WHERE seq > 20",
              "DELETE FROM audit_field WHERE seq > 20")
    prev, new = old[19]["hash"], []
    for r in old[20:]:
        new.append(forge(r["seq"], r["time"], body(r["seq"], acting_user="nobody"), prev))
        prev = new[-1]["hash"]
    async with store.write_transaction() as conn:
        await store.insert(conn, new)
    await expect(store, keys, "missing_checkpoint", 30, checkpoint_every=10)


async def test_cut_back_to_a_checkpoint(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path) -> None:
    """Records after 10 deleted with their checkpoints: what is left is a genuine, shorter chain.
    Only a witness of how far the chain reached tells: the head mark the writer keeps outside the store."""
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_record WHERE seq > 10", "DELETE FROM audit_checkpoint WHERE seq > 10")
    await expect(store, keys, "truncated", 11, checkpoint_every=10, head_mark=tmp_path / "head-mark.json")
    report = await verify_store(store, keys, checkpoint_every=10, head_mark=tmp_path / "no-mark.json")
    assert report.ok and "there is no head mark" in report.warnings[0]  # the documented limit


async def test_head_mark_of_a_rewritten_chain(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path) -> None:
    url, store, keys = chain
    await sql(url, "DELETE FROM audit_checkpoint WHERE seq = 30")
    old = await rows(url)
    await sql(url, "DELETE FROM audit_record WHERE seq > 20", "DELETE FROM audit_subject WHERE seq > 20",
              "DELETE FROM audit_field WHERE seq > 20")
    prev, new = old[19]["hash"], []
    for r in old[20:29]:  # 21..29: short of the interval, so only the head mark (at 30) tells
        new.append(forge(r["seq"], r["time"], body(r["seq"], acting_user="nobody"), prev))
        prev = new[-1]["hash"]
    async with store.write_transaction() as conn:
        await store.insert(conn, new)
    await expect(store, keys, "truncated", 30, checkpoint_every=10, head_mark=tmp_path / "head-mark.json")


@pytest.fixture
async def sqlite_empty(tmp_path: Path) -> AsyncIterator[tuple[AuditStore, AuditKeys]]:
    """An empty SQLite store and its keys, closed after the test."""
    store = AuditStore(sqlite_url(tmp_path))
    await store.init()
    try:
        yield store, new_keys(tmp_path)
    finally:
        await store.close()


async def test_checkpoints_fall_on_every_multiple_whatever_the_batches(
        sqlite_empty: tuple[AuditStore, AuditKeys]) -> None:
    store, keys = sqlite_empty
    await fill(store, keys, 95, batch=7)
    assert [c["seq"] for c in await store.checkpoints()] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert {c["every"] for c in await store.checkpoints()} == {10}
    assert (await verify_store(store, keys, checkpoint_every=10)).ok


async def test_writers_with_different_intervals(sqlite_empty: tuple[AuditStore, AuditKeys]) -> None:
    """A writer with a shorter interval signs the multiples of it that one with a longer interval passed."""
    store, keys = sqlite_empty
    await fill(store, keys, 25, checkpoint_every=10)
    await fill(store, keys, 5, checkpoint_every=4, start=25)
    assert [c["seq"] for c in await store.checkpoints()] == [10, 20, 24, 28]
    report = await verify_store(store, keys, checkpoint_every=4)
    assert report.ok, report


async def test_first_format_checkpoints_still_verify(sqlite_empty: tuple[AuditStore, AuditKeys],
                                                     tmp_path: Path) -> None:
    """Checkpoints signed before the interval was (no `every`) verify; the interval is then the trusted one."""
    store, keys = sqlite_empty
    await fill(store, keys, 12)
    h = next(r for r in await rows(sqlite_url(tmp_path)) if r["seq"] == 10)["hash"]
    t = next(r for r in await rows(sqlite_url(tmp_path)) if r["seq"] == 10)["time"]
    await sql(sqlite_url(tmp_path), "UPDATE audit_checkpoint SET every = NULL, signature = :s WHERE seq = 10",
              params={"s": keys.sign(checkpoint_message(10, h, t, keys.signing_id))})
    assert (await verify_store(store, keys, checkpoint_every=10)).ok
    await sql(sqlite_url(tmp_path), "DELETE FROM audit_checkpoint")
    await expect(store, keys, "missing_checkpoint", 10, checkpoint_every=10)


# --- export files ------------------------------------------------------------------------------------


@pytest.fixture(params=["jsonl", "csv"])
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


async def exported(tmp_path: Path, store: AuditStore, keys: AuditKeys, fmt: str, edit: Any = None,
                   **kwargs: Any) -> Path:
    objs = await export_objects(store, keys, fmt, **kwargs)
    if edit is not None:
        objs = edit(objs)
    return write_export(tmp_path / f"edited.{fmt}", fmt, objs)


def record_index(objs: list[dict[str, Any]], seq: int) -> int:
    return next(i for i, o in enumerate(objs) if o["type"] == "record" and o["seq"] == seq)


@pytest.fixture
async def sqlite_chain(sqlite_empty: tuple[AuditStore, AuditKeys]) -> tuple[AuditStore, AuditKeys]:
    store, keys = sqlite_empty
    await fill(store, keys, N)
    return store, keys


async def check_file(path: Path, keys: AuditKeys | None, damage: str | None, seq: int | None) -> None:
    report = await verify_file(path, keys)
    assert (report.ok, report.damage, report.first_bad_seq) == (damage is None, damage, seq), report


async def test_export_verifies(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path, fmt: str) -> None:
    _, store, keys = chain
    path = await exported(tmp_path, store, keys, fmt)
    await check_file(path, keys, None, None)
    report = await verify_file(path)  # the file's own keys: consistent, and said loudly
    assert report.ok and not report.key_trusted and report.warnings[0].startswith("UNVERIFIED KEY")
    assert report.unverified_keys[0]["kid"] == keys.signing_id and keys.signing_id in report.warnings[0]
    assert report.checkpoint_every == 10  # the interval the end line signs


async def test_export_of_a_range_verifies_from_its_anchor(sqlite_chain: tuple[AuditStore, AuditKeys],
                                                          tmp_path: Path, fmt: str) -> None:
    store, keys = sqlite_chain
    path = await exported(tmp_path, store, keys, fmt, first=21, last=30)
    report = await verify_file(path, keys)
    assert report.ok and (report.anchor_seq, report.first_seq, report.last_seq, report.checkpoints) == (20, 21, 30, 2)

    def bad_anchor(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        objs[0]["anchor"]["hash"] = "1" * 64
        return objs

    await check_file(await exported(tmp_path, store, keys, fmt, bad_anchor, first=21, last=30), keys, "changed", 21)


def _changed(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    objs[record_index(objs, 12)]["body"]["outcome"] = "ok!"
    return objs


def _deleted(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    del objs[record_index(objs, 12)]
    return objs


def _inserted(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    i = record_index(objs, 12)
    real = objs[i]
    fake = {**real, "body": {**real["body"], "acting_user": "nobody"}}
    fake["hash"] = chain_hash(12, fake["time"], fake["kind"], fake["body"], fake["prev_hash"])
    objs.insert(i + 1, fake)
    return objs


def _reordered(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    i = record_index(objs, 12)
    objs[i], objs[i + 1] = objs[i + 1], objs[i]
    return objs


def _truncated(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return objs[:record_index(objs, 26)]


def _truncated_tail(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return objs[:record_index(objs, 34)]  # after the last checkpoint: the missing end line tells


def _end(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objs if o["type"] == "end")


def _recount(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The end line made to agree with the records left (its signature is not redone: it cannot be)."""
    recs = [o for o in objs if o["type"] == "record"]
    _end(objs).update(records=len(recs), last_seq=recs[-1]["seq"], last_hash=recs[-1]["hash"])
    return objs


def _rechain(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    prev = GENESIS_HASH
    for o in objs:
        if o["type"] == "record":
            if o["seq"] == 5:
                o["body"]["acting_user"] = "nobody"
            o["prev_hash"] = prev
            o["hash"] = prev = chain_hash(o["seq"], o["time"], o["kind"], o["body"], prev)
    return objs


def _cut_after_last_checkpoint(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _recount([o for o in objs if not (o["type"] == "record" and o["seq"] > 30)])


def _checkpoints_dropped(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["type"] != "checkpoint"]


def _checkpoints_dropped_chain_rewritten(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _recount(_rechain(_checkpoints_dropped(objs)))


def _interval_raised(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    _end(objs)["every"] = 1000  # to excuse checkpoints dropped: the signature covers it
    return _checkpoints_dropped(objs)


def _end_unsigned(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    del _end(objs)["signature"]
    return objs


def _bad_signature(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cp = next(o for o in objs if o["type"] == "checkpoint" and o["seq"] == 20)
    cp["hash"] = objs[record_index(objs, 19)]["hash"]
    return objs


@pytest.mark.parametrize(("edit", "damage", "seq"), [
    (_changed, "changed", 12), (_deleted, "deleted", 12), (_inserted, "inserted", 12), (_reordered, "reordered", 12),
    (_truncated, "truncated", 26), (_truncated_tail, "truncated", 34), (_bad_signature, "bad_checkpoint", 20),
    (_cut_after_last_checkpoint, "bad_checkpoint", 31), (_checkpoints_dropped, "missing_checkpoint", 10),
    (_checkpoints_dropped_chain_rewritten, "bad_checkpoint", 1), (_interval_raised, "bad_checkpoint", 1),
    (_end_unsigned, "bad_checkpoint", 31),
], ids=["changed", "deleted", "inserted", "reordered", "truncated", "truncated-tail", "bad-checkpoint",
        "cut-after-last-checkpoint", "checkpoints-dropped", "checkpoints-dropped-chain-rewritten", "interval-raised",
        "end-unsigned"])
async def test_damaged_export(sqlite_chain: tuple[AuditStore, AuditKeys], tmp_path: Path, fmt: str, edit: Any,
                              damage: str, seq: int) -> None:
    store, keys = sqlite_chain
    await check_file(await exported(tmp_path, store, keys, fmt, edit), keys, damage, seq)


async def test_rewritten_export_with_another_key(sqlite_chain: tuple[AuditStore, AuditKeys], tmp_path: Path,
                                                 fmt: str) -> None:
    """A whole file recomputed and re-signed, its header carrying the forger's key: only the
    trusted key tells."""
    store, keys = sqlite_chain
    forger = new_keys(tmp_path, "forger.pem")

    def rewrite(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prev, hashes = GENESIS_HASH, {}
        for o in objs:
            if o["type"] == "record":
                if o["seq"] == 5:
                    o["body"]["acting_user"] = "nobody"
                o["prev_hash"] = prev
                o["hash"] = prev = chain_hash(o["seq"], o["time"], o["kind"], o["body"], prev)
                hashes[o["seq"]] = prev
        for o in objs:
            if o["type"] == "checkpoint":
                o.update(hash=hashes[o["seq"]], key_id=forger.signing_id,
                         signature=forger.sign(checkpoint_message(o["seq"], hashes[o["seq"]], o["time"],
                                                                  forger.signing_id, o.get("every"))))
            elif o["type"] == "header":
                o["keys"] = forger.jwks()
            elif o["type"] == "end":
                o.update(last_hash=prev, key_id=forger.signing_id)
                o["signature"] = forger.sign(end_message(o))
        return objs

    path = await exported(tmp_path, store, keys, fmt, rewrite)
    await check_file(path, keys, "bad_checkpoint", 10)
    report = await verify_file(path)  # against its own keys it is consistent: hence the loud warning
    assert report.ok and not report.key_trusted and forger.signing_id in report.warnings[0]


async def test_export_without_its_checkpoints_re_signed_by_a_forger(sqlite_chain: tuple[AuditStore, AuditKeys],
                                                                   tmp_path: Path, fmt: str) -> None:
    """Checkpoint lines dropped, the chain recomputed, the end line redone and signed with the forger's
    key (put in the header): the trusted key refuses the end line; the file's own key accepts it, and
    verify says that key is unverified."""
    store, keys = sqlite_chain
    forger = new_keys(tmp_path, "forger.pem")

    def rewrite(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        objs = _checkpoints_dropped_chain_rewritten(objs)
        objs[0]["keys"] = forger.jwks()
        end = _end(objs)
        end.update(key_id=forger.signing_id, every=1000)
        end["signature"] = forger.sign(end_message(end))
        return objs

    path = await exported(tmp_path, store, keys, fmt, rewrite)
    await check_file(path, keys, "bad_checkpoint", 1)
    report = await verify_file(path)
    assert report.ok and not report.key_trusted and report.unverified_keys[0]["kid"] == forger.signing_id
    await check_file(path, None, None, None)
    report = await verify_file(path, checkpoint_every=10)  # a trusted interval, given: the gaps show
    assert (report.damage, report.first_bad_seq) == ("missing_checkpoint", 10)
