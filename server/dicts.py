"""Dicts: named, durable key-value maps with per-key versions, CAS and small transactions.

Each dict lives in control-plane memory (loaded from the store on first use) with the store
as the durable record. A mutation runs under the dict's lock: its condition is checked in
memory, then its write is committed in one transaction guarded on the dict row's write
counter (another replica that wrote in between makes the guard fail; the dict is reloaded
and the mutation re-evaluated). A mutation that writes nothing (a failed condition, a
delete of a missing key) first checks that counter in the store, so it is never decided on
a stale copy. Memory changes only after the commit, so a reader never sees a write that is
not durable. Reads are served from memory: on a replica that has not written a dict since
another replica did, they can be stale (there is no cross-replica invalidation yet).

Every committed mutation raises the dict's ``rev`` by one; each key carries ``version``
(1 on creation, +1 per write), ``mod_rev`` and ``create_rev``. Mutations may carry a
request id: the outcome is stored in the same transaction, and a retry with that id
answers the stored outcome without applying anything (ids are kept at least
:data:`~apothic.server.request_ids.REQUEST_ID_TTL_S` seconds, longer than the SDK retries).
Committed changes feed the dict's watches (:mod:`apothic.server.dict_watch`).

An ephemeral dict carries ``expires_at`` (in the store, so it survives a restart): each
heartbeat moves it to now + :data:`EPHEMERAL_LEASE_S` on the server's clock, and the sweep
deletes ephemeral dicts whose heartbeats stopped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apothic.server.deployments import validate_name
from apothic.server.dict_records import (
    COMPARE_OPS,
    KIND_OF,
    DeleteOutcome,
    DictCompare,
    DictDelete,
    DictEntryRecord,
    DictLeaseRecord,
    DictOp,
    DictPut,
    DictRecord,
    LeaseDrop,
    LeasePut,
    Outcome,
    PutOutcome,
    TxnOutcome,
    holds,
    lock_key,
    outcome_from_doc,
    outcome_to_doc,
    validate_key,
    validate_ops,
    validate_request_id,
    validate_ttl,
    validate_value,
)
from apothic.server.dict_watch import DictEventRecord, DictFeeds
from apothic.server.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound
from apothic.server.ids import new_id
from apothic.server.request_ids import RecentRequests
from apothic.server.watch import WatchItem, WatchSettings

if TYPE_CHECKING:
    from apothic.server.store import Statement, Store

#: Page size of ListDictEntries.
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
#: Times a mutation is re-evaluated after another replica wrote the same dict.
_CONFLICT_RETRIES = 5
#: Longest wait of one AcquireDictLock call; clients call again to wait longer.
MAX_LOCK_WAIT_S = 60.0
#: Real seconds between sweeps for expired leases of dicts nobody touches.
SWEEP_INTERVAL_S = 0.25
#: Longest real wait for a held lock before re-checking (expiry may need the clock only).
_LOCK_RECHECK_S = 0.5
#: Seconds an ephemeral dict lives without a heartbeat.
EPHEMERAL_LEASE_S = 30.0

log = logging.getLogger("apothic.server.dicts")


@dataclass
class _LiveDict:
    record: DictRecord
    entries: dict[str, DictEntryRecord]
    requests: RecentRequests[Outcome]
    leases: dict[str, DictLeaseRecord] = field(default_factory=dict)
    #: Keys attached to each lease.
    by_lease: dict[str, set[str]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set (and replaced) after each commit; lock waiters wait on it.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Sorted keys, rebuilt lazily after a change (for listing).
    _sorted: list[str] | None = None

    def sorted_keys(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.entries)
        return self._sorted


def _lease_gone(lease_id: str, name: str) -> NotFound:
    return NotFound(f"lease {lease_id!r} of dict {name!r} expired or was revoked; grant a new lease")


class _LockHeld(FailedPrecondition):
    """The lock key exists (another holder)."""

    def __init__(self, deadline: datetime | None) -> None:
        super().__init__("lock held")
        self.deadline = deadline


class _Conflict(Exception):
    """Another replica changed the dict since it was loaded."""


class DictManager:
    """Dicts of every account: the business logic behind DictService.

    Args:
        store: where dicts are durable.
        clock: the server's clock (injectable in tests).
        watch: how watch streams retain changes and report progress.
    """

    def __init__(self, store: Store, *, clock: Any = None, watch: WatchSettings | None = None) -> None:
        self.store = store
        self.watch_settings = watch or WatchSettings()
        #: Seconds an ephemeral dict lives without a heartbeat.
        self.ephemeral_lease_s = EPHEMERAL_LEASE_S
        self.feeds = DictFeeds(self.watch_settings)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._live: dict[tuple[str, str], _LiveDict] = {}
        self._load_locks: dict[tuple[str, str], asyncio.Lock] = {}
        #: Deadline of every ephemeral dict, by (account, name).
        self._ephemeral: dict[tuple[str, str], datetime] = {}
        self._sweep_task: asyncio.Task[None] | None = None

    def now(self) -> datetime:
        """The server's clock (lease deadlines are on it)."""
        now: datetime = self._clock()
        return now

    def set_clock(self, clock: Any) -> None:
        """Replaces the server's clock (tests drive a fake one); None restores the real one."""
        self._clock = clock or (lambda: datetime.now(UTC))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Starts the loop that expires leases of dicts nobody touches (first loading every
        dict that has leases) and deletes ephemeral dicts whose heartbeats stopped."""
        self._sweep_task = asyncio.create_task(self._sweep_loop(), name="apothic-dict-lease-sweep")

    async def close(self) -> None:
        """Stops the sweep loop."""
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep_task
            self._sweep_task = None

    async def _sweep_loop(self) -> None:
        try:
            for account, name, expires_at in await self.store.ephemeral_dicts():
                self._ephemeral.setdefault((account, name), expires_at)
            for account, name in await self.store.leased_dicts():
                with contextlib.suppress(NotFound):
                    await self._get(account, name)
            while True:
                await self.expire()
                await self.expire_ephemeral()
                await asyncio.sleep(SWEEP_INTERVAL_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dict lease sweep loop died")
            raise

    async def expire(self) -> None:
        """Expires every due lease of the dicts in memory now (deleting their keys)."""
        for (account, name), live in list(self._live.items()):
            if self._due(live):
                try:
                    await self._fresh(account, name)
                except NotFound:
                    continue

    async def expire_ephemeral(self) -> None:
        """Deletes every ephemeral dict whose heartbeats stopped (its deadline passed)."""
        now = self.now()
        for (account, name), deadline in list(self._ephemeral.items()):
            if deadline <= now:
                try:
                    await self._delete_expired(account, name)
                except NotFound:
                    self._ephemeral.pop((account, name), None)

    async def _delete_expired(self, account: str, name: str) -> None:
        live = await self._get(account, name)
        async with live.lock:
            if self._live.get((account, name)) is not live:
                return  # reloaded meanwhile: the next sweep looks again
            # The stored deadline is the authority (a heartbeat may have reached another replica).
            stored = await self.store.dict_expiry(live.record.dict_id)
            if stored is None or stored > self.now():
                if stored is None:
                    self._ephemeral.pop((account, name), None)
                else:
                    self._ephemeral[(account, name)] = stored
                return
            log.info("deleting ephemeral dict %r of %s: its client stopped heartbeating", name, account)
            await self._drop(live)

    # -- dicts -------------------------------------------------------------------------

    async def create(
        self, account: str, name: str, *, exist_ok: bool, ephemeral: bool = False
    ) -> tuple[DictRecord, int, bool]:
        """Creates a dict (or returns the existing one when ``exist_ok``).

        Args:
            account: the owner.
            name: the dict's name.
            exist_ok: return an existing dict of that name instead of raising.
            ephemeral: create it ephemeral: deleted when its heartbeats stop for
                :attr:`ephemeral_lease_s` (an existing dict is returned as it is).

        Returns:
            The dict, its number of keys, and whether this call created it.

        Raises:
            AlreadyExists: the dict exists and ``exist_ok`` is false.
        """
        validate_name("dict", name)
        async with self._load_lock(account, name):
            live = await self._load(account, name)
            if live is not None:
                if not exist_ok:
                    raise AlreadyExists(f"dict {name!r} already exists")
                return live.record, len(live.entries), False
            now = self._clock()
            expires_at = now + timedelta(seconds=self.ephemeral_lease_s) if ephemeral else None
            record = DictRecord(new_id("dicts"), account, name, 0, now, expires_at=expires_at)
            try:
                await self.store.create_dict(record)
            except Exception:
                # Another replica created it first (the unique index refused ours).
                live = await self._load(account, name)
                if live is None:
                    raise
                if not exist_ok:
                    raise AlreadyExists(f"dict {name!r} already exists") from None
                return live.record, len(live.entries), False
            live = self._live[(account, name)] = _LiveDict(record, {}, RecentRequests())
            self.feeds.attach((account, name), live)
            if expires_at is not None:
                self._ephemeral[(account, name)] = expires_at
            return record, 0, True

    async def info(self, account: str, name: str) -> tuple[DictRecord, int]:
        """A dict and its number of keys."""
        live = await self._fresh(account, name)
        return live.record, len(live.entries)

    async def delete_dict(self, account: str, name: str) -> None:
        """Deletes a dict and all its keys (every watch of it ends)."""
        for _ in range(_CONFLICT_RETRIES):
            live = await self._get(account, name)
            async with live.lock:
                if self._live.get((account, name)) is not live:
                    continue  # deleted or reloaded while we waited
                await self._drop(live)
                return
        raise NotFound(f"dict {name!r} not found")

    async def _drop(self, live: _LiveDict) -> None:
        """Deletes a dict (under its lock)."""
        key = (live.record.account, live.record.name)
        await self.store.delete_dict(live.record.dict_id)
        self._live.pop(key, None)
        self._ephemeral.pop(key, None)
        self.feeds.close(key)

    async def heartbeat(self, account: str, name: str) -> float:
        """Keeps an ephemeral dict alive for another :attr:`ephemeral_lease_s` seconds and
        returns that lease.

        Raises:
            NotFound: the dict does not exist (its heartbeats may have stopped too long ago).
            FailedPrecondition: the dict is not ephemeral.
        """
        for _ in range(_CONFLICT_RETRIES):
            live = await self._get(account, name)
            async with live.lock:
                if self._live.get((account, name)) is not live:
                    continue
                if live.record.expires_at is None:
                    raise FailedPrecondition(f"dict {name!r} is not ephemeral; only ephemeral dicts take heartbeats")
                expires_at = self.now() + timedelta(seconds=self.ephemeral_lease_s)
                await self.store.set_dict_expiry(live.record.dict_id, expires_at)
                live.record = replace(live.record, expires_at=expires_at)
                self._ephemeral[(account, name)] = expires_at
                return self.ephemeral_lease_s
        raise NotFound(f"dict {name!r} not found")

    async def watch(
        self, account: str, name: str, *, snapshot: bool, after_rev: int | None, prefix: str = ""
    ) -> AsyncIterator[WatchItem]:
        """Streams a dict's watch (see :mod:`apothic.server.dict_watch`): items whose
        changes carry :class:`~apothic.server.dict_watch.DictEventRecord` events and whose
        snapshot chunks carry :class:`DictEntryRecord` entries.

        Raises:
            InvalidArgument: a malformed name, or ``after_rev`` negative or after the
                dict's current rev.
            NotFound: the dict does not exist, or was deleted while watched.
        """
        await self._fresh(account, name)
        # No await between loading and the stream's first step: the watch starts on the
        # copy just loaded.
        async for item in self.feeds.watch((account, name), snapshot=snapshot, after_rev=after_rev, prefix=prefix):
            yield item

    # -- reads -------------------------------------------------------------------------

    async def get(self, account: str, name: str, key: str) -> tuple[DictEntryRecord | None, int]:
        """One key (None when missing) and the dict's rev."""
        validate_key(key)
        live = await self._fresh(account, name)
        return live.entries.get(key), live.record.rev

    async def list_entries(
        self, account: str, name: str, *, prefix: str = "", start_after: str = "", limit: int = 0
    ) -> tuple[list[DictEntryRecord], bool, int]:
        """Entries in key order: a page, whether more follow, and the dict's rev."""
        if limit < 0 or limit > MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit must be from 1 to {MAX_LIST_LIMIT} (0 for {DEFAULT_LIST_LIMIT})")
        limit = limit or DEFAULT_LIST_LIMIT
        live = await self._fresh(account, name)
        keys = live.sorted_keys()
        start = bisect.bisect_right(keys, start_after) if start_after else bisect.bisect_left(keys, prefix)
        page: list[DictEntryRecord] = []
        more = False
        for key in keys[start:]:
            if not key.startswith(prefix):
                if key > prefix:
                    break
                continue
            if len(page) == limit:
                more = True
                break
            page.append(live.entries[key])
        return page, more, live.record.rev

    # -- writes ------------------------------------------------------------------------

    async def put(
        self,
        account: str,
        name: str,
        key: str,
        value: bytes,
        fmt: str,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
        lease: str = "",
        fence: tuple[str, int] | None = None,
        request_id: str = "",
    ) -> PutOutcome:
        """Writes a key, optionally only when absent or at ``if_version`` (0: absent),
        attached to ``lease``, and only while lock ``fence[0]`` is held with token
        ``fence[1]``.

        Raises:
            FailedPrecondition: the condition does not hold (the message names the key's
                current version), or the fence's token is stale.
            NotFound: the lease expired or was revoked.
        """
        validate_key(key)
        validate_value(key, value)
        if if_version is not None and if_version < 0:
            raise InvalidArgument("if_version must be 0 (absent) or a version >= 1")
        fence_key = lock_key(fence[0]) if fence is not None else ""

        def plan(live: _LiveDict) -> tuple[Outcome, list[Any]]:
            # The fence first: a holder whose lease ended lost the lock, and hears that.
            if fence is not None:
                held = live.entries.get(fence_key)
                if held is None or held.create_rev != fence[1]:
                    now = "is not held" if held is None else f"is held with token {held.create_rev}"
                    raise FailedPrecondition(
                        f"fenced put of key {key!r} failed: lock {fence[0]!r} of dict {name!r} {now}, not with "
                        f"token {fence[1]}; the lock was lost, acquire it again"
                    )
            if lease and lease not in live.leases:
                raise _lease_gone(lease, name)
            entry = live.entries.get(key)
            if if_absent and entry is not None:
                raise FailedPrecondition(
                    f"put if_absent failed: key {key!r} of dict {name!r} exists at version {entry.version}"
                )
            current = entry.version if entry is not None else 0
            if if_version is not None and current != if_version:
                now = f"is at version {current}" if entry is not None else "does not exist (version 0)"
                raise FailedPrecondition(f"put if_version={if_version} failed: key {key!r} of dict {name!r} {now}")
            return PutOutcome(current + 1, live.record.rev + 1), [DictPut(key, value, fmt, lease)]

        outcome = await self._mutate(account, name, request_id, PutOutcome, plan, missing=NotFound)
        assert isinstance(outcome, PutOutcome)
        return outcome

    async def delete(self, account: str, name: str, key: str, *, request_id: str = "") -> DeleteOutcome:
        """Deletes a key; a missing key changes nothing (and does not raise the rev)."""
        validate_key(key)

        def plan(live: _LiveDict) -> tuple[Outcome, list[DictOp]]:
            if key not in live.entries:
                return DeleteOutcome(False, live.record.rev), []
            return DeleteOutcome(True, live.record.rev + 1), [DictDelete(key)]

        outcome = await self._mutate(account, name, request_id, DeleteOutcome, plan)
        assert isinstance(outcome, DeleteOutcome)
        return outcome

    async def txn(
        self,
        account: str,
        name: str,
        compares: list[DictCompare],
        then: list[DictOp],
        else_: list[DictOp],
        *,
        request_id: str = "",
    ) -> TxnOutcome:
        """Applies ``then`` when every compare holds, else ``else_``, atomically."""
        for compare in compares:
            validate_key(compare.key)
            if compare.op not in COMPARE_OPS:
                raise InvalidArgument(f"compare op {compare.op!r} is not one of {', '.join(COMPARE_OPS)}")
            if compare.version < 0:
                raise InvalidArgument("a compared version is 0 (absent) or >= 1")
        validate_ops(then, "then")
        validate_ops(else_, "else")

        def plan(live: _LiveDict) -> tuple[Outcome, list[DictOp]]:
            succeeded = all(holds(c, live.entries) for c in compares)
            ops = [op for op in (then if succeeded else else_) if isinstance(op, DictPut) or op.key in live.entries]
            return TxnOutcome(succeeded, live.record.rev + (1 if ops else 0)), ops

        outcome = await self._mutate(account, name, request_id, TxnOutcome, plan)
        assert isinstance(outcome, TxnOutcome)
        return outcome

    # -- leases ------------------------------------------------------------------------

    async def grant(self, account: str, name: str, ttl_s: float) -> DictLeaseRecord:
        """Grants a lease that expires ``ttl_s`` seconds from now on the server's clock."""
        validate_ttl(ttl_s)

        def plan(live: _LiveDict) -> tuple[Any, list[Any]]:
            lease = DictLeaseRecord(new_id("leases"), ttl_s, self.now() + timedelta(seconds=ttl_s))
            return lease, [LeasePut(lease)]

        lease: DictLeaseRecord = await self._mutate(account, name, "", DictLeaseRecord, plan)
        return lease

    async def keepalive(self, account: str, name: str, lease_id: str) -> DictLeaseRecord:
        """Moves a lease's deadline to now + its TTL.

        Raises:
            NotFound: the lease expired or was revoked.
        """

        def plan(live: _LiveDict) -> tuple[Any, list[Any]]:
            old = live.leases.get(lease_id)
            if old is None:
                raise _lease_gone(lease_id, name)
            lease = replace(old, deadline=self.now() + timedelta(seconds=old.ttl_s))
            return lease, [LeasePut(lease)]

        lease: DictLeaseRecord = await self._mutate(account, name, "", DictLeaseRecord, plan, missing=NotFound)
        return lease

    async def revoke(self, account: str, name: str, lease_id: str) -> tuple[bool, int]:
        """Ends a lease and deletes its keys (one rev per key).

        Returns:
            Whether the lease was live, and the dict's rev after the call.
        """

        def plan(live: _LiveDict) -> tuple[Any, list[Any]]:
            if lease_id not in live.leases:
                return DeleteOutcome(False, live.record.rev), []
            ops = self._revoke_ops(live, [lease_id])
            return DeleteOutcome(True, live.record.rev + _key_ops(ops)), ops

        outcome = await self._mutate(account, name, "", DeleteOutcome, plan, rev_per_key=True)
        return outcome.deleted, outcome.rev

    # -- locks -------------------------------------------------------------------------

    async def acquire_lock(
        self,
        account: str,
        name: str,
        lock: str,
        ttl_s: float,
        timeout_s: float,
        *,
        value: tuple[bytes, str] | None = None,
    ) -> tuple[DictLeaseRecord, int] | None:
        """Acquires lock ``lock``: waits up to ``timeout_s`` seconds (at most
        :data:`MAX_LOCK_WAIT_S`) for its key to be absent, then creates it attached to a
        new lease of ``ttl_s``.

        The lock key holds ``value`` (serialized bytes and format; by default the lease id
        as JSON). The token is the key's ``create_rev``: writes to the key while it is held
        (an election's proclaim) keep it.

        Returns:
            The lease and the fencing token (the rev of the write), or None on timeout.
        """
        key = lock_key(lock)
        validate_ttl(ttl_s)
        if value is not None:
            validate_value(key, value[0])
        if not math.isfinite(timeout_s) or timeout_s < 0:
            raise InvalidArgument("a lock timeout is 0 (try once) or more seconds")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + min(timeout_s, MAX_LOCK_WAIT_S)

        def plan(live: _LiveDict) -> tuple[Any, list[Any]]:
            held = live.entries.get(key)
            if held is not None:
                holder = live.leases.get(held.lease)
                raise _LockHeld(holder.deadline if holder is not None else None)
            lease = DictLeaseRecord(new_id("leases"), ttl_s, self.now() + timedelta(seconds=ttl_s))
            data, fmt = value if value is not None else (json.dumps(lease.lease_id).encode(), "json")
            return (lease, live.record.rev + 1), [LeasePut(lease), DictPut(key, data, fmt, lease.lease_id)]

        while True:
            live = await self._fresh(account, name)
            changed = live.changed
            try:
                acquired: tuple[DictLeaseRecord, int] = await self._mutate(account, name, "", tuple, plan)
                return acquired
            except _LockHeld as held:
                wait = give_up - loop.time()
                if wait <= 0:
                    return None
                if held.deadline is not None:
                    wait = min(wait, max(0.001, (held.deadline - self.now()).total_seconds()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(wait, _LOCK_RECHECK_S))

    async def release_lock(self, account: str, name: str, lock: str, token: int) -> bool:
        """Releases lock ``lock`` when it is still held with ``token`` (revokes the lease of
        that acquisition); returns whether it was."""
        key = lock_key(lock)

        def plan(live: _LiveDict) -> tuple[Any, list[Any]]:
            held = live.entries.get(key)
            if held is None or held.create_rev != token or held.lease not in live.leases:
                return DeleteOutcome(False, live.record.rev), []
            ops = self._revoke_ops(live, [held.lease])
            return DeleteOutcome(True, live.record.rev + _key_ops(ops)), ops

        outcome = await self._mutate(account, name, "", DeleteOutcome, plan, rev_per_key=True)
        return bool(outcome.deleted)

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _revoke_ops(live: _LiveDict, lease_ids: list[str]) -> list[Any]:
        """Deletes of every key attached to ``lease_ids`` (in key order), then the drops."""
        keys = sorted(k for lid in lease_ids for k in live.by_lease.get(lid, ()))
        return [*(DictDelete(k) for k in keys), *(LeaseDrop(lid) for lid in lease_ids)]

    def _due(self, live: _LiveDict) -> bool:
        return bool(live.leases) and min(le.deadline for le in live.leases.values()) <= self.now()

    async def _expire_locked(self, live: _LiveDict) -> None:
        """Revokes every due lease of ``live`` (called under its lock); raises _Conflict."""
        now = self.now()
        due = sorted(lid for lid, le in live.leases.items() if le.deadline <= now)
        if due:
            await self._commit(live, self._revoke_ops(live, due), "", None, rev_per_key=True)

    async def _fresh(self, account: str, name: str) -> _LiveDict:
        """The dict with its due leases expired (for reads)."""
        for _ in range(_CONFLICT_RETRIES):
            live = await self._get(account, name)
            if not self._due(live):
                return live
            async with live.lock:
                if self._live.get((account, name)) is not live:
                    continue
                try:
                    await self._expire_locked(live)
                except _Conflict:
                    self._live.pop((account, name), None)
                    continue
                return live
        return await self._get(account, name)

    async def _mutate(
        self,
        account: str,
        name: str,
        request_id: str,
        kind: type[Any],
        plan: Any,
        *,
        rev_per_key: bool = False,
        missing: type[DomainError] | None = None,
    ) -> Any:
        """Runs ``plan`` against the dict under its lock and commits its operations.

        Due leases are expired first. ``plan(live)`` returns the outcome and the operations
        to apply (none: nothing is written and the rev stays), or raises a domain error
        (FailedPrecondition or ``missing``: re-checked against the store before it is
        raised). With ``rev_per_key`` each key operation takes its own rev.
        """
        refuse: tuple[type[DomainError], ...] = (
            (FailedPrecondition,) if missing is None else (FailedPrecondition, missing)
        )
        validate_request_id(request_id)
        for _ in range(_CONFLICT_RETRIES):
            live = await self._get(account, name)
            async with live.lock:
                if self._live.get((account, name)) is not live:
                    continue  # deleted or reloaded while we waited
                try:
                    await self._expire_locked(live)
                except _Conflict:
                    self._live.pop((account, name), None)
                    continue
                earlier = live.requests.get(request_id) if request_id else None
                if earlier is not None:
                    if not isinstance(earlier, kind):
                        raise InvalidArgument(
                            f"request id {request_id!r} was already used for a {KIND_OF[type(earlier)]} "
                            f"on dict {name!r}; use a new id for each operation"
                        )
                    return earlier
                try:
                    outcome, ops = plan(live)
                except refuse:
                    # Decided from memory: make sure no other replica wrote since it loaded.
                    if await self.store.dict_writes(live.record.dict_id) != live.record.writes:
                        self._live.pop((account, name), None)
                        continue
                    raise
                if not ops and not request_id:
                    if await self.store.dict_writes(live.record.dict_id) != live.record.writes:
                        self._live.pop((account, name), None)
                        continue
                    return outcome
                try:
                    await self._commit(live, ops, request_id, outcome, rev_per_key=rev_per_key)
                except _Conflict:
                    self._live.pop((account, name), None)
                    continue
                return outcome
        raise FailedPrecondition(f"dict {name!r} kept changing under concurrent writers from other replicas; retry")

    async def _commit(
        self, live: _LiveDict, ops: list[Any], request_id: str, outcome: Any, *, rev_per_key: bool = False
    ) -> None:
        """Commits ``ops`` (one rev, or one per key operation with ``rev_per_key``), lease
        changes and the request id's outcome, then applies them in memory.

        With no key operations the rev stays; with no operations at all only the request id
        is recorded (a no-op stays a no-op on retry).
        """
        rec = live.record
        n_keys = _key_ops(ops)
        rev = rec.rev + (n_keys if rev_per_key else min(n_keys, 1))
        #: (rev, events) of each change, for watchers.
        changes: list[tuple[int, list[DictEventRecord]]] = []
        entries = dict(live.entries)
        leases = dict(live.leases)
        by_lease = {lid: set(keys) for lid, keys in live.by_lease.items()}
        writes: list[DictEntryRecord] = []
        deletes: list[str] = []
        lease_puts: list[DictLeaseRecord] = []
        lease_drops: list[str] = []
        for op in ops:
            if isinstance(op, LeasePut):
                leases[op.lease.lease_id] = op.lease
                lease_puts.append(op.lease)
                continue
            if isinstance(op, LeaseDrop):
                leases.pop(op.lease_id, None)
                by_lease.pop(op.lease_id, None)
                lease_drops.append(op.lease_id)
                continue
            if rev_per_key or not changes:
                changes.append((rec.rev + len(changes) + 1, []))
            op_rev, events = changes[-1]
            old = entries.get(op.key)
            if old is not None and old.lease:
                by_lease.get(old.lease, set()).discard(op.key)
            if isinstance(op, DictPut):
                if op.lease:
                    by_lease.setdefault(op.lease, set()).add(op.key)
                entry = DictEntryRecord(
                    op.key,
                    op.value,
                    op.format,
                    (old.version + 1) if old else 1,
                    op_rev,
                    old.create_rev if old else op_rev,
                    op.lease,
                )
                entries[op.key] = entry
                writes.append(entry)
                events.append(DictEventRecord(op.key, entry))
            else:
                entries.pop(op.key, None)
                deletes.append(op.key)
                events.append(DictEventRecord(op.key))
        now = self.now().timestamp()
        evicted = live.requests.due(now) if request_id else None
        statements: list[Statement] = self.store.dict_mutation_statements(
            rec,
            rev,
            writes,
            deletes,
            request=(request_id, rec.writes + 1, outcome_to_doc(outcome), now) if request_id else None,
            evicted_requests=evicted or [],
            lease_puts=lease_puts,
            lease_drops=lease_drops,
        )
        try:
            await self.store.commit(statements)
        except Exception as exc:
            if self.store.is_dict_conflict(exc):
                raise _Conflict from exc
            raise
        live.record = replace(rec, rev=rev, writes=rec.writes + 1)
        if deletes or any(w.key not in live.entries for w in writes):
            live._sorted = None
        live.entries = entries
        live.leases = leases
        live.by_lease = {lid: keys for lid, keys in by_lease.items() if keys}
        live.changed.set()
        live.changed = asyncio.Event()
        if request_id:
            live.requests.add(request_id, outcome, now, evicted)
        if changes:
            self.feeds.append((rec.account, rec.name), changes)

    def _load_lock(self, account: str, name: str) -> asyncio.Lock:
        return self._load_locks.setdefault((account, name), asyncio.Lock())

    async def _get(self, account: str, name: str) -> _LiveDict:
        validate_name("dict", name)
        live = self._live.get((account, name))
        if live is not None:
            return live
        async with self._load_lock(account, name):
            live = await self._load(account, name)
        if live is None:
            raise NotFound(f"dict {name!r} not found; create it with Dict.from_name({name!r}, create_if_missing=True)")
        return live

    async def _load(self, account: str, name: str) -> _LiveDict | None:
        """The dict from memory, else from the store (None when it does not exist).

        Called under the dict's load lock.
        """
        live = self._live.get((account, name))
        if live is not None:
            return live
        record = await self.store.find_dict(account, name)
        if record is None:
            self.feeds.close((account, name))  # deleted by another replica
            return None
        entries = {e.key: e for e in await self.store.dict_entries(record.dict_id)}
        requests: RecentRequests[Outcome] = RecentRequests()
        for rid, doc, at in await self.store.dict_requests(record.dict_id):
            requests.restore(rid, outcome_from_doc(doc), at)
        leases = {le.lease_id: le for le in await self.store.dict_leases(record.dict_id)}
        by_lease: dict[str, set[str]] = {}
        for entry in entries.values():
            if entry.lease:
                by_lease.setdefault(entry.lease, set()).add(entry.key)
        live = self._live[(account, name)] = _LiveDict(record, entries, requests, leases, by_lease)
        self.feeds.attach((account, name), live)
        if record.expires_at is not None:
            self._ephemeral.setdefault((account, name), record.expires_at)
        return live


def _key_ops(ops: list[Any]) -> int:
    """How many operations of ``ops`` write or delete a key."""
    return sum(1 for op in ops if isinstance(op, DictPut | DictDelete))
