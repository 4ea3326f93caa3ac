"""Leader election on a :class:`~apothic.dict.Dict`: campaign, proclaim, resign, leader,
observe (in the manner of etcd's concurrency package).

Example::

    election = apothic.Dict.from_name("cluster").election("scheduler")
    with election.campaign("host-a", ttl_s=10) as leadership:
        # This process leads until the block ends (or its lease lapses: leadership.lost).
        d.put("plan", plan, fence=leadership.fence)  # applied only while still leading
        leadership.proclaim("host-a: draining")

    for leader in election.observe():
        print(leader.value, leader.token)

An election is a lock of the dict (:meth:`~apothic.dict.Dict.lock`) named
``election/<name>`` whose key holds the leader's value. Campaigning waits for the key to be
absent and creates it attached to a new lease, which a background task keeps alive while
leading. A leader that dies or stalls stops keeping its lease alive, so the control plane
deletes its key at most ``ttl_s`` later and a waiting candidate takes over. The leader's
``token`` is the key's ``create_rev``: it strictly increases from one leader to the next,
survives proclamations, and fences writes (``fence=leadership.fence``) so that a deposed
leader's writes are rejected.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from apothic._lazy import get_client
from apothic._sync import iter_sync, run_sync
from apothic.dict import DictChange, DictEntry, DictLock, encode_value
from apothic.exceptions import UsageError

if TYPE_CHECKING:
    from apothic.dict import Dict, Lease

__all__ = ["Election", "ElectionLeader", "Leadership"]

#: The lock an election named ``name`` is held as.
_LOCK_PREFIX = "election/"
#: The key that holds a lock (see ``apothic.server.dict_records.LOCK_PREFIX``).
_LOCK_KEY_PREFIX = "__lock__/"


@dataclass(frozen=True)
class ElectionLeader:
    """An election's leader as observed.

    Attributes:
        value: what the leader campaigned with or last proclaimed.
        token: the leader's fencing token; strictly greater for each new leader.
        rev: the dict's rev of the leader's latest campaign or proclamation.
    """

    value: Any
    token: int
    rev: int


def _leader(entry: DictEntry) -> ElectionLeader:
    return ElectionLeader(value=entry.value, token=entry.create_rev, rev=entry.mod_rev)


class _LeadershipAio:
    """The async forms of :class:`Leadership`'s methods."""

    def __init__(self, leadership: Leadership) -> None:
        self._l = leadership

    async def proclaim(self, value: Any) -> None:
        """Replaces the leader's value, only while still leading (see
        :meth:`Leadership.proclaim`)."""
        lead = self._l
        token, lease = lead._lock.token, lead._lock.lease
        if token is None or lease is None:
            raise UsageError(f"election {lead.election.name!r}: this leadership was resigned; campaign again")
        election = lead.election
        await get_client(election.dict._config).dict_put(
            election.dict.name, election.key, value, lease_id=lease.lease_id, fence=(election.lock_name, token)
        )
        lead.value = value

    async def resign(self) -> bool:
        """Gives up leadership (see :meth:`Leadership.resign`)."""
        return await self._l._lock.release()


class Leadership:
    """Being an election's leader; returned by :meth:`Election.campaign`.

    Leaving a ``with`` (or ``async with``) block resigns.

    Attributes:
        election: the election.
        value: the value this leader campaigned with or last proclaimed.
    """

    def __init__(self, election: Election, lock: DictLock, value: Any) -> None:
        self.election = election
        self.value = value
        self._lock = lock
        self.aio = _LeadershipAio(self)

    @property
    def token(self) -> int | None:
        """The fencing token (None after resigning)."""
        return self._lock.token

    @property
    def lease(self) -> Lease | None:
        """The lease that keeps this leadership (None after resigning)."""
        return self._lock.lease

    @property
    def lost(self) -> bool:
        """Whether the lease ended while leading (a keepalive found it expired): another
        candidate may lead now."""
        return self._lock.lost

    @property
    def fence(self) -> tuple[str, int]:
        """``fence=`` for :meth:`~apothic.dict.Dict.put`: the write is applied only while
        this leadership lasts.

        Raises:
            UsageError: this leadership was resigned.
        """
        if self._lock.token is None:
            raise UsageError(f"election {self.election.name!r}: this leadership was resigned; campaign again")
        return (self.election.lock_name, self._lock.token)

    def proclaim(self, value: Any) -> None:
        """Replaces the leader's value (observers see it), only while still leading.

        Raises:
            FailedPreconditionError: the leadership was lost (its lease lapsed).
            UsageError: this leadership was resigned.
        """
        run_sync(self.aio.proclaim(value), "leadership.proclaim()")

    def resign(self) -> bool:
        """Gives up leadership (the next candidate takes over at once); returns whether it
        was still held."""
        return run_sync(self.aio.resign(), "leadership.resign()")

    def __repr__(self) -> str:
        return f"Leadership({self.election.name!r}, token={self.token})"

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.resign()

    async def __aenter__(self) -> Leadership:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aio.resign()


class _Campaign:
    """``election.aio.campaign(value)``: await it for a :class:`Leadership`, or use it in
    ``async with`` to resign when the block ends."""

    def __init__(self, election: Election, value: Any, ttl_s: float, timeout: float | None) -> None:
        self._election = election
        self._value = value
        self._ttl_s = ttl_s
        self._timeout = timeout
        self._leadership: Leadership | None = None

    async def _run(self) -> Leadership:
        e = self._election
        current = e._leadership
        if current is not None and current.token is not None and not current.lost:
            # Campaigning again would wait for our own lease to lapse.
            raise UsageError(f"election {e.name!r}: this handle already leads; proclaim a new value or resign first")
        data = encode_value(e.key, self._value)
        lock = DictLock(e.dict, e.lock_name, ttl_s=self._ttl_s, timeout=self._timeout, value=data)
        await lock.acquire()
        leadership = Leadership(e, lock, self._value)
        e._leadership = leadership
        return leadership

    def __await__(self) -> Generator[Any, None, Leadership]:
        return self._run().__await__()

    async def __aenter__(self) -> Leadership:
        self._leadership = await self._run()
        return self._leadership

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._leadership is not None:
            await self._leadership.aio.resign()


class _ElectionAio:
    """The async forms of :class:`Election`'s methods (``election.aio.campaign(v)``…)."""

    def __init__(self, election: Election) -> None:
        self._e = election

    def campaign(self, value: Any, *, ttl_s: float = 10.0, timeout: float | None = None) -> _Campaign:
        """Waits to become the leader (see :meth:`Election.campaign`); ``await`` it, or
        ``async with election.aio.campaign(v) as leadership``."""
        return _Campaign(self._e, value, ttl_s, timeout)

    async def proclaim(self, value: Any) -> None:
        """Replaces the leader's value (see :meth:`Election.proclaim`)."""
        await self._e._current().aio.proclaim(value)

    async def resign(self) -> bool:
        """Gives up this handle's leadership (see :meth:`Election.resign`)."""
        leadership = self._e._leadership
        return False if leadership is None else await leadership.aio.resign()

    async def leader(self) -> ElectionLeader | None:
        """The current leader, or None (see :meth:`Election.leader`)."""
        entry = await get_client(self._e.dict._config).dict_get(self._e.dict.name, self._e.key)
        return None if entry is None else _leader(entry)

    async def observe(self) -> AsyncIterator[ElectionLeader]:
        """Yields the leader now and each change of it (see :meth:`Election.observe`)."""
        key = self._e.key
        last = (0, 0)
        stream = get_client(self._e.dict._config).dict_watch(
            self._e.dict.name, snapshot=True, after_rev=None, prefix=key
        )
        async with contextlib.aclosing(stream):
            async for item in stream:
                found: ElectionLeader | None = None
                if isinstance(item, DictEntry) and item.key == key:
                    found = _leader(item)
                elif isinstance(item, DictChange):
                    for event in item.events:
                        if event.key == key and event.entry is not None:
                            found = _leader(event.entry)
                # A fresh snapshot after a reset repeats the leader already seen: never go back.
                if found is not None and (found.token, found.rev) > last:
                    last = (found.token, found.rev)
                    yield found


class Election:
    """A leader election held on a dict; get one with :meth:`Dict.election(name)
    <apothic.dict.Dict.election>`. See the module docstring.

    Async forms are under ``.aio``.

    Attributes:
        dict: the dict that holds it.
        name: the election's name.
        lock_name: the lock it is held as (``election/<name>``), for ``fence=`` tuples.
        key: the key that holds the leader's value.
    """

    def __init__(self, d: Dict, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise UsageError("an election name must be a non-empty string")
        self.dict = d
        self.name = name
        self.lock_name = _LOCK_PREFIX + name
        self.key = _LOCK_KEY_PREFIX + self.lock_name
        self._leadership: Leadership | None = None
        self.aio = _ElectionAio(self)

    def __repr__(self) -> str:
        return f"Election({self.dict.name!r}, {self.name!r})"

    def _current(self) -> Leadership:
        if self._leadership is None:
            raise UsageError(f"election {self.name!r}: this handle is not campaigning; call campaign() first")
        return self._leadership

    def campaign(self, value: Any, *, ttl_s: float = 10.0, timeout: float | None = None) -> Leadership:
        """Waits until this caller is the leader, with ``value``, and returns the leadership
        (use it in ``with`` to resign when the block ends).

        While leading, a background task keeps the leadership's lease alive; if this
        process stalls or dies for ``ttl_s``, the lease lapses and another candidate leads.

        Args:
            value: the leader's value, visible to :meth:`leader` and :meth:`observe`.
            ttl_s: the lease's time to live, in seconds.
            timeout: seconds to wait for leadership (None: forever).

        Raises:
            TimeoutError: not elected within ``timeout``.
            UsageError: this handle already leads.
        """
        return run_sync(self.aio.campaign(value, ttl_s=ttl_s, timeout=timeout)._run(), "election.campaign()")

    def proclaim(self, value: Any) -> None:
        """Replaces the leader's value, only while this handle still leads.

        Raises:
            FailedPreconditionError: the leadership was lost (its lease lapsed).
            UsageError: this handle never campaigned, or resigned.
        """
        run_sync(self.aio.proclaim(value), "election.proclaim()")

    def resign(self) -> bool:
        """Gives up this handle's leadership, if any; returns whether it was still held."""
        return run_sync(self.aio.resign(), "election.resign()")

    def leader(self) -> ElectionLeader | None:
        """The current leader (its value and token), or None when nobody leads."""
        return run_sync(self.aio.leader(), "election.leader()")

    def observe(self) -> Iterator[ElectionLeader]:
        """Yields the current leader (when there is one), then each new leader or new
        proclamation as it commits; tokens never go backwards (a new leader's is greater).
        Runs until the dict is deleted (NotFoundError) or the caller stops iterating.
        """
        return iter_sync(self.aio.observe(), "election.observe()")
