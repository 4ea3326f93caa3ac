"""What watchers of a queue see: its change events, its committed state, and the order in
which commits publish them.

A queue's memory runs ahead of the store: :class:`apothic.server.queues.QueueManager`
changes memory, then commits. Watchers must see only committed changes, each exactly once,
in commit order, and a snapshot that is exactly the state as of the rev it names. So every
queue also keeps a :class:`Shown`: its :class:`~apothic.server.watch.ChangeLog` and a copy
of its items as of the log's rev, both advanced together when a commit lands
(:class:`Publisher`). A commit that failed publishes nothing.

Time alone changes nothing here: a lease that expires or a release delay that ends is not
a committed mutation (the store needs no write for it), so it bumps no rev and makes no
event. A snapshot reports the state such an item is in at the moment it is taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from apothic.server.queue_state import Item
from apothic.server.watch import ChangeLog

log = logging.getLogger("apothic.server.queues")

# Event kinds.
#: An item appeared: put, dead-lettered into this queue, or redriven back into it.
PUT = "put"
#: An item was leased (``attempt``, ``lease_deadline``).
CLAIMED = "claimed"
#: A lease was extended (``lease_deadline``).
RENEWED = "renewed"
#: A claimed item was acknowledged and is gone for good.
ACKED = "acked"
#: A claimed item was given back, visible again at ``visible_at`` (after ``delay_s``).
RELEASED = "released"
#: An item left for the dead-letter queue (where it is ``moved_to_seq``).
DEAD_LETTERED = "dead_lettered"
#: An item was removed by a clear or taken by a get.
REMOVED = "removed"
#: An item of a dead-letter queue went back to its queue (where it is ``moved_to_seq``).
REDRIVEN = "redriven"
EVENT_KINDS = (PUT, CLAIMED, RENEWED, ACKED, RELEASED, DEAD_LETTERED, REMOVED, REDRIVEN)
#: Kinds after which the item is no longer in the queue.
_GONE = frozenset({ACKED, DEAD_LETTERED, REMOVED, REDRIVEN})

# Item states in a snapshot.
VISIBLE = "visible"
DELAYED = "delayed"
LEASED = "leased"


@dataclass(frozen=True, slots=True)
class QueueEvent:
    """What one committed mutation did to one item (times in seconds since the epoch, 0
    when not applicable; ``format``/``data`` only on ``put``)."""

    kind: str
    seq: int
    partition: str
    attempt: int = 0
    lease_deadline: float = 0.0
    visible_at: float = 0.0
    delay_s: float = 0.0
    last_error: str = ""
    format: str = ""
    data: bytes = b""
    moved_to_seq: int = 0

    @classmethod
    def put(cls, item: Item) -> QueueEvent:
        return cls(
            PUT,
            item.seq,
            item.partition,
            attempt=item.attempt,
            visible_at=item.visible_at,
            last_error=item.last_error,
            format=item.format,
            data=item.data,
        )


@dataclass(frozen=True, slots=True)
class ItemSnapshot:
    """One item of a snapshot (``lease_deadline`` is 0 unless it is leased)."""

    seq: int
    partition: str
    state: str
    attempt: int
    lease_deadline: float
    visible_at: float
    last_error: str
    format: str
    data: bytes


@dataclass(slots=True)
class _ShownItem:
    seq: int
    partition: str
    format: str
    data: bytes
    attempt: int
    leased: bool
    lease_deadline: float
    visible_at: float
    last_error: str

    def snapshot(self, now: float) -> ItemSnapshot:
        last_error = self.last_error
        if self.leased and self.lease_deadline > now:
            state, deadline = LEASED, self.lease_deadline
        elif self.leased:  # the lease ran out: visible again, as the next claim will say
            state, deadline = VISIBLE, 0.0
            last_error = f"lease expired after attempt {self.attempt}"
        else:
            state, deadline = (DELAYED if self.visible_at > now else VISIBLE), 0.0
        return ItemSnapshot(
            self.seq,
            self.partition,
            state,
            self.attempt,
            deadline,
            self.visible_at,
            last_error,
            self.format,
            self.data,
        )


class Shown:
    """A queue as its watchers see it: its change log and its items as of the log's rev.

    Args:
        rev: the queue's committed rev.
        retention: how many changes the log keeps.
        retention_bytes: how many payload bytes of changes the log keeps (0: no limit).
    """

    def __init__(self, rev: int, retention: int, retention_bytes: int = 0) -> None:
        self.log: ChangeLog[QueueEvent] = ChangeLog(rev, retention, retention_bytes)
        self._items: dict[int, _ShownItem] = {}

    def reset(self, items: Iterable[Item]) -> None:
        """Replaces the items with the store's (at load, and after a failed commit)."""
        self._items = {
            i.seq: _ShownItem(
                i.seq, i.partition, i.format, i.data, i.attempt, i.leased, i.lease_deadline, i.visible_at, i.last_error
            )
            for i in items
        }

    def publish(self, rev: int, events: list[QueueEvent]) -> None:
        """Applies a committed change and appends it to the log."""
        if rev <= self.log.rev:
            log.error("queue change at rev %d is not after rev %d; dropped", rev, self.log.rev)
            return
        items = self._items
        for ev in events:
            if ev.kind == PUT:
                items[ev.seq] = _ShownItem(
                    ev.seq, ev.partition, ev.format, ev.data, ev.attempt, False, 0.0, ev.visible_at, ev.last_error
                )
            elif ev.kind in _GONE:
                items.pop(ev.seq, None)
            elif (shown := items.get(ev.seq)) is not None:
                if ev.kind == CLAIMED:
                    shown.attempt, shown.leased, shown.last_error = ev.attempt, True, ev.last_error
                    shown.lease_deadline = ev.lease_deadline
                elif ev.kind == RENEWED:
                    shown.lease_deadline = ev.lease_deadline
                elif ev.kind == RELEASED:
                    shown.leased, shown.visible_at, shown.last_error = False, ev.visible_at, ev.last_error
        self.log.append(rev, events, sum(len(ev.data) for ev in events))

    def snapshot(self, partition: str | None, now: float) -> list[ItemSnapshot]:
        """The items as of the log's rev, oldest first, in one partition or all."""
        return [
            item.snapshot(now)
            for seq, item in sorted(self._items.items())
            if partition is None or item.partition == partition
        ]


_Staged = tuple[Shown, int, "list[QueueEvent] | None"]


class Publisher:
    """Publishes each commit's changes once it landed, in commit order.

    The manager stages changes while it changes memory (:meth:`stage`), then submits the
    commit's future (:meth:`submit`). The store settles commits in the order they were
    queued; this publishes the changes of each that succeeded, in that order, even when the
    caller that waited for it was cancelled.
    """

    def __init__(self) -> None:
        self._staged: list[_Staged] = []
        self._inflight: deque[tuple[asyncio.Future[None], list[_Staged]]] = deque()

    def stage(self, shown: Shown, rev: int, events: list[QueueEvent]) -> None:
        """Records a change the next submitted commit carries."""
        self._staged.append((shown, rev, events))

    def stage_close(self, shown: Shown) -> None:
        """Closes a deleted queue's log once the next submitted commit lands."""
        self._staged.append((shown, 0, None))

    def submit(self, future: asyncio.Future[None]) -> None:
        """Attaches the staged changes to a commit's future."""
        if not self._staged:
            return
        if self._inflight and self._inflight[-1][0] is future:
            # Another mutation of the same write set: its changes land with the others.
            self._inflight[-1][1].extend(self._staged)
            self._staged = []
            return
        self._inflight.append((future, self._staged))
        self._staged = []
        future.add_done_callback(self._landed)

    def _landed(self, _: asyncio.Future[None]) -> None:
        while self._inflight and self._inflight[0][0].done():
            future, staged = self._inflight.popleft()
            if future.cancelled() or future.exception() is not None:
                continue
            for shown, rev, events in staged:
                if events is None:
                    shown.log.close()
                else:
                    shown.publish(rev, events)
