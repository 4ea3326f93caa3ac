"""QueueManager's write sets on a real ``mem://`` Store: concurrent mutations of one queue
share a transaction (one log row), each item is recorded once in its latest state, the
request ids of many sets share one stored row once folded, and all of it reads back the same
after a reload (a restart)."""

from __future__ import annotations

import asyncio
from typing import Any

from apothic.server.queues import QueueManager
from apothic.server.request_ids import RecentRequests
from apothic.server.store import Store

ACCOUNT = "accounts:sets"


def _count_flushes(store: Store) -> list[int]:
    committer = store._committer
    assert committer is not None
    flush = committer._flush
    flushes: list[int] = []

    async def counting(batch: Any) -> None:
        flushes.append(len(batch))
        await flush(batch)

    committer._flush = counting  # type: ignore[method-assign]
    return flushes


async def _cycle(manager: QueueManager, client: int, rounds: int, taken: list[bytes]) -> None:
    for i in range(rounds):
        await manager.put(ACCOUNT, "q", "", [("json", f"{client}-{i}".encode())], request_id=f"put-{client}-{i}")
        items, _ = await manager.take(ACCOUNT, "q", "", 1, lease_s=30, wait_s=5, request_id=f"claim-{client}-{i}")
        assert len(items) == 1
        taken.append(items[0].data)
        await manager.ack(ACCOUNT, "q", [items[0].receipt], request_id=f"ack-{client}-{i}")


async def test_concurrent_cycles_share_transactions_and_reload_the_same(store: Store) -> None:
    manager = QueueManager(store)
    await manager.load()
    await manager.create(ACCOUNT, "q", None)
    flushes = _count_flushes(store)
    taken: list[bytes] = []
    await asyncio.gather(*(_cycle(manager, c, 10, taken) for c in range(8)))
    # Every item was delivered once; 240 mutations took far fewer transactions.
    assert sorted(taken) == sorted(f"{c}-{i}".encode() for c in range(8) for i in range(10))
    assert len(flushes) < 240 / 2
    # Some items left over, one leased, then a reload: the same queue.
    await manager.put(ACCOUNT, "q", "", [("json", b"left"), ("json", b"over")], request_id="last-put")
    claimed, _ = await manager.take(ACCOUNT, "q", "", 1, lease_s=30, wait_s=0, request_id="last-claim")
    before = await manager.get(ACCOUNT, "q")
    assert before.rev == 1 + 240 + 2 and before.length == 2

    original = {rid: _rev_of(manager, rid) for rid in ("put-3-7", "ack-0-0", "claim-5-2")}

    reloaded = QueueManager(store)
    await reloaded.load()
    after = await reloaded.get(ACCOUNT, "q")
    assert (after.rev, after.length) == (before.rev, before.length)
    # Request ids recorded several to a row come back: retries answer, nothing is applied.
    assert await reloaded.put(ACCOUNT, "q", "", [("json", b"x")], request_id="put-3-7") == original["put-3-7"]
    assert await reloaded.ack(ACCOUNT, "q", ["1.1"], request_id="ack-0-0") == original["ack-0-0"]
    gone, rev = await reloaded.take(ACCOUNT, "q", "", 1, lease_s=30, wait_s=0, request_id="claim-5-2")
    assert gone == [] and rev == original["claim-5-2"]  # acked since: no longer held
    again, rev = await reloaded.take(ACCOUNT, "q", "", 1, lease_s=30, wait_s=0, request_id="last-claim")
    assert [i.receipt for i in again] == [claimed[0].receipt] and rev == before.rev
    assert (await reloaded.get(ACCOUNT, "q")).rev == before.rev  # nothing applied twice
    rest, _ = await reloaded.take(ACCOUNT, "q", "", 5, lease_s=30, wait_s=0)
    assert [i.data for i in rest] == [b"over"]


def _rev_of(manager: QueueManager, request_id: str) -> int:
    q = manager._queues[(ACCOUNT, "q")]
    record = q.requests.get(request_id)
    assert record is not None
    return int(record.result["rev"])


async def test_a_shared_request_row_goes_once_none_of_its_ids_is_remembered(store: Store) -> None:
    manager = QueueManager(store)
    await manager.load()
    await manager.create(ACCOUNT, "q", None)
    q = manager._queues[(ACCOUNT, "q")]
    q.requests = RecentRequests(keep=6, ttl_s=0.0, forget_every=4)
    for burst in range(6):
        await asyncio.gather(
            *(manager.put(ACCOUNT, "q", "", [("json", b"x")], request_id=f"r{burst}-{i}") for i in range(5))
        )
        if burst % 2:
            await manager.compact()  # folds the log rows' request ids into one row
    # Before a fold the last ids live in log rows only; a reload remembers them too.
    reloaded = QueueManager(store)
    await reloaded.load()
    assert set(q.requests) <= set(reloaded._queues[(ACCOUNT, "q")].requests)
    await manager.compact()
    remembered = set(q.requests)
    assert 6 <= len(remembered) < 30
    # Every stored row still records an id memory remembers, and a reload remembers at
    # least what memory does.
    _, _, rows = await store.queue_rows()
    assert rows
    for row in rows:
        ids = [r[0] for r in store.queue_request_entries(row)[1]]
        assert remembered & set(ids), row
    reloaded = QueueManager(store)
    await reloaded.load()
    assert remembered <= set(reloaded._queues[(ACCOUNT, "q")].requests)
