"""``Queue.watch`` against the real runtime: snapshot then live changes, resume, reset,
progress, and the end of a deleted queue; plus ephemeral queues swept by the server."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import apothic
from apothic.exceptions import InvalidArgumentError, NotFoundError
from apothic.queue import QueueChange, QueueItemState
from apothic.runtime import LocalRuntime
from apothic.server.queue_state import EPHEMERAL_LEASE_S
from apothic.server.watch import WatchSettings
from apothic.testing import unique_name, wait_for
from apothic.watch import Progress, Reset, SnapshotEnd

RETENTION = 8


@pytest.fixture(scope="module")
def small_runtime() -> Iterator[LocalRuntime]:
    """A control plane whose watches retain few changes and report progress quickly."""
    runtime = LocalRuntime(workers=0, watch=WatchSettings(retention=RETENTION, progress_s=0.2)).start()
    try:
        yield runtime
    finally:
        runtime.stop()


def _queue(runtime: LocalRuntime, **kwargs: Any) -> apothic.Queue:
    return apothic.Queue.from_name(unique_name("wq"), client=runtime.config, **kwargs)


@contextlib.contextmanager
def watching(q: apothic.Queue, **kwargs: Any) -> Iterator[Any]:
    """``q.watch(...)``, closed when the block ends rather than left to the garbage
    collector."""
    stream = q.watch(**kwargs)
    try:
        yield stream
    finally:
        stream.close()  # type: ignore[attr-defined]


def _snapshot(stream: Iterator[Any]) -> tuple[list[QueueItemState], int]:
    items = []
    for item in stream:
        if isinstance(item, SnapshotEnd):
            return items, item.rev
        assert isinstance(item, QueueItemState), item
        items.append(item)
    raise AssertionError("the stream ended inside its snapshot")


def _changes_until(stream: Iterator[Any], rev: int) -> list[QueueChange]:
    changes = []
    for item in stream:
        if isinstance(item, QueueChange):
            changes.append(item)
            if item.rev >= rev:
                return changes
        else:
            assert isinstance(item, Progress), item
    raise AssertionError("the stream ended early")


def _state(items: list[QueueItemState]) -> dict[int, tuple[str, Any, int, str]]:
    return {i.seq: (i.partition, i.value, i.attempt, i.state) for i in items}


def _fold(state: dict[int, tuple[str, Any, int, str]], change: QueueChange) -> None:
    for ev in change.events:
        if ev.kind == "put":
            state[ev.seq] = (ev.partition, ev.value, ev.attempt, "visible")
        elif ev.kind in ("acked", "removed", "dead_lettered", "redriven"):
            del state[ev.seq]
        else:
            partition, value, attempt, _ = state[ev.seq]
            if ev.kind in ("claimed", "renewed"):
                state[ev.seq] = (partition, value, ev.attempt, "leased")
            elif ev.kind == "released":
                state[ev.seq] = (partition, value, attempt, "delayed" if ev.delay_s else "visible")


def test_snapshot_then_live_changes_rebuild_the_queue_and_resume(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime, max_attempts=2)
    q.put_many(["a", "b"])
    q.put({"c": 1}, partition="p")
    stream = q.watch(snapshot=True)
    items, snap_rev = _snapshot(stream)
    assert [(i.value, i.partition, i.state) for i in items] == [
        ("a", "", "visible"),
        ("b", "", "visible"),
        ({"c": 1}, "p", "visible"),
    ]
    assert snap_rev == q.info().rev

    # One of each kind of change, from the blocking API (the stream runs ahead meanwhile).
    first, second = q.claim(2, lease_s=60)
    q.ack(first)
    q.release(second, 30, error="later")  # delayed
    (pc,) = q.claim(partition="p", lease_s=60)
    q.renew(pc, 120)
    q.put_many([1, 2, 3], partition="x")
    mid_rev = q.info().rev
    assert q.get(partition="x") == 1
    assert q.clear(partition="x") == 2
    q.put("poison")
    for attempt in (1, 2):
        (claim,) = q.claim(lease_s=60)
        assert claim.value == "poison" and claim.attempt == attempt
        q.release(claim, error=f"failed {attempt}")
    assert q.redrive() == 1
    final_rev = q.info().rev

    changes = _changes_until(stream, final_rev)
    assert [c.rev for c in changes] == list(range(snap_rev + 1, final_rev + 1)), "each rev once, none missing"
    kinds = [ev.kind for c in changes for ev in c.events]
    for kind in ("claimed", "acked", "released", "renewed", "put", "removed", "dead_lettered"):
        assert kind in kinds, kind
    dead = next(ev for c in changes for ev in c.events if ev.kind == "dead_lettered")
    assert dead.last_error == "failed 2" and dead.moved_to_seq == 1
    state = _state(items)
    for change in changes:
        _fold(state, change)
    stream.close()  # type: ignore[attr-defined]
    with watching(q, snapshot=True) as again:
        fresh, fresh_rev = _snapshot(again)
    assert fresh_rev == final_rev
    assert state == _state(fresh), "the state rebuilt from the stream is the queue's"

    # Resuming after a rev replays exactly the changes after it.
    with watching(q, after_rev=mid_rev) as resuming:
        resumed = _changes_until(resuming, final_rev)
    assert resumed == [c for c in changes if c.rev > mid_rev]
    with pytest.raises(InvalidArgumentError, match="current rev"):
        with watching(q, after_rev=final_rev + 5) as bad:
            next(bad)


def test_partition_watch(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.put("a", partition="a")
    q.put("b", partition="b")
    stream = q.watch(snapshot=True, partition="b")
    items, _ = _snapshot(stream)
    assert [i.value for i in items] == ["b"]
    q.put("a2", partition="a")
    q.put("b2", partition="b")
    (change,) = _changes_until(stream, q.info().rev)
    assert [(ev.kind, ev.value) for ev in change.events] == [("put", "b2")]
    stream.close()  # type: ignore[attr-defined]


def test_progress_when_idle_and_reset_when_behind(small_runtime: LocalRuntime) -> None:
    q = _queue(small_runtime)
    q.put("first")
    rev = q.info().rev
    with watching(q) as stream:
        assert next(stream) == Progress(rev)
    for i in range(RETENTION + 4):
        q.put(i)
    now_rev = q.info().rev
    # A watcher resuming from a rev no longer retained is told so, then (with snapshot)
    # gets a fresh snapshot and carries on live.
    behind = q.watch(after_rev=rev, snapshot=True)
    reset = next(behind)
    assert isinstance(reset, Reset)
    assert reset.after_rev == rev and reset.oldest_rev == now_rev - RETENTION + 1 and reset.rev == now_rev
    assert "no longer retained" in reset.reason
    items, snap_rev = _snapshot(behind)
    assert snap_rev == now_rev and [i.value for i in items] == ["first", *range(RETENTION + 4)]
    q.put("live")
    (change,) = _changes_until(behind, now_rev + 1)
    assert change.events[0].value == "live"
    # Without a snapshot, the stream goes on with the oldest change it still has.
    behind.close()  # type: ignore[attr-defined]
    with watching(q, after_rev=rev) as plain:
        reset = next(plain)
        assert isinstance(reset, Reset)
        assert next(plain).rev == reset.oldest_rev


async def test_a_watcher_that_stops_reading_gets_a_reset(small_runtime: LocalRuntime) -> None:
    q = _queue(small_runtime)
    await q.aio.put("x")
    stream = q.aio.watch(snapshot=True)
    items = [await anext(stream), await anext(stream)]
    assert isinstance(items[-1], SnapshotEnd)
    # The reader stalls while writers go on with large items: gRPC flow control holds the
    # server back, and the changes it had not sent leave the retained window.
    big = b"x" * (1024 * 1024 - 100)
    for _ in range(3 * RETENTION):
        await q.aio.put(big)
    seen: list[Any] = []
    async for item in stream:
        seen.append(item)
        if isinstance(item, Reset):
            break
    assert isinstance(seen[-1], Reset), "a stalled watcher is told it missed changes"
    changes = [c.rev for c in seen if isinstance(c, QueueChange)]
    assert changes == list(range(items[-1].rev + 1, items[-1].rev + 1 + len(changes)))
    items, _ = await _asnapshot(stream)
    assert len(items) == 1 + 3 * RETENTION
    await stream.aclose()


async def _asnapshot(stream: Any) -> tuple[list[QueueItemState], int]:
    items = []
    async for item in stream:
        if isinstance(item, SnapshotEnd):
            return items, item.rev
        items.append(item)
    raise AssertionError("the stream ended inside its snapshot")


def test_deleting_the_queue_ends_its_watch(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.put(1)
    errors: list[BaseException] = []
    seen: list[Any] = []

    def watch() -> None:
        try:
            for item in q.watch(snapshot=True):
                seen.append(item)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=watch)
    thread.start()
    wait_for(lambda: any(isinstance(i, SnapshotEnd) for i in seen), what="the snapshot")
    apothic.Queue.delete(q.name, client=apothic_runtime.config)
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], NotFoundError), errors
    assert "deleted" in str(errors[0])
    with pytest.raises(NotFoundError):
        next(iter(q.watch()))


def test_ephemeral_queues(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    with apothic.Queue.ephemeral(maxsize=5, client=config) as q:
        info = q.info()
        assert info.ephemeral and info.maxsize == 5 and info.name.startswith("ephemeral-")
        q.put_many([1, 2])
        assert q.get() == 1
        with apothic.Queue.ephemeral(client=config) as other:
            assert other.name != q.name
    with pytest.raises(NotFoundError):
        q.len()
    with pytest.raises(NotFoundError):
        other.len()


async def test_ephemeral_queue_async_form(apothic_runtime: LocalRuntime) -> None:
    async with apothic.Queue.ephemeral.aio(client=apothic_runtime.config) as q:
        await q.aio.put("async")
        assert await q.aio.get() == "async"
    with pytest.raises(NotFoundError):
        await q.aio.len()


def test_an_ephemeral_queue_without_heartbeats_is_swept(small_runtime: LocalRuntime) -> None:
    from apothic._client import get_client
    from apothic._sync import run_sync

    async def create() -> str:
        # A client that created it and died: no heartbeat ever comes.
        info = await get_client(small_runtime.config).create_queue("", ephemeral=True)
        return info.name

    name = run_sync(create(), "create")
    q = apothic.Queue.from_name(name, create_if_missing=False, client=small_runtime.config)
    q.put("orphan")
    assert q.info().ephemeral
    plane = small_runtime.plane
    assert plane is not None
    queues = plane.queues
    # The server's clock runs past the lease (its expiry loop runs on it).
    queues.now = lambda: time.time() + EPHEMERAL_LEASE_S + 1
    try:
        wait_for(lambda: _gone(q), timeout=5, what="the sweep")
    finally:
        queues.now = time.time


def _gone(q: apothic.Queue) -> bool:
    try:
        q.len()
    except NotFoundError:
        return True
    return False
