"""In-process fan-out of events to live watchers.

Durable event logs live in the store; the hub only wakes watchers in this process.
:class:`Topics` keeps one retained change log (:class:`~apothic.server.watch.ChangeLog`) per
watched topic (an app, a deployment), and every watcher of the topic is a cursor over it,
driven by :func:`apothic.server.watch.watch`: a watcher that reads slower than the topic
changes and falls out of the retained window gets a ``Reset`` (and a fresh snapshot when it
asked for one), never a silent gap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from apothic.server.watch import ChangeLog, WatchSettings

T = TypeVar("T")


class Signal:
    """A level-triggered "something changed" flag many waiters can await."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        """Wakes everyone waiting now."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def waiter(self) -> asyncio.Event:
        """Take this before checking state, then await ``.wait()`` on it."""
        return self._event


class Topics(Generic[T]):
    """A change log per topic, kept only while someone watches the topic, so publishing to
    an unwatched topic costs one dictionary lookup.

    Args:
        settings: ``retention`` is how many changes each topic keeps for its slowest watcher.
    """

    def __init__(self, settings: WatchSettings) -> None:
        self.settings = settings
        self._logs: dict[str, ChangeLog[T]] = {}
        self._watchers: dict[str, int] = {}

    def watched(self, topic: str) -> bool:
        """Whether anyone watches ``topic``."""
        return topic in self._logs

    @contextlib.contextmanager
    def subscribed(self, topic: str, rev: int = 0) -> Iterator[ChangeLog[T]]:
        """Registers a watcher of ``topic`` for the block and yields the topic's log.

        Args:
            topic: what is watched.
            rev: the topic's current rev, used when nobody watched it yet; later changes
                must be published with greater revs (or none: see :meth:`publish`).
        """
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = ChangeLog(rev, self.settings.retention)
        self._watchers[topic] = self._watchers.get(topic, 0) + 1
        try:
            yield log
        finally:
            left = self._watchers[topic] - 1
            if left:
                self._watchers[topic] = left
            else:
                del self._watchers[topic]
                del self._logs[topic]

    def close(self, topic: str) -> None:
        """The topic's object was deleted: its watches end once they sent what is retained."""
        log = self._logs.get(topic)
        if log is not None:
            log.close()

    def publish(self, topic: str, items: list[T] | tuple[T, ...], rev: int | None = None) -> None:
        """Appends one change to ``topic``'s log when it is watched.

        Args:
            topic: where the change happened.
            items: what changed.
            rev: the change's rev; None numbers it after the log's last one. A change at a rev
                the log already covers is dropped: its watchers subscribed after the change
                was made, so their starting point (or snapshot) includes it.
        """
        log = self._logs.get(topic)
        if log is None:
            return
        if rev is None:
            rev = log.rev + 1
        elif rev <= log.rev:
            return
        log.append(rev, items)
