"""The QueueManager's watches, maxsize and ephemeral queues on a real embedded SurrealDB
(``mem://``) with an injected clock: what only the server side can show (a slow reader, a
commit that fails, a heartbeat that lapses, a restart in between)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from apothic.server.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from apothic.server.queue_log import CLAIMED, DEAD_LETTERED, PUT, REDRIVEN, QueueEvent
from apothic.server.queue_oplog import LogEntry
from apothic.server.queue_state import EPHEMERAL_LEASE_S
from apothic.server.queues import QueueManager
from apothic.server.store import Store
from apothic.server.watch import Change, Progress, Reset, SnapshotChunk, SnapshotEnd, WatchSettings

ACCOUNT = "accounts:watch"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _manager(store: Store, clock: Clock, retention: int = 1000) -> QueueManager:
    return QueueManager(store, now=clock, watch=WatchSettings(retention=retention, progress_s=0.05))


@pytest.fixture
async def manager(store: Store, clock: Clock) -> AsyncIterator[QueueManager]:
    manager = _manager(store, clock)
    await manager.load()
    yield manager
    await manager.close()


def _payloads(*values: int) -> list[tuple[str, bytes]]:
    return [("json", str(v).encode()) for v in values]


async def _next(stream: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(anext(stream), 5)


def _kinds(change: Change[QueueEvent]) -> list[str]:
    return [ev.kind for ev in change.events]


def _changes(items: list[Any]) -> Iterator[Change[QueueEvent]]:
    return (i for i in items if isinstance(i, Change))


async def test_every_committed_mutation_is_one_change_in_commit_order(manager: QueueManager, clock: Clock) -> None:
    await manager.create(ACCOUNT, "q", 2)
    stream = manager.watch(ACCOUNT, "q", snapshot=True, after_rev=None, partition=None)
    assert await _next(stream) == SnapshotEnd(1)
    # Concurrent mutations share transactions; each still shows once, at its own rev.
    revs = await asyncio.gather(*(manager.put(ACCOUNT, "q", "", _payloads(i)) for i in range(20)))
    seen = [await _next(stream) for _ in range(20)]
    assert [c.rev for c in seen] == sorted(revs) == list(range(2, 22))
    assert [c.events[0].data for c in seen] == [str(i).encode() for i in range(20)]
    (claim,), rev = await manager.take(ACCOUNT, "q", "", 1, lease_s=1.0, wait_s=0)
    change = await _next(stream)
    assert change.rev == rev and _kinds(change) == [CLAIMED] and change.events[0].attempt == 1
    # An expired lease is no change; the claim after it is (attempt 2), and the release
    # after the second attempt dead-letters the item: one event, with the DLQ's seq.
    clock.t += 2
    (again,), rev = await manager.take(ACCOUNT, "q", "", 1, lease_s=5.0, wait_s=0)
    assert again.seq == claim.seq and again.attempt == 2
    assert (await _next(stream)).rev == rev
    dead, rev = await manager.release(ACCOUNT, "q", again.receipt, error="boom")
    change = await _next(stream)
    assert dead and change.rev == rev and _kinds(change) == [DEAD_LETTERED]
    assert change.events[0].moved_to_seq == 1 and change.events[0].last_error == "boom"
    dlq = manager.watch(ACCOUNT, "q.dlq", snapshot=True, after_rev=None, partition=None)
    chunk = await _next(dlq)
    assert isinstance(chunk, SnapshotChunk) and [e.data for e in chunk.entries] == [b"0"]
    assert isinstance(await _next(dlq), SnapshotEnd)
    moved, rev = await manager.redrive(ACCOUNT, "q")
    assert moved == 1
    change = await _next(stream)
    assert change.rev == rev and _kinds(change) == [PUT] and change.events[0].last_error == "boom"
    change = await _next(dlq)
    assert _kinds(change) == [REDRIVEN] and change.events[0].moved_to_seq == 21
    await manager.delete(ACCOUNT, "q")
    with pytest.raises(NotFound, match="deleted"):
        await _next(stream)
    with pytest.raises(NotFound, match="deleted"):
        await _next(dlq)


async def test_a_slow_reader_gets_a_reset_then_a_fresh_snapshot(store: Store, clock: Clock) -> None:
    manager = _manager(store, clock, retention=4)
    await manager.load()
    await manager.create(ACCOUNT, "q", None)
    await manager.put(ACCOUNT, "q", "", _payloads(0))
    stream = manager.watch(ACCOUNT, "q", snapshot=True, after_rev=None, partition=None)
    assert isinstance(await _next(stream), SnapshotChunk)
    assert await _next(stream) == SnapshotEnd(2)
    for i in range(1, 11):  # the reader reads nothing meanwhile
        await manager.put(ACCOUNT, "q", "", _payloads(i))
    reset = await _next(stream)
    assert isinstance(reset, Reset) and reset.after_rev == 2 and reset.oldest_rev == 9 and reset.rev == 12
    chunk = await _next(stream)
    assert isinstance(chunk, SnapshotChunk) and chunk.rev == 12 and len(chunk.entries) == 11
    assert await _next(stream) == SnapshotEnd(12)
    assert await _next(stream) == Progress(12)
    # Resuming from a rev no longer retained is a reset too; within the window it is not.
    old = manager.watch(ACCOUNT, "q", snapshot=False, after_rev=3, partition=None)
    assert isinstance(await _next(old), Reset)
    recent = manager.watch(ACCOUNT, "q", snapshot=False, after_rev=10, partition=None)
    assert [(await _next(recent)).rev for _ in range(2)] == [11, 12]
    with pytest.raises(InvalidArgument, match="current rev is 12"):
        await _next(manager.watch(ACCOUNT, "q", snapshot=False, after_rev=13, partition=None))
    await manager.close()


async def test_a_partition_watch_sees_only_its_partition(manager: QueueManager) -> None:
    await manager.create(ACCOUNT, "q", None)
    await manager.put(ACCOUNT, "q", "a", _payloads(1))
    await manager.put(ACCOUNT, "q", "b", _payloads(2))
    stream = manager.watch(ACCOUNT, "q", snapshot=True, after_rev=None, partition="b")
    chunk = await _next(stream)
    assert [(e.partition, e.data) for e in chunk.entries] == [("b", b"2")]
    assert await _next(stream) == SnapshotEnd(3)
    await manager.put(ACCOUNT, "q", "a", _payloads(3))
    rev = await manager.put(ACCOUNT, "q", "b", _payloads(4))
    change = await _next(stream)
    assert change.rev == rev and [e.data for e in change.events] == [b"4"]


async def test_a_failed_commit_is_never_published(manager: QueueManager, store: Store) -> None:
    await manager.create(ACCOUNT, "q", None)
    rev = await manager.put(ACCOUNT, "q", "", _payloads(1))
    stream = manager.watch(ACCOUNT, "q", snapshot=False, after_rev=rev, partition=None)
    # Another writer (a second replica, say) appended the log row the next write set
    # appends (the queue's second, lsn 2): that put's transaction fails on it after memory
    # already changed.
    theirs = LogEntry(2, rev, 2, [], [("other", 1, {"op": "put", "rev": rev}, 0.0)]).encode()
    await store.commit([store.queue_log_statement([store.queue_log_row(ACCOUNT, "q", 2, theirs)])])
    with pytest.raises(Unavailable, match="did not commit"):
        await manager.put(ACCOUNT, "q", "", _payloads(2), request_id="taken")
    # The queue was reloaded from the store; the next put commits and is the next change (the
    # watch starts on its first read, after the reload: it has nothing to reset).
    rev = await manager.put(ACCOUNT, "q", "", _payloads(3))
    change = await _next(stream)
    assert change.rev == rev == 3 and [e.data for e in change.events] == [b"3"]
    assert await _next(stream) == Progress(3)
    fresh = manager.watch(ACCOUNT, "q", snapshot=True, after_rev=None, partition=None)
    assert [e.data for e in (await _next(fresh)).entries] == [b"1", b"3"]


async def test_maxsize_blocks_fails_and_is_all_or_nothing(manager: QueueManager, clock: Clock) -> None:
    await manager.create(ACCOUNT, "q", 1, maxsize=2)
    with pytest.raises(FailedPrecondition, match="maxsize=2"):
        await manager.create(ACCOUNT, "q", None, maxsize=3)
    with pytest.raises(InvalidArgument, match="dead-letter"):
        await manager.create(ACCOUNT, "x.dlq", None, maxsize=3)
    await manager.put(ACCOUNT, "q", "", _payloads(1))
    with pytest.raises(ResourceExhausted, match=r"queue 'q' partition '' is full.*maxsize=2"):
        await manager.put(ACCOUNT, "q", "", _payloads(2, 3))
    assert (await manager.length(ACCOUNT, "q", None))[0] == 1, "all or nothing"
    with pytest.raises(InvalidArgument, match="never fits"):
        await manager.put(ACCOUNT, "q", "", _payloads(1, 2, 3))
    await manager.put(ACCOUNT, "q", "other", _payloads(7, 8))  # each partition has its own room
    await manager.put(ACCOUNT, "q", "", _payloads(2))
    (claim,), _ = await manager.take(ACCOUNT, "q", "", 1, lease_s=1.0, wait_s=0)
    with pytest.raises(ResourceExhausted):
        await manager.put(ACCOUNT, "q", "", _payloads(3))  # a leased item still counts
    waiting = asyncio.ensure_future(manager.put(ACCOUNT, "q", "", _payloads(3), wait_s=5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # The lease runs out on the last attempt: the item moves to the DLQ (which never has a
    # maxsize), and that frees the room the waiting put needs.
    clock.t += 2
    await manager.expire()
    await asyncio.wait_for(waiting, 5)
    assert (await manager.length(ACCOUNT, "q.dlq", None))[0] == 1
    assert (await manager.get(ACCOUNT, "q.dlq")).maxsize == 0
    assert [int(t.data) for t in (await manager.take(ACCOUNT, "q", "", 5, lease_s=None, wait_s=0))[0]] == [2, 3]
    assert claim.seq == 1


async def test_ephemeral_queues_expire_without_heartbeats_across_a_restart(
    manager: QueueManager, store: Store, clock: Clock
) -> None:
    view, created = await manager.create(ACCOUNT, "", None, ephemeral=True)
    assert created and view.ephemeral and view.name.startswith("ephemeral-")
    name = view.name
    with pytest.raises(FailedPrecondition, match="must be new"):
        await manager.create(ACCOUNT, name, None, ephemeral=True)
    await manager.create(ACCOUNT, "durable", None)
    with pytest.raises(FailedPrecondition, match="not ephemeral"):
        await manager.heartbeat(ACCOUNT, "durable")
    clock.t += EPHEMERAL_LEASE_S - 5
    assert await manager.heartbeat(ACCOUNT, name) == EPHEMERAL_LEASE_S
    await manager.put(ACCOUNT, name, "", _payloads(1))
    clock.t += EPHEMERAL_LEASE_S - 5
    await manager.expire()
    assert (await manager.get(ACCOUNT, name)).length == 1, "the heartbeat kept it"
    # A restart keeps the expiry: the new manager deletes it once it passed.
    await manager.close()
    second = _manager(store, clock)
    await second.load()
    assert (await second.get(ACCOUNT, name)).ephemeral
    stream = second.watch(ACCOUNT, name, snapshot=False, after_rev=None, partition=None)
    clock.t += 10
    await second.expire()
    with pytest.raises(NotFound):
        await second.get(ACCOUNT, name)
    with pytest.raises(NotFound):
        await _next(stream)
    await second.get(ACCOUNT, "durable")
    await second.close()
    third = _manager(store, clock)
    await third.load()
    with pytest.raises(NotFound):
        await third.get(ACCOUNT, name)
    await third.close()
