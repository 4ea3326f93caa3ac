"""``Dict``: a named, durable key-value map with per-key versions and compare-and-set.

Example::

    counters = apothic.Dict.from_name("counters")
    counters["visits"] = 0
    while True:
        entry = counters.get_entry("visits")
        try:
            counters.compare_and_set("visits", entry.version, entry.value + 1)
            break
        except apothic.exceptions.FailedPreconditionError:
            continue  # someone else wrote first: read again

Every write answers after it committed. Each key carries a ``version`` (1 when created, +1
per write; a missing key has version 0) and ``mod_rev``/``create_rev``, the dict's ``rev``
at its last and first write; the dict's ``rev`` grows by one with each committed mutation,
across control-plane restarts too. Mutations take an optional ``request_id``: a retried
request with the same id is applied once and answers as the first did.

Keys are non-empty strings of at most 512 UTF-8 bytes; values are anything cloudpickle can
serialize, up to 1 MiB serialized.

Leases: ``lease = d.grant(ttl_s)`` makes a lease that expires ``ttl_s`` seconds from now on
the control plane's clock; ``d.put(key, value, lease=lease)`` attaches a key to it (a later
put without ``lease`` detaches it). ``d.keepalive(lease)`` moves the deadline to now + TTL;
when the lease is revoked (``d.revoke(lease)``) or expires, every attached key is deleted,
each delete raising the dict's rev by one.

Locks with fencing::

    with d.lock("leader", ttl_s=10) as token:
        d.put("config", new_config, fence=("leader", token))

``d.lock(name)`` waits for the lock (``timeout=`` seconds, forever by default), holds it as
the key ``__lock__/<name>`` attached to a lease that it keeps alive in the background, and
revokes that lease on exit. The token is the dict's rev at acquisition, so tokens of one
lock strictly increase across acquisitions. A put with ``fence=(name, token)`` is applied
only while the lock is still held with that token; if the holder stalled past its TTL and
lost the lock, the put fails with :class:`~apothic.exceptions.FailedPreconditionError`.
Leader election builds on locks: see :meth:`Dict.election` and :mod:`apothic.election`.

Watches::

    for item in d.watch(snapshot=True, prefix="jobs/"):
        ...  # DictEntry... SnapshotEnd, then DictChange / Progress / Reset

``d.watch(snapshot=True)`` yields every entry as of one rev (:class:`DictEntry`), then
:class:`~apothic.watch.SnapshotEnd`, then one :class:`DictChange` per committed mutation,
revs strictly increasing, none missing or repeated; :class:`~apothic.watch.Progress` when
nothing changed for a while, and :class:`~apothic.watch.Reset` (then a fresh snapshot, when
asked for) when the watcher fell behind the changes the control plane retains.
``after_rev=`` resumes after a rev seen earlier.

Ephemeral dicts::

    with apothic.Dict.ephemeral() as d:
        d["scratch"] = 1

get a unique name, are kept alive by a background heartbeat while the block runs, and are
deleted when it exits; if the client dies, the control plane deletes them once the
heartbeats stop (30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import cloudpickle

from apothic._dict_ephemeral import Ephemeral
from apothic._lazy import get_client
from apothic._sync import iter_sync, run_sync
from apothic.config import ClientConfig
from apothic.exceptions import NotFoundError, SerializationError
from apothic.watch import Progress, Reset, SnapshotEnd

if TYPE_CHECKING:
    from apothic.election import Election

__all__ = [
    "Dict",
    "DictChange",
    "DictCompare",
    "DictDelete",
    "DictEntry",
    "DictEvent",
    "DictLock",
    "DictPut",
    "DictTxnResult",
    "DictWatchItem",
    "Lease",
]

CompareOp = Literal["==", "!=", ">", "<"]
_PAGE = 1000
#: Longest wait of one acquisition call (the control plane's cap); longer waits call again.
_LOCK_WAIT_S = 60.0


@dataclass(frozen=True)
class DictEntry:
    """One key of a dict as stored.

    Attributes:
        key: the key.
        value: the value.
        version: 1 when the key was created, +1 per write since.
        mod_rev: the dict's rev of the last write to this key.
        create_rev: the dict's rev of the write that created this key.
        lease_id: the lease the key is attached to ("" for none).
    """

    key: str
    value: Any
    version: int
    mod_rev: int
    create_rev: int
    lease_id: str = ""


@dataclass(frozen=True)
class DictEvent:
    """What a change did to one key.

    Attributes:
        type: ``"put"`` (the key was written) or ``"delete"`` (it was deleted, by a delete,
            a transaction, or the end of its lease).
        key: the key.
        entry: for a put, the key as written (value, version, revisions, lease).
    """

    type: Literal["put", "delete"]
    key: str
    entry: DictEntry | None = None


@dataclass(frozen=True)
class DictChange:
    """Everything one committed mutation did to the watched keys.

    Attributes:
        rev: the dict's rev of the mutation.
        events: one per key, in the mutation's order.
    """

    rev: int
    events: tuple[DictEvent, ...]


DictWatchItem: TypeAlias = DictEntry | DictChange | SnapshotEnd | Progress | Reset
"""What :meth:`Dict.watch` yields: snapshot entries, changes and the watch markers."""


@dataclass(frozen=True)
class DictCompare:
    """A condition of :meth:`Dict.txn`: ``version(key) <op> version``; a missing key has
    version 0, so ``DictCompare(key, "==", 0)`` means "absent" and ``DictCompare(key, ">",
    0)`` "present".

    Attributes:
        key: the key compared.
        op: one of ``==``, ``!=``, ``>``, ``<``.
        version: the version compared with.
    """

    key: str
    op: CompareOp = "=="
    version: int = 0


@dataclass(frozen=True)
class DictPut:
    """An operation of :meth:`Dict.txn` that writes ``key``."""

    key: str
    value: Any


@dataclass(frozen=True)
class DictDelete:
    """An operation of :meth:`Dict.txn` that deletes ``key`` (nothing when it is missing)."""

    key: str


@dataclass(frozen=True)
class DictTxnResult:
    """How :meth:`Dict.txn` went.

    Attributes:
        succeeded: every compare held and the ``then`` branch ran; else the ``else_``
            branch ran.
        rev: the dict's rev after the transaction.
    """

    succeeded: bool
    rev: int


@dataclass(frozen=True)
class Lease:
    """A lease of a dict (see :meth:`Dict.grant`).

    Attributes:
        lease_id: the lease's id.
        ttl_s: its time to live, in seconds.
        deadline: when it expires unless kept alive, on the control plane's clock.
    """

    lease_id: str
    ttl_s: float
    deadline: datetime


def _lease_id(lease: Lease | str | None) -> str:
    if lease is None:
        return ""
    return lease if isinstance(lease, str) else lease.lease_id


class DictLock:
    """A lock of a dict, held inside ``with`` (or ``async with``); see :meth:`Dict.lock`.

    Attributes:
        name: the lock's name.
        token: the fencing token of the current acquisition (None when not held).
        lease: the lease that holds the lock (None when not held).
        lost: whether the lease ended while held (a keepalive found it expired).
    """

    def __init__(self, d: Dict, name: str, *, ttl_s: float, timeout: float | None, value: bytes | None = None) -> None:
        self.name = name
        self.token: int | None = None
        self.lease: Lease | None = None
        self.lost = False
        self._d = d
        self._ttl_s = ttl_s
        self._timeout = timeout
        #: What the lock key holds, serialized (an election's leader value); None: the lease id.
        self._value = value
        self._keepalive_task: asyncio.Task[None] | None = None

    async def acquire(self) -> int:
        """Waits for the lock and returns the fencing token.

        Raises:
            TimeoutError: not acquired within ``timeout`` seconds.
        """
        client = get_client(self._d._config)
        loop = asyncio.get_running_loop()
        give_up = None if self._timeout is None else loop.time() + self._timeout
        while True:
            wait = _LOCK_WAIT_S if give_up is None else max(0.0, min(_LOCK_WAIT_S, give_up - loop.time()))
            acquired = await client.dict_acquire_lock(self._d.name, self.name, self._ttl_s, wait, value=self._value)
            if acquired is not None:
                break
            if give_up is not None and loop.time() >= give_up:
                raise TimeoutError(
                    f"lock {self.name!r} of dict {self._d.name!r} was not acquired within {self._timeout} s"
                )
        self.lease, self.token = acquired
        self.lost = False
        self._keepalive_task = asyncio.create_task(self._keepalive(), name=f"apothic-dict-lock-{self.name}")
        return self.token

    async def release(self) -> bool:
        """Stops the keepalive and releases the lock; returns whether it was still held."""
        await self._stop_keepalive()
        token, self.token, self.lease = self.token, None, None
        if token is None:
            return False
        return bool(await get_client(self._d._config).dict_release_lock(self._d.name, self.name, token))

    async def _keepalive(self) -> None:
        assert self.lease is not None
        client = get_client(self._d._config)
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                self.lease = await client.dict_keepalive(self._d.name, self.lease.lease_id)
            except NotFoundError:
                self.lost = True
                return
            except Exception:
                continue  # a transient failure: the next keepalive still lands within the TTL

    async def _stop_keepalive(self) -> None:
        task, self._keepalive_task = self._keepalive_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __enter__(self) -> int:
        return run_sync(self.acquire(), "with d.lock()", async_form="async with d.aio.lock(...)")

    def __exit__(self, *exc: object) -> None:
        run_sync(self.release(), "with d.lock()", async_form="async with d.aio.lock(...)")

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()


def encode_value(key: str, value: Any) -> bytes:
    """Serializes a value for ``key`` with cloudpickle.

    Raises:
        SerializationError: the value cannot be pickled.
    """
    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"the value for dict key {key!r} cannot be serialized: {exc}") from exc


class _DictAio:
    """The async forms of :class:`Dict`'s methods (``d.aio.get(key)``…)."""

    def __init__(self, d: Dict) -> None:
        self._d = d

    def _client(self) -> Any:
        return get_client(self._d._config)

    async def get(self, key: str, default: Any = None) -> Any:
        """Returns the value of ``key``, or ``default`` when it is missing."""
        entry = await self.get_entry(key)
        return default if entry is None else entry.value

    async def get_entry(self, key: str) -> DictEntry | None:
        """Returns ``key`` with its version and revisions, or None when it is missing."""
        entry: DictEntry | None = await self._client().dict_get(self._d.name, key)
        return entry

    async def contains(self, key: str) -> bool:
        """Whether ``key`` exists."""
        return await self.get_entry(key) is not None

    async def put(
        self,
        key: str,
        value: Any,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
        lease: Lease | str | None = None,
        fence: tuple[str, int] | None = None,
        request_id: str = "",
    ) -> int:
        """Writes ``key`` and returns its new version.

        Args:
            key: the key.
            value: any value cloudpickle can serialize, up to 1 MiB serialized.
            if_absent: write only when the key does not exist.
            if_version: write only when the key is at this version (0: does not exist).
            lease: attach the key to this lease: it is deleted when the lease ends.
            fence: ``(lock name, token)``: write only while that lock is held with that
                token (see :meth:`Dict.lock`).
            request_id: a retried call with the same id is applied once.

        Raises:
            FailedPreconditionError: the condition does not hold (the message names the
                key's current version), or the fence's token is stale.
            NotFoundError: the lease expired or was revoked.
            InvalidArgumentError: a bad key, or a value over 1 MiB.
        """
        version, _ = await self._client().dict_put(
            self._d.name,
            key,
            value,
            if_absent=if_absent,
            if_version=if_version,
            lease_id=_lease_id(lease),
            fence=fence,
            request_id=request_id,
        )
        return int(version)

    async def grant(self, ttl_s: float) -> Lease:
        """Grants a lease that expires ``ttl_s`` seconds from now (on the control plane's
        clock) unless kept alive.

        Raises:
            InvalidArgumentError: the TTL is out of range (0.05 s to one day).
        """
        lease: Lease = await self._client().dict_grant(self._d.name, float(ttl_s))
        return lease

    async def keepalive(self, lease: Lease | str) -> datetime:
        """Extends ``lease`` to now + its TTL and returns its new deadline.

        Raises:
            NotFoundError: the lease expired or was revoked.
        """
        renewed: Lease = await self._client().dict_keepalive(self._d.name, _lease_id(lease))
        return renewed.deadline

    async def revoke(self, lease: Lease | str) -> bool:
        """Ends ``lease`` and deletes every key attached to it; returns whether it was live."""
        return bool(await self._client().dict_revoke(self._d.name, _lease_id(lease)))

    def lock(self, name: str, *, ttl_s: float = 10.0, timeout: float | None = None) -> DictLock:
        """A lock for ``async with`` (see :meth:`Dict.lock`)."""
        return DictLock(self._d, name, ttl_s=ttl_s, timeout=timeout)

    async def compare_and_set(self, key: str, expected_version: int, value: Any, *, request_id: str = "") -> int:
        """Writes ``key`` only when it is at ``expected_version`` (0: does not exist);
        returns the new version (see :meth:`put`)."""
        return await self.put(key, value, if_version=expected_version, request_id=request_id)

    async def delete(self, key: str, *, request_id: str = "") -> bool:
        """Deletes ``key``; returns whether it existed."""
        deleted, _ = await self._client().dict_delete(self._d.name, key, request_id=request_id)
        return bool(deleted)

    async def len(self) -> int:
        """The number of keys."""
        _, length = await self._client().get_dict(self._d.name)
        return int(length)

    async def rev(self) -> int:
        """The dict's current rev."""
        rev, _ = await self._client().get_dict(self._d.name)
        return int(rev)

    async def entries(self, prefix: str = "") -> AsyncIterator[DictEntry]:
        """Yields every entry in key order (only keys starting with ``prefix``), a page at a
        time."""
        async for entry in self._pages(prefix, keys_only=False):
            yield entry

    async def _pages(self, prefix: str, *, keys_only: bool) -> AsyncIterator[DictEntry]:
        client = self._client()
        after = ""
        while True:
            page, more = await client.dict_list(
                self._d.name, prefix=prefix, start_after=after, limit=_PAGE, keys_only=keys_only
            )
            for entry in page:
                yield entry
            if not more or not page:
                return
            after = page[-1].key

    async def keys(self, prefix: str = "") -> list[str]:
        """Every key in order (only those starting with ``prefix``)."""
        return [e.key async for e in self._pages(prefix, keys_only=True)]

    async def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """Every ``(key, value)`` in key order (only keys starting with ``prefix``)."""
        return [(e.key, e.value) async for e in self._pages(prefix, keys_only=False)]

    async def watch(
        self, *, snapshot: bool = False, after_rev: int | None = None, prefix: str = ""
    ) -> AsyncIterator[DictWatchItem]:
        """Streams the dict's changes until the dict is deleted (see :meth:`Dict.watch`)."""
        stream = self._client().dict_watch(self._d.name, snapshot=snapshot, after_rev=after_rev, prefix=prefix)
        async with contextlib.aclosing(stream):
            async for item in stream:
                yield item

    async def txn(
        self,
        compares: list[DictCompare],
        then: list[DictPut | DictDelete],
        else_: list[DictPut | DictDelete] | None = None,
        *,
        request_id: str = "",
    ) -> DictTxnResult:
        """Applies ``then`` when every compare holds, else ``else_``, atomically.

        Args:
            compares: conditions on key versions (see :class:`DictCompare`).
            then: puts and deletes applied when all compares hold.
            else_: puts and deletes applied otherwise.
            request_id: a retried call with the same id is applied once.

        Returns:
            Which branch ran and the dict's rev after it.

        Raises:
            InvalidArgumentError: a bad key or value, or a key twice in one branch.
        """
        result: DictTxnResult = await self._client().dict_txn(
            self._d.name, list(compares), list(then), list(else_ or []), request_id=request_id
        )
        return result


class _FromName:
    """``Dict.from_name(...)``, with its async form ``Dict.from_name.aio(...)``."""

    def __get__(self, obj: object, owner: type[Dict]) -> _BoundFromName:
        return _BoundFromName(owner)


class _BoundFromName:
    def __init__(self, cls: type[Dict]) -> None:
        self._cls = cls

    def __call__(self, name: str, create_if_missing: bool = True, *, client: ClientConfig | None = None) -> Dict:
        """Returns a handle on the dict ``name`` of your account.

        Args:
            name: 1-63 letters, digits, ``-`` or ``_``.
            create_if_missing: create the dict when it does not exist.
            client: the control plane to use (the default configuration when None).

        Raises:
            NotFoundError: the dict does not exist and ``create_if_missing`` is false.
        """
        return run_sync(
            self.aio(name, create_if_missing, client=client),
            "Dict.from_name()",
            async_form="await Dict.from_name.aio(...)",
        )

    async def aio(self, name: str, create_if_missing: bool = True, *, client: ClientConfig | None = None) -> Dict:
        """The async form of ``Dict.from_name``."""
        d = self._cls(name, client=client)
        c = get_client(client)
        if create_if_missing:
            await c.create_dict(name, exist_ok=True)
        else:
            await c.get_dict(name)
        return d


class _DeleteMethod:
    """``Dict.delete(name)`` deletes a whole dict; ``d.delete(key)`` deletes one key."""

    def __get__(self, obj: Dict | None, owner: type[Dict]) -> Callable[..., Any]:
        if obj is None:
            return owner._delete_dict
        return obj._delete_key


class Dict:
    """A named, durable key-value map (see the module docstring for the guarantees).

    Get one with :meth:`from_name`. Blocking methods have async forms under ``.aio``.

    Attributes:
        name: the dict's name.
    """

    def __init__(self, name: str, *, client: ClientConfig | None = None) -> None:
        self.name = name
        self._config = client
        self.aio = _DictAio(self)

    #: ``Dict.from_name(name)`` (or ``await Dict.from_name.aio(name)``): a handle on a dict.
    from_name = _FromName()

    @classmethod
    def _delete_dict(cls, name: str, *, client: ClientConfig | None = None) -> None:
        """Deletes the dict ``name`` and every key in it (``Dict.delete(name)``).

        Raises:
            NotFoundError: the dict does not exist.
        """

        async def delete() -> None:
            await get_client(client).delete_dict(name)

        run_sync(delete(), "Dict.delete()")

    #: ``Dict.delete(name)`` deletes a dict; ``d.delete(key)`` deletes one of its keys.
    delete = _DeleteMethod()

    #: ``with Dict.ephemeral() as d:`` (or ``async with Dict.ephemeral.aio() as d:``): a dict
    #: with a unique name, deleted when the block exits (see :class:`~apothic._dict_ephemeral.Ephemeral`).
    ephemeral = Ephemeral()

    def __repr__(self) -> str:
        return f"Dict({self.name!r})"

    def get(self, key: str, default: Any = None) -> Any:
        """Returns the value of ``key``, or ``default`` when it is missing."""
        return run_sync(self.aio.get(key, default), "d.get()")

    def get_entry(self, key: str) -> DictEntry | None:
        """Returns ``key`` with its version and revisions, or None when it is missing."""
        return run_sync(self.aio.get_entry(key), "d.get_entry()")

    def contains(self, key: str) -> bool:
        """Whether ``key`` exists."""
        return run_sync(self.aio.contains(key), "d.contains()")

    def put(
        self,
        key: str,
        value: Any,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
        lease: Lease | str | None = None,
        fence: tuple[str, int] | None = None,
        request_id: str = "",
    ) -> int:
        """Writes ``key`` and returns its new version (see :meth:`_DictAio.put`).

        Raises:
            FailedPreconditionError: ``if_absent`` or ``if_version`` does not hold, or the
                ``fence`` token is stale.
            NotFoundError: ``lease`` expired or was revoked.
            InvalidArgumentError: a bad key, or a value over 1 MiB.
        """
        return run_sync(
            self.aio.put(
                key,
                value,
                if_absent=if_absent,
                if_version=if_version,
                lease=lease,
                fence=fence,
                request_id=request_id,
            ),
            "d.put()",
        )

    def grant(self, ttl_s: float) -> Lease:
        """Grants a lease that expires ``ttl_s`` seconds from now unless kept alive (see
        :meth:`_DictAio.grant`)."""
        return run_sync(self.aio.grant(ttl_s), "d.grant()")

    def keepalive(self, lease: Lease | str) -> datetime:
        """Extends ``lease`` to now + its TTL and returns its new deadline.

        Raises:
            NotFoundError: the lease expired or was revoked.
        """
        return run_sync(self.aio.keepalive(lease), "d.keepalive()")

    def revoke(self, lease: Lease | str) -> bool:
        """Ends ``lease`` and deletes every key attached to it; returns whether it was live."""
        return run_sync(self.aio.revoke(lease), "d.revoke()")

    def lock(self, name: str, *, ttl_s: float = 10.0, timeout: float | None = None) -> DictLock:
        """A lock to hold with ``with d.lock(name) as token:``.

        Entering waits for the lock and returns its fencing token; while held, the lease
        behind it is kept alive in the background; leaving releases it. Use the token in
        ``d.put(key, value, fence=(name, token))``.

        Args:
            name: the lock's name (its key is ``__lock__/<name>``).
            ttl_s: the lease's TTL: a holder that stalls this long loses the lock.
            timeout: seconds to wait for the lock (None: forever).

        Raises:
            TimeoutError: on entering, when not acquired within ``timeout``.
        """
        return DictLock(self, name, ttl_s=ttl_s, timeout=timeout)

    def compare_and_set(self, key: str, expected_version: int, value: Any, *, request_id: str = "") -> int:
        """Writes ``key`` only when it is at ``expected_version`` (0: does not exist).

        Returns:
            The key's new version.

        Raises:
            FailedPreconditionError: the key is at another version.
        """
        return run_sync(
            self.aio.compare_and_set(key, expected_version, value, request_id=request_id), "d.compare_and_set()"
        )

    def _delete_key(self, key: str, *, request_id: str = "") -> bool:
        """Deletes ``key``; returns whether it existed (``d.delete(key)``; ``del d[key]``
        raises KeyError instead when it is missing)."""
        return run_sync(self.aio.delete(key, request_id=request_id), "d.delete()")

    def len(self) -> int:
        """The number of keys."""
        return run_sync(self.aio.len(), "d.len()")

    def rev(self) -> int:
        """The dict's current rev."""
        return run_sync(self.aio.rev(), "d.rev()")

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in order (only those starting with ``prefix``)."""
        return run_sync(self.aio.keys(prefix), "d.keys()")

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """Every ``(key, value)`` in key order (only keys starting with ``prefix``)."""
        return run_sync(self.aio.items(prefix), "d.items()")

    def entries(self, prefix: str = "") -> Iterator[DictEntry]:
        """Yields every entry in key order, a page at a time."""
        return iter_sync(self.aio.entries(prefix), "d.entries()")

    def watch(
        self, *, snapshot: bool = False, after_rev: int | None = None, prefix: str = ""
    ) -> Iterator[DictWatchItem]:
        """Yields the dict's changes as they commit, until the dict is deleted.

        With ``snapshot``, first every entry (:class:`DictEntry`, in key order) as of one
        rev and :class:`~apothic.watch.SnapshotEnd` with that rev; then one
        :class:`DictChange` per committed mutation after it, revs strictly increasing, none
        missing or repeated. :class:`~apothic.watch.Progress` comes when nothing changed for
        a while (every change up to its rev was sent: a rev to resume from), and
        :class:`~apothic.watch.Reset` when changes the watcher did not see are no longer
        retained (it resumed from an old rev, or read slower than writers wrote); with
        ``snapshot`` a fresh snapshot follows it.

        Args:
            snapshot: start with the current entries.
            after_rev: resume after this rev (a change's or a marker's); with ``snapshot``,
                a snapshot is then sent only after a reset.
            prefix: only keys that start with this (changes touching none of them are
                skipped).

        Raises:
            NotFoundError: the dict does not exist, or was deleted while watched.
            InvalidArgumentError: ``after_rev`` is negative or after the dict's rev.
        """
        return iter_sync(self.aio.watch(snapshot=snapshot, after_rev=after_rev, prefix=prefix), "d.watch()")

    def election(self, name: str) -> Election:
        """A leader election held on this dict (see :mod:`apothic.election`).

        Args:
            name: the election's name; its leader key is ``__lock__/election/<name>``.
        """
        from apothic.election import Election

        return Election(self, name)

    def txn(
        self,
        compares: list[DictCompare],
        then: list[DictPut | DictDelete],
        else_: list[DictPut | DictDelete] | None = None,
        *,
        request_id: str = "",
    ) -> DictTxnResult:
        """Applies ``then`` when every compare holds, else ``else_``, atomically (see
        :meth:`_DictAio.txn`)."""
        return run_sync(self.aio.txn(compares, then, else_, request_id=request_id), "d.txn()")

    def __getitem__(self, key: str) -> Any:
        entry = self.get_entry(key)
        if entry is None:
            raise KeyError(key)
        return entry.value

    def __setitem__(self, key: str, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        if not self._delete_key(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.contains(key)

    def __len__(self) -> int:
        return self.len()
