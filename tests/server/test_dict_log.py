"""The dict write log (apothic.server.dict_log) on a real Store: each write set appends one
log row, a fold moves committed log rows into entry and request rows and deletes them in
one transaction, and a dict loaded at any point (log rows folded or not, folds racing
writes) equals the dict in the memory of the control plane that wrote it, request ids
included. A replica whose copy is stale never folds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apothic.server.dict_log import LogRecord, fold, replay_requests
from apothic.server.dict_records import DictEntryRecord
from apothic.server.dicts import DictManager
from apothic.server.store import Store

ACCOUNT = "accounts:dict-log"


def _entry(key: str, version: int) -> DictEntryRecord:
    return DictEntryRecord(key, f"v{version}".encode(), "json", version, version, 1, "")


def test_a_record_round_trips_and_folds_to_the_final_state() -> None:
    first = LogRecord(3, {"a": _entry("a", 1), "b": _entry("b", 1)}, 2, [("r2", 2, {"put": [1, 2]}, 10.0)], ["old"])
    second = LogRecord(5, {"a": _entry("a", 2), "b": None}, 4, [("r4", 4, {"put": [2, 3]}, 11.0)], [2])
    for rec in (first, second):
        assert LogRecord.decode(rec.lsn, rec.encode()) == rec
    folded = fold([first, second], lambda rid, row_key: True)
    assert folded.puts == [_entry("a", 2)] and folded.deletes == ["b"]
    # Row 2 was created and evicted within the fold: never written; "old" was stored. The
    # ids left go to one row, keyed so that no write set's row is.
    assert folded.merged == (-5, [("r4", 4, {"put": [2, 3]}, 11.0)])
    assert folded.gone_rows == ["old"] and folded.lsns == [3, 5]
    assert fold([first, second], lambda rid, row_key: rid != "r4").merged is None
    stored = [("r0", {"put": [1, 1]}, 1.0, "old"), ("r1", {"put": [1, 1]}, 2.0, 1)]
    assert [r[0] for r in replay_requests(stored, [first, second])] == ["r1", "r4"]


async def _same_as_a_fresh_load(store: Store, dicts: DictManager, name: str) -> None:
    """A control plane that loads the dict now sees what ``dicts`` has in memory."""
    mine = dicts._live[(ACCOUNT, name)]
    fresh = DictManager(store)
    record, _ = await fresh.info(ACCOUNT, name)
    theirs = fresh._live[(ACCOUNT, name)]
    assert record.rev == mine.record.rev and record.writes == mine.record.writes
    assert theirs.entries == mine.entries
    assert list(theirs.requests) == list(mine.requests)
    for rid in mine.requests:
        assert theirs.requests.get(rid) == mine.requests.get(rid)


async def _log_rows(store: Store) -> int:
    return len(await store._q("SELECT lsn FROM dict_oplog"))


async def test_loads_agree_before_and_after_each_fold(store: Store) -> None:
    dicts = DictManager(store)
    await dicts.create(ACCOUNT, "d", exist_ok=False)
    for i in range(6):
        await dicts.put(ACCOUNT, "d", f"k{i % 3}", str(i).encode(), "json", request_id=f"p{i}")
    await dicts.delete(ACCOUNT, "d", "k1", request_id="del")
    await dicts.txn(ACCOUNT, "d", [], [], [], request_id="noop")  # writes only its request id
    assert await _log_rows(store) == 8
    await _same_as_a_fresh_load(store, dicts, "d")
    assert await dicts.fold() == 1
    assert await _log_rows(store) == 0 and not dicts._live[(ACCOUNT, "d")].log
    await _same_as_a_fresh_load(store, dicts, "d")
    # Retried after the fold and a reload, a request id answers what it answered, once.
    fresh = DictManager(store)
    again = await fresh.put(ACCOUNT, "d", "k2", b"other", "json", request_id="p5")
    assert again == await dicts.put(ACCOUNT, "d", "k2", b"other", "json", request_id="p5")
    assert (await fresh.get(ACCOUNT, "d", "k2"))[0] == _entry_at(dicts, "d", "k2")
    # More writes on top of the folded rows: half the log folded, then all of it.
    for i in range(4):
        await dicts.put(ACCOUNT, "d", "k1", str(i).encode(), "json", request_id=f"q{i}")
    live = dicts._live[(ACCOUNT, "d")]
    live.folding = True  # as fold() marks it
    await dicts._fold(live, live.log[:2])
    assert await _log_rows(store) == 2
    await _same_as_a_fresh_load(store, dicts, "d")
    await dicts.fold()
    await _same_as_a_fresh_load(store, dicts, "d")


def _entry_at(dicts: DictManager, name: str, key: str) -> Any:
    return dicts._live[(ACCOUNT, name)].entries.get(key)


async def test_folds_racing_writes_lose_nothing(store: Store) -> None:
    dicts = DictManager(store)
    await dicts.create(ACCOUNT, "d", exist_ok=False)
    live = dicts._live[(ACCOUNT, "d")]
    stop = False

    async def writer(c: int) -> None:
        for i in range(60):
            entry, _ = await dicts.get(ACCOUNT, "d", f"k{c}")
            await dicts.put(
                ACCOUNT, "d", f"k{c}", str(i).encode(), "json", if_version=entry.version if entry else 0,
                request_id=f"w{c}-{i}",
            )  # fmt: skip

    async def folder() -> None:
        while not stop:
            await dicts.fold()
            await asyncio.sleep(0)

    folding = asyncio.ensure_future(folder())
    await asyncio.gather(*(writer(c) for c in range(8)))
    stop = True
    await folding
    assert dicts._live.get((ACCOUNT, "d")) is live and not live.broken  # no fold ever conflicted
    assert {k: e.version for k, e in live.entries.items()} == {f"k{c}": 60 for c in range(8)}
    await _same_as_a_fresh_load(store, dicts, "d")
    while live.log:
        await dicts.fold()
    assert await _log_rows(store) == 0
    await _same_as_a_fresh_load(store, dicts, "d")


async def test_a_stale_replica_never_folds(store: Store) -> None:
    mine, theirs = DictManager(store), DictManager(store)
    await mine.create(ACCOUNT, "d", exist_ok=False)
    await mine.put(ACCOUNT, "d", "a", b"1", "json")
    await theirs.get(ACCOUNT, "d", "a")  # loaded by the other replica too
    await theirs.put(ACCOUNT, "d", "a", b"2", "json")
    await theirs.put(ACCOUNT, "d", "b", b"2", "json")
    # Mine has not seen theirs: its fold would write "a" as of its own copy.
    assert await mine.fold() == 1
    assert (ACCOUNT, "d") not in mine._live  # it learned its copy is stale: reloaded on next use
    assert await _log_rows(store) == 3
    assert (await mine.get(ACCOUNT, "d", "a"))[0] == (await theirs.get(ACCOUNT, "d", "a"))[0]
    await theirs.fold()
    fresh = DictManager(store)
    assert (await fresh.get(ACCOUNT, "d", "a"))[0].value == b"2"  # type: ignore[union-attr]
    assert (await fresh.info(ACCOUNT, "d"))[1] == 2


async def test_forgotten_request_ids_stay_forgotten_across_folds_and_loads(store: Store) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    dicts = DictManager(store, clock=lambda: now[0])
    await dicts.create(ACCOUNT, "d", exist_ok=False)
    for i in range(700):
        await dicts.put(ACCOUNT, "d", f"k{i % 5}", b"1", "json", request_id=f"a{i}")
        if i == 350:
            await dicts.fold()  # some rows folded, some not, when they are forgotten
    now[0] += timedelta(hours=1)
    for i in range(700):
        await dicts.put(ACCOUNT, "d", f"k{i % 5}", b"2", "json", request_id=f"b{i}")
    live = dicts._live[(ACCOUNT, "d")]
    assert "a0" not in live.requests and "b0" in live.requests  # old ids were forgotten
    await _same_as_a_fresh_load(store, dicts, "d")
    await dicts.fold()
    await dicts.fold()
    await _same_as_a_fresh_load(store, dicts, "d")
    stored = await store._q("SELECT VALUE request_id FROM dict_request")
    assert len(stored) <= len({live.request_rows[r] for r in live.requests})


async def test_the_log_survives_a_restart_on_disk(tmp_path: Path) -> None:
    url = f"surrealkv://{tmp_path / 'db'}"
    store = Store(url)
    await store.open()
    dicts = DictManager(store)
    await dicts.create(ACCOUNT, "d", exist_ok=False)
    for i in range(10):
        await dicts.put(ACCOUNT, "d", f"k{i % 4}", str(i).encode(), "json", request_id=f"r{i}")
        if i == 4:
            await dicts.fold()
    expected = dict(dicts._live[(ACCOUNT, "d")].entries)
    await store.close()
    store = Store(url)
    await store.open()
    try:
        again = DictManager(store)
        await again.info(ACCOUNT, "d")
        assert again._live[(ACCOUNT, "d")].entries == expected
        # A remembered id answers what it answered (its condition is not evaluated again).
        outcome = await again.put(ACCOUNT, "d", "k1", b"x", "json", if_version=1, request_id="r9")
        assert outcome.version == 3 and again._live[(ACCOUNT, "d")].entries == expected
        # The log rows it loaded fold like its own.
        assert await _log_rows(store) == 5
        await again.fold()
        assert await _log_rows(store) == 0
        await _same_as_a_fresh_load(store, again, "d")
    finally:
        await store.close()
