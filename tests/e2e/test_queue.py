"""``apothic.Queue`` against the real runtime: puts, gets, claims, leases, dead letters,
maxsize."""

from __future__ import annotations

import asyncio
import contextlib
import queue as stdlib_queue
import threading
import time
from datetime import UTC, datetime

import pytest

import apothic
from apothic.exceptions import (
    BlockingInAsyncContextError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QueueFullError,
    ResourceExhaustedError,
    SerializationError,
)
from apothic.queue import QueueChange, QueueItemState
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for
from apothic.watch import SnapshotEnd


def _queue(runtime: LocalRuntime, **kwargs: object) -> apothic.Queue:
    return apothic.Queue.from_name(unique_name("q"), client=runtime.config, **kwargs)  # type: ignore[arg-type]


def test_put_get_fifo_per_partition(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.put_many([1, 2, 3])
    q.put({"a": [1, 2]}, partition="p")
    q.put("x", partition="p")
    assert q.len() == 5
    assert q.len(partition="p") == 2
    assert q.len(partition="") == 3
    assert [q.get(), q.get(), q.get()] == [1, 2, 3]
    assert q.get(partition="p") == {"a": [1, 2]}
    assert q.get_many(5, partition="p") == ["x"]
    with pytest.raises(stdlib_queue.Empty):
        q.get(block=False)
    started = time.monotonic()
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.3)
    assert time.monotonic() - started >= 0.25
    assert q.len() == 0


def test_blocking_get_wakes_on_put(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.len()  # creates it
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    reader.start()
    time.sleep(0.2)
    started = time.monotonic()
    q.put("wake")
    reader.join(10)
    assert got == ["wake"]
    assert time.monotonic() - started < 2.0, "the waiting get must be woken, not polled"


def test_claim_ack_renew_release_and_stale_receipts(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.put_many(["a", "b", "c"])
    claims = q.claim(2, lease_s=30)
    assert [c.value for c in claims] == ["a", "b"]
    assert all(c.attempt == 1 and c.lease_deadline > datetime.now(UTC) for c in claims)
    assert q.len() == 3, "leased items still count until acked"
    q.ack(claims[0])
    with pytest.raises(FailedPreconditionError, match="stale"):
        q.ack(claims[0])
    new_deadline = q.renew(claims[1], 120)
    assert new_deadline > claims[1].lease_deadline
    assert q.release(claims[1], error="boom") is False
    with pytest.raises(FailedPreconditionError):
        q.renew(claims[1], 10)
    again = q.claim(3)
    assert [(c.value, c.attempt, c.last_error) for c in again] == [("b", 2, "boom"), ("c", 1, "")]
    q.ack(*again)
    assert q.len() == 0
    with pytest.raises(InvalidArgumentError, match="malformed"):
        q.ack("nonsense")


def test_expired_lease_redelivers_and_old_ack_is_rejected(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.put("job")
    first = q.claim(lease_s=0.2)[0]
    second = q.claim(wait_s=5)
    assert [c.value for c in second] == ["job"] and second[0].attempt == 2
    with pytest.raises(FailedPreconditionError, match="stale"):
        q.ack(first)
    q.ack(second[0])
    assert q.claim() == []


def test_max_attempts_dead_letters_once_and_redrive(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime, max_attempts=2)
    q.put("poison")
    for attempt in (1, 2):
        (claim,) = q.claim()
        assert claim.attempt == attempt
        dead = q.release(claim, error=f"failed {attempt}")
    assert dead is True
    assert q.len() == 0
    dlq = apothic.Queue.from_name(q.info().dead_letter_queue, create_if_missing=False, client=q._config)
    assert dlq.len() == 1
    (letter,) = dlq.claim()
    assert letter.value == "poison" and letter.last_error == "failed 2"
    dlq.release(letter)
    assert q.redrive() == 1
    assert dlq.len() == 0 and q.len() == 1
    (back,) = q.claim()
    assert back.value == "poison" and back.attempt == 1
    q.ack(back)
    assert q.redrive() == 0


def test_rev_and_request_ids(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.put("once", request_id="put-1")
    rev = q.info().rev
    q.put("once", request_id="put-1")
    assert q.len() == 1 and q.info().rev == rev, "a retried put is applied once"
    claims = q.claim(request_id="claim-1")
    assert q.claim(request_id="claim-1") == claims, "a retried claim returns the claims it made"
    q.ack(claims[0], request_id="ack-1")
    q.ack(claims[0], request_id="ack-1")  # the retry answers like the first, no stale error
    assert q.info().rev > rev
    with pytest.raises(InvalidArgumentError, match="already used"):
        q.clear(request_id="put-1")


def test_clear_delete_and_errors(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    q.put_many([1, 2], partition="a")
    q.put(3, partition="b")
    assert q.clear(partition="a") == 2
    assert q.len() == 1
    assert q.clear() == 1
    with pytest.raises(SerializationError, match="1,048,576"):
        q.put(b"x" * (1024 * 1024 + 1))
    with pytest.raises(FailedPreconditionError, match="max_attempts"):
        apothic.Queue.from_name(q.name, max_attempts=5, client=q._config).len()
    apothic.Queue.delete(q.name, client=q._config)
    with pytest.raises(NotFoundError):
        q.len()
    with pytest.raises(NotFoundError):
        apothic.Queue.from_name(unique_name("missing"), create_if_missing=False, client=q._config).put(1)
    with pytest.raises(InvalidArgumentError, match="invalid"):
        apothic.Queue.from_name("bad name!", client=q._config).len()


async def test_async_forms_and_blocking_inside_a_loop(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime)
    waiter = asyncio.ensure_future(q.aio.claim(wait_s=10))
    await asyncio.sleep(0.1)
    await q.aio.put("async")
    (claim,) = await asyncio.wait_for(waiter, 10)
    assert claim.value == "async"
    await q.aio.ack(claim)
    assert await q.aio.len() == 0
    with pytest.raises(BlockingInAsyncContextError, match=r"q\.aio|queue\.aio"):
        q.len()


def _dead_letters(q: apothic.Queue) -> int | None:
    try:
        return apothic.Queue.from_name(q.name + ".dlq", create_if_missing=False, client=q._config).len()
    except NotFoundError:
        return None


def test_a_poison_item_is_dead_lettered_exactly_once_and_redriven_once(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime, max_attempts=2)
    poison = {"poison": True, "blob": bytes(range(256)) * 40}
    q.put_many([poison, "fine"])
    start = q.info().rev
    first, fine = q.claim(2)
    q.ack(fine)
    q.release(first, error="ValueError: bad input")
    (last,) = q.claim(lease_s=0.3)  # this consumer dies: its lease runs out
    assert last.value == poison and last.attempt == 2 and last.last_error == "ValueError: bad input"
    wait_for(lambda: _dead_letters(q) == 1, what="the dead letter")
    dlq = apothic.Queue.from_name(q.name + ".dlq", create_if_missing=False, client=q._config)
    with contextlib.closing(dlq.watch(snapshot=True)) as dlq_watch:  # type: ignore[type-var]
        letters = []
        for item in dlq_watch:
            if isinstance(item, SnapshotEnd):
                break
            assert isinstance(item, QueueItemState)
            letters.append(item)
    (letter,) = letters
    assert letter.value == poison and letter.attempt == 2
    assert letter.last_error == "lease expired after attempt 2"
    assert q.len() == 0 and dlq.len() == 1
    rev = q.info().rev
    changes: list[QueueChange] = []
    with contextlib.closing(q.watch(after_rev=start)) as watch:  # type: ignore[type-var]
        for item in watch:
            if isinstance(item, QueueChange):
                changes.append(item)
                if item.rev >= rev:
                    break
    dead = [ev for c in changes for ev in c.events if ev.kind == "dead_lettered"]
    assert len(dead) == 1 and dead[0].seq == 1 and dead[0].last_error == letter.last_error
    assert q.redrive() == 1
    assert q.redrive() == 0, "redrive returns it once"
    assert dlq.len() == 0
    (back,) = q.claim()
    assert back.value == poison and back.attempt == 1 and back.last_error == letter.last_error
    q.ack(back)
    assert q.get_many(5, block=False) == []


def test_maxsize_blocks_fails_and_is_all_or_nothing(apothic_runtime: LocalRuntime) -> None:
    q = _queue(apothic_runtime, maxsize=2, max_attempts=1)
    q.put_many([1, 2])
    assert q.info().maxsize == 2
    with pytest.raises(QueueFullError, match=rf"queue '{q.name}' partition '' is full.*maxsize=2") as full:
        q.put(3, block=False)
    assert isinstance(full.value, stdlib_queue.Full) and isinstance(full.value, ResourceExhaustedError)
    started = time.monotonic()
    with pytest.raises(QueueFullError):
        q.put(3, timeout=0.3)
    assert time.monotonic() - started >= 0.25
    q.put("elsewhere", partition="other")  # each partition has its own room
    assert q.get() == 1
    with pytest.raises(QueueFullError):
        q.put_many([3, 4], block=False)
    assert q.len(partition="") == 1, "put_many is all or nothing"
    with pytest.raises(InvalidArgumentError, match="never fits"):
        q.put_many([5, 6, 7])
    (claim,) = q.claim(lease_s=30)
    q.put(3)
    with pytest.raises(QueueFullError):
        q.put(4, block=False)  # a leased item still counts until acked
    # A blocked put_many goes in once consumers made room for all of it.
    done = threading.Event()
    blocked = threading.Thread(target=lambda: (q.put_many([4, 5], timeout=10), done.set()))
    blocked.start()
    assert not done.wait(0.2)
    q.release(claim, error="no luck")  # the last attempt: it moves to the DLQ, which has no maxsize
    assert q.get() == 3
    blocked.join(10)
    assert done.is_set()
    assert q.get_many(5) == [4, 5]
    assert apothic.Queue.from_name(q.name + ".dlq", create_if_missing=False, client=q._config).info().maxsize == 0
    with pytest.raises(FailedPreconditionError, match="maxsize=2"):
        apothic.Queue.from_name(q.name, maxsize=3, client=q._config).len()
