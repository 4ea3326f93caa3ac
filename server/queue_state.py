"""The in-memory state of a queue: its items, a ready heap per partition and its timers.

:class:`QueueState` is what :class:`apothic.server.queues.QueueManager` changes synchronously
before it hands the matching statements to the store. Nothing here awaits or writes.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apothic.server.errors import InvalidArgument
from apothic.server.hub import Signal
from apothic.server.request_ids import RecentRequests

if TYPE_CHECKING:
    import asyncio

    from apothic.server.queue_log import Shown
    from apothic.server.queue_oplog import LogEntry, LogSet

#: Largest item, in bytes of its serialized payload.
MAX_ITEM_BYTES = 1024 * 1024
#: Most items one put or claim handles.
MAX_BATCH_ITEMS = 10_000
#: The longest a PutItems, GetItems or ClaimItems call waits on the server; the SDK asks again.
MAX_WAIT_S = 20.0
DEFAULT_LEASE_S = 30.0
MAX_LEASE_S = 12 * 3600.0
MAX_DELAY_S = 12 * 3600.0
MAX_ATTEMPTS_LIMIT = 1000
#: The largest ``maxsize`` a queue may have (items per partition).
MAX_MAXSIZE = 100_000_000
#: Seconds an ephemeral queue lives without a heartbeat.
EPHEMERAL_LEASE_S = 30.0
DLQ_SUFFIX = ".dlq"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_queue_name(name: str) -> None:
    """Raises InvalidArgument unless ``name`` is a valid queue name."""
    if not _NAME_RE.match(name or ""):
        raise InvalidArgument(
            f"queue name {name!r} is invalid: use 1-128 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )


def check_seconds(what: str, value: float, low: float, high: float) -> None:
    """Raises InvalidArgument unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be from {low:g} to {high:g} seconds, got {value:g}")


def dt(seconds: float) -> datetime:
    """A timestamp (seconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def secs(value: datetime) -> float:
    """A datetime as seconds since the epoch."""
    return value.timestamp()


@dataclass(frozen=True)
class QueueView:
    """A queue's state as an RPC reports it."""

    name: str
    rev: int
    max_attempts: int
    length: int
    dead_letter_queue: str
    maxsize: int = 0
    ephemeral: bool = False


@dataclass(frozen=True)
class TakenItem:
    """An item handed out by a claim (with its receipt and lease) or a get (without)."""

    seq: int
    partition: str
    format: str
    data: bytes
    receipt: str
    attempt: int
    lease_deadline: datetime | None
    last_error: str


@dataclass
class Item:
    """One item not yet acked, as memory holds it."""

    seq: int
    partition: str
    format: str
    data: bytes
    enqueued_at: float
    attempt: int = 0
    epoch: int = 0
    leased: bool = False
    lease_deadline: float = 0.0
    visible_at: float = 0.0
    last_error: str = ""
    #: Whether a ready-heap entry stands for this item.
    in_ready: bool = False

    def changes(self) -> dict[str, Any]:
        """The fields a claim, renew or release rewrites."""
        return {
            "seq": self.seq,
            "attempt": self.attempt,
            "epoch": self.epoch,
            "leased": self.leased,
            "lease_deadline": dt(self.lease_deadline),
            "visible_at": dt(self.visible_at),
            "last_error": self.last_error,
        }

    def doc(self) -> dict[str, Any]:
        """The whole stored row."""
        return {
            **self.changes(),
            "partition": self.partition,
            "format": self.format,
            "data": self.data,
            "enqueued_at": dt(self.enqueued_at),
        }

    @property
    def receipt(self) -> str:
        return f"{self.seq}.{self.epoch}"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Item:
        """An item from its stored row."""
        return cls(
            seq=row["seq"],
            partition=row["partition"],
            format=row["format"],
            data=row["data"],
            enqueued_at=secs(row["enqueued_at"]),
            attempt=row["attempt"],
            epoch=row["epoch"],
            leased=row["leased"],
            lease_deadline=secs(row["lease_deadline"]),
            visible_at=secs(row["visible_at"]),
            last_error=row["last_error"],
        )


@dataclass
class Request:
    """What an applied request answered, and the commit a retry must wait for."""

    result: dict[str, Any]
    committed: asyncio.Future[None] | None = None


@dataclass(eq=False)
class QueueState:
    """One queue in memory.

    Attributes:
        shown: what watchers see: the committed state and its change log (it outlives a
            reload of this state from the store; see apothic.server.queue_log).
        counts: items per partition (visible, delayed or leased), for ``maxsize``.
        expires_at: when an ephemeral queue is deleted unless heartbeated (None: never).
        signal: fired when an item may have become claimable.
        room: fired when an item left the queue (a blocked put may fit now).
    """

    account: str
    name: str
    max_attempts: int
    shown: Shown
    maxsize: int = 0
    expires_at: float | None = None
    rev: int = 1
    next_seq: int = 1
    items: dict[int, Item] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    ready: dict[str, list[int]] = field(default_factory=dict)
    #: ``(when, seq, epoch)``: a lease deadline or the end of a release delay.
    timers: list[tuple[float, int, int]] = field(default_factory=list)
    signal: Signal = field(default_factory=Signal)
    room: Signal = field(default_factory=Signal)
    requests: RecentRequests[Request] = field(default_factory=RecentRequests)
    #: Numbers recorded request ids, so the oldest can be forgotten first.
    request_n: int = 0
    #: The stored ``queue_request`` rows, oldest first: their key (an int for a row
    #: recording several ids, the id for an older row of one) and the ids each records.
    request_rows: dict[str | int, list[str]] = field(default_factory=dict)
    #: The write set the queue's next hot mutation joins (apothic.server.queue_oplog), and
    #: the last one it submitted (the next one fails when that one does).
    write_set: LogSet | None = None
    last_set: LogSet | None = None
    #: The lsn of the queue's next log row, and of the last one folded into its rows.
    next_lsn: int = 1
    folded_lsn: int = 0
    #: Committed log entries not folded yet, in lsn order (the compactor's work).
    log_entries: list[LogEntry] = field(default_factory=list)
    #: Whether a compaction of this queue is in flight.
    compacting: bool = False

    @property
    def dlq_name(self) -> str:
        return self.name + DLQ_SUFFIX

    def view(self) -> QueueView:
        return QueueView(
            self.name,
            self.rev,
            self.max_attempts,
            len(self.items),
            self.dlq_name,
            maxsize=self.maxsize,
            ephemeral=self.expires_at is not None,
        )

    def add(self, item: Item) -> None:
        """Adds an item (the caller makes it ready or sets a timer)."""
        self.items[item.seq] = item
        self.counts[item.partition] = self.counts.get(item.partition, 0) + 1

    def remove(self, seq: int) -> Item:
        """Removes an item for good (acked, taken, cleared or moved)."""
        item = self.items.pop(seq)
        left = self.counts[item.partition] - 1
        if left:
            self.counts[item.partition] = left
        else:
            del self.counts[item.partition]
        if self.maxsize:
            self.room.fire()
        return item

    def fits(self, partition: str, n: int) -> bool:
        """Whether ``n`` more items fit in ``partition`` under ``maxsize``."""
        return not self.maxsize or self.counts.get(partition, 0) + n <= self.maxsize

    def make_ready(self, item: Item) -> None:
        if not item.in_ready:
            item.in_ready = True
            heapq.heappush(self.ready.setdefault(item.partition, []), item.seq)

    def pop_ready(self, partition: str, n: int) -> list[Item]:
        heap = self.ready.get(partition)
        out: list[Item] = []
        while heap and len(out) < n:
            item = self.items.get(heapq.heappop(heap))
            if item is None or not item.in_ready:
                continue
            item.in_ready = False
            out.append(item)
        return out

    def schedule(self, when: float, item: Item) -> None:
        """Sets a timer for an item's lease deadline or the end of its delay."""
        heapq.heappush(self.timers, (when, item.seq, item.epoch))
