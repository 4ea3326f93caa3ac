"""Queues' log-structured persistence (apothic.server.queue_oplog) on a real SurrealDB: each
write set is one appended log row; a load replays the log rows left over the folded rows;
a compaction folds them in one transaction (all or nothing), also while new writes land."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from apothic.server import queue_engine, queue_oplog
from apothic.server.queue_oplog import Compaction
from apothic.server.queues import QueueManager
from apothic.server.store import Store

ACCOUNT = "accounts:oplog"
NOW = 1_000_000.0


def _manager(store: Store, **kwargs: Any) -> QueueManager:
    # A clock that stands still: no lease runs out while the test compares states.
    return QueueManager(store, now=lambda: NOW, **kwargs)


def _state(manager: QueueManager, name: str = "q") -> tuple[Any, ...]:
    """Everything a queue's memory holds that the store must give back."""
    q = manager._queues[(ACCOUNT, name)]
    items = sorted(
        (
            i.seq,
            i.partition,
            i.format,
            i.data,
            i.attempt,
            i.epoch,
            i.leased,
            round(i.lease_deadline, 3),
            round(i.visible_at, 3),
            i.last_error,
            round(i.enqueued_at, 3),
        )
        for i in q.items.values()
    )
    requests = {rid: q.requests.get(rid).result for rid in q.requests}  # type: ignore[union-attr]
    return q.rev, q.next_seq, items, requests


async def _rows(store: Store, table: str) -> list[dict[str, Any]]:
    return list(await store._q(f"SELECT * FROM {table}"))


async def _workload(manager: QueueManager, tag: str) -> None:
    """Puts, claims, acks, renews, releases (one to the DLQ), a clear of a partition and
    a redrive, with request ids, some of them concurrent."""
    await asyncio.gather(
        *(
            manager.put(ACCOUNT, "q", "" if i % 3 else "p", [("json", f"{tag}{i}".encode())], request_id=f"{tag}p{i}")
            for i in range(12)
        )
    )
    claimed, _ = await manager.take(ACCOUNT, "q", "", 5, lease_s=600, wait_s=0, request_id=f"{tag}c")
    await manager.ack(ACCOUNT, "q", [claimed[0].receipt, claimed[1].receipt], request_id=f"{tag}a")
    await manager.renew(ACCOUNT, "q", claimed[2].receipt, 900, request_id=f"{tag}r")
    await manager.release(ACCOUNT, "q", claimed[3].receipt, 30, "try later", request_id=f"{tag}l")
    await manager.release(ACCOUNT, "q", claimed[4].receipt, 0, "again", request_id=f"{tag}l2")
    (poison,), _ = await manager.take(ACCOUNT, "q", "", 1, lease_s=600, wait_s=0, request_id=f"{tag}c2")
    assert poison.seq == claimed[4].seq and poison.attempt == 2
    dead, _ = await manager.release(ACCOUNT, "q", poison.receipt, 0, "poison", request_id=f"{tag}d")
    assert dead  # max_attempts=2: to the dead-letter queue
    got, _ = await manager.take(ACCOUNT, "q", "p", 1, lease_s=None, wait_s=0, request_id=f"{tag}g")
    assert len(got) == 1
    await manager.clear(ACCOUNT, "q", "p", request_id=f"{tag}x")
    await manager.put(ACCOUNT, "q", "p", [("json", b"after-clear")], request_id=f"{tag}p-late")


async def test_a_restart_replays_log_rows_not_folded_yet(store: Store) -> None:
    manager = _manager(store)  # never started: no compactor runs
    await manager.load()
    await manager.create(ACCOUNT, "q", 2)
    await _workload(manager, "a")
    await manager.redrive(ACCOUNT, "q", request_id="redrive")
    before = _state(manager)
    dlq_before = _state(manager, "q.dlq")
    # Nothing folded: the items live only in log rows (one per write set, not per operation).
    assert await _rows(store, "queue_item") == []
    log_rows = await _rows(store, "queue_oplog")
    assert 0 < len(log_rows) < 30

    restarted = _manager(store)
    await restarted.load()
    assert _state(restarted) == before
    assert _state(restarted, "q.dlq") == dlq_before
    # Request ids replayed from the log are applied once.
    rev = before[0]
    assert await restarted.put(ACCOUNT, "q", "", [("json", b"again")], request_id="ap3") < rev
    assert _state(restarted)[0] == rev
    # The restarted manager folds them; the next restart reads the folded rows alone.
    assert await restarted.compact() == 2
    assert await _rows(store, "queue_oplog") == []
    assert len(await _rows(store, "queue_item")) == len(before[2]) + len(dlq_before[2])
    again = _manager(store)
    await again.load()
    assert _state(again) == before and _state(again, "q.dlq") == dlq_before
    # New writes continue the rev and the item seqs.
    assert await again.put(ACCOUNT, "q", "", [("json", b"next")]) == rev + 1
    assert max(i.seq for i in again._queues[(ACCOUNT, "q")].items.values()) == before[1]


async def test_a_fold_that_fails_midway_leaves_the_log_rows_and_nothing_of_the_fold(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = _manager(store)
    await manager.load()
    await manager.create(ACCOUNT, "q", 2)
    await _workload(manager, "a")
    await manager.compact()
    await _workload(manager, "b")
    before = _state(manager)
    items, logs, queue = [await _rows(store, t) for t in ("queue_item", "queue_oplog", "queue")]
    assert logs

    # The fold's transaction fails after its writes ran (a crash before its commit, say).
    plan = queue_engine.compaction

    def failing(store_: Store, q: Any) -> Compaction | None:
        found = plan(store_, q)
        if found is not None:
            found.statements.append(("THROW 'crashed before the commit'", {}))
        return found

    monkeypatch.setattr(queue_engine, "compaction", failing)
    await manager.compact()
    assert await _rows(store, "queue_item") == items
    assert await _rows(store, "queue_oplog") == logs
    assert await _rows(store, "queue") == queue
    restarted = _manager(store)
    await restarted.load()
    assert _state(restarted) == before

    # The next fold (the same log rows) succeeds; writes went on meanwhile.
    monkeypatch.setattr(queue_engine, "compaction", plan)
    await manager.put(ACCOUNT, "q", "", [("json", b"meanwhile")], request_id="meanwhile")
    await manager.compact()
    assert await _rows(store, "queue_oplog") == []
    after = _manager(store)
    await after.load()
    assert _state(after) == _state(manager)


CHILD = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from apothic.server.queues import QueueManager
    from apothic.server.store import Store
    from tests.server.test_queue_oplog import ACCOUNT, NOW, _state, _workload

    async def main(url):
        store = Store(url)
        await store.open()
        manager = QueueManager(store, now=lambda: NOW)
        await manager.load()
        await manager.create(ACCOUNT, "q", 2)
        await _workload(manager, "a")
        await manager.compact()
        await _workload(manager, "b")  # acknowledged, in log rows only
        rev, next_seq, items, requests = _state(manager)
        out = {"rev": rev, "next_seq": next_seq, "items": [[*i[:3], i[3].decode(), *i[4:]] for i in items],
               "requests": requests}
        sys.stdout.write(json.dumps(out) + "\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no fold, no flush

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_kill_between_log_append_and_fold_loses_nothing(tmp_path: Path) -> None:
    url = f"surrealkv://{tmp_path / 'db'}"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, url],
        capture_output=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    expected = json.loads(child.stdout.decode().strip().splitlines()[-1])
    store = Store(url)
    await store.open()
    try:
        assert await _rows(store, "queue_oplog"), "the last write sets were not folded"
        manager = _manager(store)
        await manager.load()
        rev, next_seq, items, requests = _state(manager)
        assert rev == expected["rev"] and next_seq == expected["next_seq"]
        assert [[*i[:3], i[3].decode(), *i[4:]] for i in items] == expected["items"]
        assert json.loads(json.dumps(requests)) == expected["requests"]
    finally:
        await store.close()


async def _cycles(manager: QueueManager, client: int, rounds: int, taken: list[bytes]) -> None:
    for i in range(rounds):
        await manager.put(ACCOUNT, "q", "", [("json", f"{client}-{i}".encode())], request_id=f"put-{client}-{i}")
        items, _ = await manager.take(ACCOUNT, "q", "", 1, lease_s=600, wait_s=5, request_id=f"claim-{client}-{i}")
        assert len(items) == 1
        if i % 5 == 4:  # now and then given back, claimed again later
            await manager.release(ACCOUNT, "q", items[0].receipt, 0, request_id=f"release-{client}-{i}")
            continue
        taken.append(items[0].data)
        await manager.ack(ACCOUNT, "q", [items[0].receipt], request_id=f"ack-{client}-{i}")


async def test_compaction_racing_new_writes_keeps_the_state(store: Store) -> None:
    manager = _manager(store, compact_interval_s=0.001)
    await manager.load()
    manager.start()  # the compactor folds every millisecond while the writes go on
    try:
        await manager.create(ACCOUNT, "q", None)
        taken: list[bytes] = []

        async def fold_too() -> None:  # and folds asked for besides, racing it
            for _ in range(200):
                await manager.compact()
                await asyncio.sleep(0)

        await asyncio.gather(*(_cycles(manager, c, 25, taken) for c in range(8)), fold_too())
        q = manager._queues[(ACCOUNT, "q")]
        assert q.folded_lsn > 20 and q.folded_lsn < q.next_lsn
        # A restart at this point (log rows and folded rows both) sees memory's state.
        await store.drain()
        restarted = _manager(store)
        await restarted.load()
        assert _state(restarted) == _state(manager)
        put = {f"{c}-{i}".encode() for c in range(8) for i in range(25)}
        left = {i.data for i in manager._queues[(ACCOUNT, "q")].items.values()}
        assert sorted(taken) == sorted(put - left) and len(taken) == len(set(taken))
    finally:
        await manager.close()
    await manager.compact()
    assert await _rows(store, "queue_oplog") == []
    folded = _manager(store)
    await folded.load()
    assert _state(folded) == _state(manager)


async def test_a_backlog_is_folded_a_bounded_slice_at_a_time(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_oplog, "MAX_FOLD", 3)
    manager = _manager(store)
    await manager.load()
    await manager.create(ACCOUNT, "q", 2)
    await _workload(manager, "a")
    q = manager._queues[(ACCOUNT, "q")]
    backlog = len(q.log_entries)
    assert backlog > 6
    while q.log_entries:
        await manager.compact()
        backlog, before = len(q.log_entries), backlog
        assert backlog == max(0, before - 3)
        restarted = _manager(store)
        await restarted.load()  # each slice leaves the store whole: folded rows + the rest of the log
        assert _state(restarted) == _state(manager)
    assert await _rows(store, "queue_oplog") == []
