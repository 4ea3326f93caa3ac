"""The QueueManager against a pure-Python model (hypothesis), and across restarts.

The state machine drives the real manager on a real embedded SurrealDB (``mem://``) with an
injected clock, and restarts it (a new manager rebuilt from the store) at random points. The
queue has a ``maxsize``, and a watcher (re-opened with a snapshot after each restart) folds
its stream into a copy of the queue that must match the model after every step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import apothic
from apothic.exceptions import FailedPreconditionError
from apothic.runtime import LocalRuntime
from apothic.server.errors import FailedPrecondition, ResourceExhausted
from apothic.server.queue_log import CLAIMED, PUT, QueueEvent
from apothic.server.queues import QueueManager
from apothic.server.store import Store
from apothic.server.watch import Change, SnapshotChunk, SnapshotEnd

ACCOUNT = "accounts:model"
NAME = "work"
DLQ = "work.dlq"
MAX_ATTEMPTS = 2
MAXSIZE = 4
PARTITIONS = ("", "p")


@dataclass
class _Model:
    value: int
    partition: str
    seq: int
    attempt: int = 0
    epoch: int = 0
    leased: bool = False
    deadline: float = 0.0
    visible_at: float = 0.0


class QueueMachine(RuleBasedStateMachine):
    """put / get / claim / ack / renew / release / expire / redrive / clear / compact / restart."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = 1000.0
        self.store = Store("mem://")
        self.run(self.store.open())
        self.manager = self._manager()
        self.items: dict[int, _Model] = {}  # by value
        self.dead: list[tuple[int, str]] = []  # dead-lettered (value, partition), in DLQ order
        self.next_seq = 1
        self.next_value = 0
        self.receipts: list[tuple[str, int, int]] = []  # (receipt, value, epoch)
        self.rev = 0
        # What the watcher rebuilt: seq -> (value, partition, attempt), as of ``seen_rev``.
        self.seen: dict[int, tuple[int, str, int]] = {}
        self.seen_rev = 0
        self.watcher: asyncio.Task[None] | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _manager(self) -> QueueManager:
        manager = QueueManager(self.store, now=lambda: self.clock)
        self.run(manager.load())
        return manager

    def _watch(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.run(asyncio.gather(self.watcher, return_exceptions=True))
        self.seen, self.seen_rev = {}, 0
        self.watcher = self.loop.create_task(self._follow(self.manager))

    async def _follow(self, manager: QueueManager) -> None:
        snapshot: dict[int, tuple[int, str, int]] = {}
        async for item in manager.watch(ACCOUNT, NAME, snapshot=True, after_rev=None, partition=None):
            if isinstance(item, SnapshotChunk):
                snapshot.update({e.seq: (int(e.data), e.partition, e.attempt) for e in item.entries})
            elif isinstance(item, SnapshotEnd):
                self.seen, self.seen_rev = snapshot, item.rev
            elif isinstance(item, Change):
                assert item.rev > self.seen_rev, f"rev {item.rev} after {self.seen_rev}"
                self.seen_rev = item.rev
                for ev in item.events:
                    self._fold(ev)
            else:
                raise AssertionError(f"unexpected {item!r}")

    def _fold(self, ev: QueueEvent) -> None:
        if ev.kind == PUT:
            self.seen[ev.seq] = (int(ev.data), ev.partition, ev.attempt)
        elif ev.kind == CLAIMED:
            value, partition, _ = self.seen[ev.seq]
            self.seen[ev.seq] = (value, partition, ev.attempt)
        elif ev.kind in ("acked", "removed", "dead_lettered"):
            del self.seen[ev.seq]

    def teardown(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.run(asyncio.gather(self.watcher, return_exceptions=True))
        self.run(self.manager.close())
        self.run(self.store.close())
        self.loop.close()

    def _rev(self, rev: int) -> None:
        assert rev > self.rev, f"rev went from {self.rev} to {rev}"
        self.rev = rev

    # -- the model's own clock work ----------------------------------------------------

    def _expire(self) -> None:
        due = sorted(
            (m for m in self.items.values() if m.leased and m.deadline <= self.clock),
            key=lambda m: (m.deadline, m.seq),
        )
        for m in due:
            m.leased = False
            if m.attempt >= MAX_ATTEMPTS:
                del self.items[m.value]
                self.dead.append((m.value, m.partition))
            else:
                m.visible_at = m.deadline

    def _visible(self, partition: str) -> list[_Model]:
        ready = [m for m in self.items.values() if m.partition == partition and not m.leased]
        return sorted((m for m in ready if m.visible_at <= self.clock), key=lambda m: m.seq)

    def _held(self, value: int, epoch: int) -> _Model | None:
        m = self.items.get(value)
        if m is None or m.epoch != epoch or not m.leased or m.deadline <= self.clock:
            return None
        return m

    # -- rules -------------------------------------------------------------------------

    @initialize()
    def create(self) -> None:
        view, created = self.run(self.manager.create(ACCOUNT, NAME, MAX_ATTEMPTS, maxsize=MAXSIZE))
        assert created
        self.rev = view.rev
        self._watch()

    @rule(count=st.integers(1, 3), partition=st.sampled_from(PARTITIONS))
    def put(self, count: int, partition: str) -> None:
        self._expire()
        values = list(range(self.next_value, self.next_value + count))
        self.next_value += count
        held = sum(1 for m in self.items.values() if m.partition == partition)
        payloads = [("json", str(v).encode()) for v in values]
        if held + count > MAXSIZE:  # all or nothing; redrive may have overfilled it
            with pytest.raises(ResourceExhausted, match=f"maxsize={MAXSIZE}"):
                self.run(self.manager.put(ACCOUNT, NAME, partition, payloads))
            return
        rev = self.run(self.manager.put(ACCOUNT, NAME, partition, payloads))
        self._rev(rev)
        for v in values:
            self.items[v] = _Model(v, partition, self.next_seq, visible_at=self.clock)
            self.next_seq += 1

    @rule(n=st.integers(1, 3), lease=st.sampled_from([1.0, 2.0, 3.0]), partition=st.sampled_from(PARTITIONS))
    def claim(self, n: int, lease: float, partition: str) -> None:
        self._expire()
        expected = self._visible(partition)[:n]
        taken, rev = self.run(self.manager.take(ACCOUNT, NAME, partition, n, lease_s=lease, wait_s=0))
        assert [int(t.data) for t in taken] == [m.value for m in expected]
        if taken:
            self._rev(rev)
        for t, m in zip(taken, expected, strict=True):
            m.attempt += 1
            m.epoch += 1
            m.leased = True
            m.deadline = self.clock + lease
            assert t.attempt == m.attempt
            self.receipts.append((t.receipt, m.value, m.epoch))

    @rule(partition=st.sampled_from(PARTITIONS))
    def get(self, partition: str) -> None:
        self._expire()
        expected = self._visible(partition)[:1]
        taken, rev = self.run(self.manager.take(ACCOUNT, NAME, partition, 1, lease_s=None, wait_s=0))
        assert [int(t.data) for t in taken] == [m.value for m in expected]
        if taken:
            self._rev(rev)
            del self.items[expected[0].value]

    def _with_receipt(self, index: int, call: Any) -> _Model | None:
        """Runs ``call(receipt)``; checks it was rejected exactly when the model says stale."""
        self._expire()
        receipt, value, epoch = self.receipts[index % len(self.receipts)]
        m = self._held(value, epoch)
        try:
            rev = call(receipt)
        except FailedPrecondition:
            assert m is None, f"receipt {receipt} of live item {value} was rejected"
            return None
        assert m is not None, f"stale receipt {receipt} was accepted"
        self._rev(rev)
        return m

    @precondition(lambda self: self.receipts)
    @rule(index=st.integers(0, 100))
    def ack(self, index: int) -> None:
        m = self._with_receipt(index, lambda r: self.run(self.manager.ack(ACCOUNT, NAME, [r])))
        if m is not None:
            del self.items[m.value]

    @precondition(lambda self: self.receipts)
    @rule(index=st.integers(0, 100), lease=st.sampled_from([1.0, 4.0]))
    def renew(self, index: int, lease: float) -> None:
        m = self._with_receipt(index, lambda r: self.run(self.manager.renew(ACCOUNT, NAME, r, lease))[1])
        if m is not None:
            m.deadline = self.clock + lease

    @precondition(lambda self: self.receipts)
    @rule(index=st.integers(0, 100), delay=st.sampled_from([0.0, 2.0]))
    def release(self, index: int, delay: float) -> None:
        outcome: list[bool] = []

        def call(receipt: str) -> int:
            dead, rev = self.run(self.manager.release(ACCOUNT, NAME, receipt, delay))
            outcome.append(dead)
            return int(rev)

        m = self._with_receipt(index, call)
        if m is None:
            return
        m.leased = False
        if m.attempt >= MAX_ATTEMPTS:
            assert outcome == [True]
            del self.items[m.value]
            self.dead.append((m.value, m.partition))
        else:
            assert outcome == [False]
            m.visible_at = self.clock + delay

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 5.0]), sweep=st.booleans())
    def advance(self, dt: float, sweep: bool) -> None:
        self.clock += dt
        if sweep:  # what the background loop does; operations also expire lazily
            self.run(self.manager.expire())

    @rule()
    def redrive(self) -> None:
        self._expire()
        moved, rev = self.run(self.manager.redrive(ACCOUNT, NAME))
        self._rev(rev)
        assert moved == len(self.dead)
        for v, partition in self.dead:
            self.items[v] = _Model(v, partition, self.next_seq, visible_at=self.clock)
            self.next_seq += 1
        self.dead = []

    @rule(partition=st.sampled_from([None, *PARTITIONS]))
    def clear(self, partition: str | None) -> None:
        self._expire()
        removed, rev = self.run(self.manager.clear(ACCOUNT, NAME, partition))
        self._rev(rev)
        gone = [v for v, m in self.items.items() if partition is None or m.partition == partition]
        assert removed == len(gone)
        for v in gone:
            del self.items[v]

    @rule()
    def compact(self) -> None:
        # What the background compactor does: fold the committed log rows into the rows
        # (a restart then replays what is left over them).
        self.run(self.manager.compact())

    @rule()
    def restart(self) -> None:
        self.run(self.manager.close())
        self.manager = self._manager()
        self._watch()

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def lengths_match(self) -> None:
        self._expire()
        total, rev = self.run(self.manager.length(ACCOUNT, NAME, None))
        assert total == len(self.items)
        assert rev >= self.rev, "a dead-letter move on expiry bumps the rev too; nothing lowers it"
        self.rev = rev
        for p in PARTITIONS:
            assert self.run(self.manager.length(ACCOUNT, NAME, p))[0] == sum(
                1 for m in self.items.values() if m.partition == p
            )
        if self.dead or (ACCOUNT, DLQ) in self.manager._queues:
            assert self.run(self.manager.length(ACCOUNT, DLQ, None))[0] == len(self.dead)

    @invariant()
    def watcher_sees_the_queue(self) -> None:
        if self.watcher is None:
            return
        self._expire()
        self.run(self.manager.length(ACCOUNT, NAME, None))  # commits due dead-letter moves
        target = self.manager._queues[(ACCOUNT, NAME)].shown.log.rev

        async def caught_up() -> None:
            while self.seen_rev < target and not self.watcher.done():  # type: ignore[union-attr]
                await asyncio.sleep(0)

        self.run(asyncio.wait_for(caught_up(), 5))
        if self.watcher.done():
            self.watcher.result()  # raises what the watcher found wrong
        assert self.seen_rev == target
        assert self.seen == {m.seq: (m.value, m.partition, m.attempt) for m in self.items.values()}


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    database=None,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueMachine.TestCase


def test_state_survives_a_restart_on_disk(tmp_path: Path) -> None:
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=0).start()
    try:
        q = apothic.Queue.from_name("durable", max_attempts=5, client=first.config)
        q.put_many(list(range(10)))
        claims = q.claim(6, lease_s=600)
        q.ack(*claims[:4])
        held = claims[4:]
        rev = q.info().rev
    finally:
        first.stop()

    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=0, api_key=first.api_key).start()
    try:
        q = apothic.Queue.from_name("durable", client=second.config)
        info = q.info()
        assert info.max_attempts == 5 and info.length == 6 and info.rev == rev
        with pytest.raises(FailedPreconditionError):
            q.ack(claims[0])
        q.ack(held[0])  # a lease taken before the restart is still held after it
        rest = q.get_many(10, block=False)
        assert rest == [6, 7, 8, 9], "acked items never come back; leased ones wait for their lease"
        q.release(held[1])
        assert q.get() == 5
        assert q.info().rev > rev
    finally:
        second.stop()
