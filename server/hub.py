"""In-process fan-out of events to live watchers.

Durable event logs live in the store; the hub only wakes watchers in this process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("apothic.server.hub")

#: Events a slow subscriber may have queued before it is cut off.
SUBSCRIBER_BUFFER = 10_000


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


class Subscription(Generic[T]):
    """A bounded queue of events for one watcher; closed when it falls too far behind."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[T | None] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self.overflowed = False

    def push(self, item: T) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(None)


class Topics(Generic[T]):
    """Subscriptions keyed by topic (an app, a deployment)."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription[T]]] = defaultdict(set)

    def subscribe(self, topic: str) -> Subscription[T]:
        sub: Subscription[T] = Subscription()
        self._subs[topic].add(sub)
        return sub

    def unsubscribe(self, topic: str, sub: Subscription[T]) -> None:
        subs = self._subs.get(topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[topic]

    def publish(self, topic: str, item: T) -> None:
        for sub in self._subs.get(topic, ()):
            sub.push(item)
