"""Watch streams over revisioned objects: a retained change log and the stream it drives.

Every watchable object (a queue, a dict) keeps a :class:`ChangeLog`: the changes it
committed, one :class:`Change` per rev, the newest ``retention`` of them in memory (and no
more than ``retention_bytes`` of their payloads, so a hot key of large values cannot pin
gigabytes). A watch
(:func:`watch`) is a cursor over that log, not a buffer of its own:

1. with ``snapshot=True`` it first sends the object's state as of one rev (taken from memory
   in the same loop turn as the cursor, so nothing falls between them), then
   :class:`SnapshotEnd`;
2. then every change after its cursor, revs strictly increasing, none missing or repeated;
3. when nothing changed for ``progress_s`` it sends :class:`Progress` (all revs up to it sent);
4. when its cursor fell out of the retained window (it resumed from an old rev, or it read
   slower than writers wrote), it sends :class:`Reset` instead of a silent gap, followed by a
   fresh snapshot when it asked for snapshots, else by the changes still retained.

Retention is in memory only: after a control-plane restart a watch resuming from a rev
before the restart gets a :class:`Reset` (the state itself is durable; its history is not).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from apothic.server.errors import InvalidArgument, NotFound

#: Changes retained per object unless configured otherwise.
DEFAULT_RETENTION = 10_000
#: Payload bytes retained per object unless configured otherwise.
DEFAULT_RETENTION_BYTES = 64 * 1024 * 1024
#: Seconds of quiet after which a watch sends a progress marker, unless configured otherwise.
DEFAULT_PROGRESS_S = 5.0
#: Entries per snapshot message.
SNAPSHOT_CHUNK = 500

E = TypeVar("E")
S = TypeVar("S")


@dataclass(frozen=True)
class WatchSettings:
    """How watches behave.

    Attributes:
        retention: changes each object retains for watchers that resume or fall behind.
        retention_bytes: at most this many payload bytes retained per object (the newest
            change is always kept).
        progress_s: seconds of quiet before a watch sends a progress marker.
    """

    retention: int = DEFAULT_RETENTION
    retention_bytes: int = DEFAULT_RETENTION_BYTES
    progress_s: float = DEFAULT_PROGRESS_S

    def __post_init__(self) -> None:
        if self.retention < 1:
            raise ValueError("watch retention must be at least 1 change")
        if self.retention_bytes < 0:
            raise ValueError("watch retention_bytes must not be negative")
        if not self.progress_s > 0:
            raise ValueError("the watch progress interval must be positive")


@dataclass(frozen=True)
class Change(Generic[E]):
    """Everything one committed mutation changed, at one rev."""

    rev: int
    events: tuple[E, ...]


@dataclass(frozen=True)
class SnapshotChunk(Generic[S]):
    """Part of the state as of ``rev``; more chunks may follow before :class:`SnapshotEnd`."""

    rev: int
    entries: tuple[S, ...]


@dataclass(frozen=True)
class SnapshotEnd:
    """The snapshot is complete: it was the state as of ``rev``; changes after it follow."""

    rev: int


@dataclass(frozen=True)
class Progress:
    """Nothing changed lately: every change up to ``rev`` has been sent."""

    rev: int


@dataclass(frozen=True)
class Reset:
    """Changes after ``after_rev`` up to ``oldest_rev - 1`` are no longer retained.

    A fresh snapshot follows when the watch asked for snapshots; otherwise the stream goes on
    with the oldest retained change and the watcher must rebuild its state by other means.
    """

    after_rev: int
    oldest_rev: int
    rev: int
    reason: str


WatchItem = Change[Any] | SnapshotChunk[Any] | SnapshotEnd | Progress | Reset


class ChangeLog(Generic[E]):
    """The retained tail of one object's changes, and the signal that wakes its watchers.

    Args:
        rev: the object's current rev (changes appended later have greater revs).
        retention: how many changes to keep.
        retention_bytes: how many payload bytes to keep (0: no limit).
    """

    def __init__(self, rev: int, retention: int, retention_bytes: int = 0) -> None:
        self.rev = rev
        self._changes: deque[Change[E]] = deque()
        self._sizes: deque[int] = deque()
        self._bytes = 0
        self._retention = retention
        self._retention_bytes = retention_bytes
        #: Bumped by :meth:`invalidate`; a watch that sees it change resets.
        self.epoch = 0
        self.invalid_reason = ""
        self._wake = asyncio.Event()
        self.closed = False

    @property
    def oldest_rev(self) -> int:
        """The rev of the oldest retained change (``rev + 1`` when none is retained)."""
        return self._changes[0].rev if self._changes else self.rev + 1

    def append(self, rev: int, events: list[E] | tuple[E, ...], size: int = 0) -> None:
        """Records a committed change of ``size`` payload bytes; ``rev`` must be greater than
        every earlier one."""
        if rev <= self.rev:
            raise ValueError(f"change rev {rev} is not after rev {self.rev}")
        self.rev = rev
        self._changes.append(Change(rev, tuple(events)))
        self._sizes.append(size)
        self._bytes += size
        while len(self._changes) > 1 and (
            len(self._changes) > self._retention or (self._retention_bytes and self._bytes > self._retention_bytes)
        ):
            self._changes.popleft()
            self._bytes -= self._sizes.popleft()
        self._notify()

    def skip_to(self, rev: int) -> None:
        """Moves to ``rev`` without the changes in between (they happened elsewhere, e.g. on
        another replica): a watcher behind ``rev`` gets a :class:`Reset` rather than a gap."""
        if rev <= self.rev:
            return
        self._changes.clear()
        self._sizes.clear()
        self._bytes = 0
        self.rev = rev
        self._notify()

    def invalidate(self, reason: str) -> None:
        """Every current watcher gets a :class:`Reset` (and a fresh snapshot when it asked for
        snapshots) at its next look: what it was sent may not match the object any more (its
        state was reloaded after a failed commit)."""
        self.epoch += 1
        self.invalid_reason = reason
        self._changes.clear()
        self._sizes.clear()
        self._bytes = 0
        self._notify()

    def close(self) -> None:
        """The object was deleted: every watch of it ends."""
        self.closed = True
        self._notify()

    def since(self, after_rev: int) -> list[Change[E]] | None:
        """The retained changes after ``after_rev``; None when some of them are gone."""
        if after_rev >= self.rev:
            return []
        if after_rev + 1 < self.oldest_rev:
            return None
        # Revs may skip (a mutation with nothing to show), so search rather than index.
        changes = self._changes
        lo, hi = 0, len(changes)
        while lo < hi:
            mid = (lo + hi) // 2
            if changes[mid].rev <= after_rev:
                lo = mid + 1
            else:
                hi = mid
        return [changes[i] for i in range(lo, len(changes))]

    def waiter(self) -> asyncio.Event:
        """An event set at the next append or close (take it before checking)."""
        return self._wake

    def _notify(self) -> None:
        event, self._wake = self._wake, asyncio.Event()
        event.set()


async def watch(
    log_of: Callable[[], ChangeLog[E]],
    *,
    what: str,
    snapshot: Callable[[], list[S]] | None,
    after_rev: int | None,
    settings: WatchSettings,
) -> AsyncIterator[WatchItem]:
    """Streams one object's watch (see the module docstring).

    Args:
        log_of: returns the object's change log; raises NotFound when the object is gone
            (called again after each wait, so a deleted and recreated object ends the watch).
        what: how errors name the object (``"dict 'jobs'"``).
        snapshot: returns the object's entries now, in the loop turn it is called, or None
            when the watcher did not ask for a snapshot.
        after_rev: resume after this rev (None: from now, or from the snapshot).
        settings: retention and progress interval.

    Raises:
        InvalidArgument: ``after_rev`` is negative or after the object's current rev.
        NotFound: the object does not exist (or was deleted while watched: the stream ends).
    """
    log = log_of()
    if after_rev is not None:
        if after_rev < 0:
            raise InvalidArgument(f"cannot resume a watch of {what} after rev {after_rev}; revs start at 0")
        if after_rev > log.rev:
            raise InvalidArgument(
                f"cannot resume a watch of {what} after rev {after_rev}: its current rev is {log.rev} "
                "(a rev from another object, or from before it was deleted and recreated?)"
            )
    epoch = log.epoch
    if snapshot is not None and after_rev is None:
        cursor = log.rev
        for item in _snapshot(snapshot, cursor):
            yield item
    else:
        cursor = log.rev if after_rev is None else after_rev
    while True:
        waiter = log.waiter()
        if log.epoch != epoch:
            epoch = log.epoch
            yield Reset(cursor, log.oldest_rev, log.rev, f"{what}: {log.invalid_reason}")
            cursor = log.rev
            if snapshot is not None:
                for item in _snapshot(snapshot, cursor):
                    yield item
            continue
        changes = log.since(cursor)
        if changes is None:
            oldest = log.oldest_rev
            yield Reset(
                cursor,
                oldest,
                log.rev,
                f"changes after rev {cursor} of {what} are no longer retained (oldest retained: rev {oldest})",
            )
            if snapshot is not None:
                cursor = log.rev
                for item in _snapshot(snapshot, cursor):
                    yield item
            else:
                cursor = oldest - 1
            continue
        if changes:
            # A copy: changes evicted while a slow reader drains it are still sent in order;
            # the next look at the log notices the gap.
            for change in changes:
                yield change
                cursor = change.rev
            continue
        if log.closed:
            raise NotFound(f"{what} was deleted")
        try:
            await asyncio.wait_for(waiter.wait(), settings.progress_s)
        except TimeoutError:
            yield Progress(cursor)
        if log_of() is not log:
            raise NotFound(f"{what} was deleted")


def _snapshot(snapshot: Callable[[], list[S]], rev: int) -> list[WatchItem]:
    """The snapshot as chunks plus its end marker (taken synchronously, as of ``rev``)."""
    entries = snapshot()
    items: list[WatchItem] = [
        SnapshotChunk(rev, tuple(entries[i : i + SNAPSHOT_CHUNK])) for i in range(0, len(entries), SNAPSHOT_CHUNK)
    ]
    items.append(SnapshotEnd(rev))
    return items
