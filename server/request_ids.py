"""Request ids an object applied recently, so a retried request is applied once.

The SDK retries a mutation with the same request id for up to
``apothic._transport.UNAVAILABLE_RETRY_S`` seconds while the control plane is unreachable. An
id must therefore outlive that window however busy the object is: :class:`RecentRequests`
keeps every id for at least :data:`REQUEST_ID_TTL_S` seconds on the server's clock, and the
newest ``keep`` ids whatever their age. Older ids are forgotten a batch at a time (deleting
one stored id per operation would double the cost of each write).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

#: Seconds an applied request id is remembered at least (the SDK retries for 30 s).
REQUEST_ID_TTL_S = 120.0
#: Ids remembered whatever their age.
REQUEST_IDS_KEPT = 1024
#: Operations between two attempts to forget old ids.
FORGET_EVERY = 256


class RecentRequests(Generic[V]):
    """Applied request ids with what each answered, oldest first.

    Args:
        keep: ids always kept.
        ttl_s: seconds each id is kept at least.
        forget_every: additions between two attempts to forget.
    """

    def __init__(
        self, *, keep: int = REQUEST_IDS_KEPT, ttl_s: float = REQUEST_ID_TTL_S, forget_every: int = FORGET_EVERY
    ) -> None:
        self.keep = keep
        self.ttl_s = ttl_s
        self.forget_every = forget_every
        self._ids: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self._added = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def get(self, request_id: str) -> V | None:
        """What ``request_id`` answered, or None when it is not remembered."""
        found = self._ids.get(request_id)
        return found[0] if found is not None else None

    def restore(self, request_id: str, value: V, at: float) -> None:
        """Adds a stored id at load time (call in the order they were applied)."""
        self._ids[request_id] = (value, at)

    def due(self, now: float) -> list[str] | None:
        """The ids to forget with the next addition: None when no attempt is due yet (most
        additions), else those past ``ttl_s`` beyond the newest ``keep`` (maybe none).
        Nothing changes until :meth:`add`."""
        if self._added + 1 < self.forget_every or len(self._ids) < self.keep:
            return None
        cutoff = now - self.ttl_s
        forget: list[str] = []
        for old_id, (_, at) in self._ids.items():
            if len(self._ids) + 1 - len(forget) <= self.keep or at > cutoff:
                break
            forget.append(old_id)
        return forget

    def add(self, request_id: str, value: V, now: float, forget: list[str] | None) -> None:
        """Remembers an applied id and forgets ``forget`` (what :meth:`due` returned, once the
        write that deletes them committed)."""
        if forget is None:
            self._added += 1
        else:
            self._added = 0
            for old_id in forget:
                self._ids.pop(old_id, None)
        self._ids[request_id] = (value, now)
