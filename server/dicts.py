"""Dicts: named, durable key-value maps with per-key versions, CAS and small transactions.

Each dict lives in control-plane memory (loaded from the store on first use) with the store
as the durable record. A mutation is planned under the dict's lock: its condition is checked
in memory, then its write joins the dict's open write set, which the group committer turns
into one transaction guarded on the dict row's write counter (another replica that wrote in
between makes the guard fail; the dict is reloaded and the mutation re-evaluated). The lock
is not held while the commit is in flight: the next mutation is planned on the dict as it
will be once the writes in flight landed, and joins the same transaction or the next one,
which is guarded on the counter the previous one leaves (and never runs if that one
failed). A mutation that writes nothing (a failed condition, a delete of a missing key)
waits until nothing is in flight and first checks that counter in the store, so it is
never decided on a stale or uncommitted copy; lease changes also wait until nothing is in
flight. Memory changes only after the commit, in commit order, so a reader never sees a
write that is not durable, and each caller is answered only once its write committed.
Reads are served from memory: on a replica that has not written a dict since another
replica did, they can be stale (there is no cross-replica invalidation yet).

Every committed mutation raises the dict's ``rev`` by one; each key carries ``version``
(1 on creation, +1 per write), ``mod_rev`` and ``create_rev``. A write set's keys and
request ids are stored as one log row (:mod:`apothic.server.dict_log`), folded into the
dict's entry and request rows in the background. Mutations may carry a request id: the
outcome is stored in the same transaction, and a retry with that id answers the stored
outcome without applying anything; a retry that arrives while the original is in flight
waits for it. Ids are kept at least
:data:`~apothic.server.request_ids.REQUEST_ID_TTL_S` seconds, longer than the SDK retries.
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
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apothic.server.deployments import validate_name
from apothic.server.dict_log import MAX_FOLD, Fold, LogRecord, fold, replay_entries, replay_requests
from apothic.server.dict_records import (
    COMPARE_OPS,
    DICT_CHAIN_BROKEN,
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
from apothic.server.store_base import WriteSet
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
    """A dict in memory: ``record``, ``entries``, ``leases`` and ``requests`` are its
    committed state (what reads see); ``inflight`` and the ``ahead_*`` fields are what the
    mutations whose commits are in flight will add to it (what plans see)."""

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
    #: Mutations staged and not yet landed, in commit order.
    inflight: deque[_Landing] = field(default_factory=deque)
    #: The entries those mutations write (a _Gone for a delete), newest first.
    ahead_entries: dict[str, DictEntryRecord | _Gone] = field(default_factory=dict)
    ahead_rev: int = 0
    ahead_writes: int = 0
    #: Request ids of mutations in flight.
    pending_requests: dict[str, _Landing] = field(default_factory=dict)
    #: The write set mutations join until the committer takes it.
    write_set: _DictWrites | None = None
    #: Set once a commit failed: the copy no longer matches the store.
    broken: bool = False
    #: The stored row that records each remembered request id (the id for a row of its
    #: own, an int for a row recording several), and how many remembered ids each holds.
    request_rows: dict[str, str | int] = field(default_factory=dict)
    row_live: dict[str | int, int] = field(default_factory=dict)
    #: What the committed write sets whose log rows are not folded yet did, in lsn order.
    log: list[LogRecord] = field(default_factory=list)
    #: Whether a fold of its log rows is in flight.
    folding: bool = False

    def sorted_keys(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.entries)
        return self._sorted


class _Gone:
    """Stands for a key that a mutation in flight deletes."""

    __slots__ = ()


#: A mutation step that must start over (the dict was reloaded or deleted meanwhile).
_RETRY: Any = object()


@dataclass(eq=False)
class _Landing:
    """A mutation staged in a write set: what memory takes once that set committed."""

    future: asyncio.Future[None]
    rev: int
    writes: int
    #: Key -> the entry written, or None for a delete.
    written: dict[str, DictEntryRecord | None]
    changes: list[tuple[int, list[DictEventRecord]]]
    request_id: str
    outcome: Any
    at: float
    evicted: list[str] | None
    lease_puts: list[DictLeaseRecord]
    lease_drops: list[str]
    #: The ``ahead_entries`` values this mutation set (removed when it lands, unless replaced).
    shown: dict[str, Any] = field(default_factory=dict)


class _EntriesAhead(Mapping[str, DictEntryRecord]):
    """A dict's entries as they will be once the mutations in flight committed."""

    __slots__ = ("_ahead", "_entries")

    def __init__(self, live: _LiveDict) -> None:
        self._ahead = live.ahead_entries
        self._entries = live.entries

    def __getitem__(self, key: str) -> DictEntryRecord:
        found = self._ahead.get(key)
        if found is None:
            return self._entries[key]
        if isinstance(found, _Gone):
            raise KeyError(key)
        return found

    def get(self, key: str, default: Any = None) -> Any:
        found = self._ahead.get(key)
        if found is None:
            return self._entries.get(key, default)
        return default if isinstance(found, _Gone) else found

    def __contains__(self, key: object) -> bool:
        found = self._ahead.get(key)  # type: ignore[call-overload]
        if found is None:
            return key in self._entries
        return not isinstance(found, _Gone)

    def __iter__(self) -> Iterator[str]:
        for key in self._entries:
            if key not in self._ahead:
                yield key
        for key, found in self._ahead.items():
            if not isinstance(found, _Gone):
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Revs:
    """The rev and write counter a dict will have once the mutations in flight landed."""

    __slots__ = ("rev", "writes")

    def __init__(self, rev: int, writes: int) -> None:
        self.rev = rev
        self.writes = writes


class _Ahead:
    """What a plan reads while mutations are in flight (see :meth:`DictManager._view`)."""

    __slots__ = ("by_lease", "entries", "leases", "record")

    def __init__(self, live: _LiveDict) -> None:
        # Plans read only the rev (and staging the write counter) of the record.
        self.record: Any = _Revs(live.ahead_rev, live.ahead_writes)
        self.entries = _EntriesAhead(live)
        # Lease changes never pipeline: they wait until nothing is in flight.
        self.leases = live.leases
        self.by_lease = live.by_lease


class _DictWrites(WriteSet):
    """The mutations of one dict that share a transaction: guarded once on the write
    counter the previous set leaves, each key written once with its latest entry."""

    def __init__(
        self, store: Store, record: DictRecord, writes_before: int, rev_before: int, after: _DictWrites | None
    ) -> None:
        super().__init__(after, loop=store.loop)
        self.store = store
        self.record = replace(record, writes=writes_before, rev=rev_before)
        self.rev = rev_before
        self.writes = writes_before
        self.entries: dict[str, DictEntryRecord | None] = {}
        self.requests: list[tuple[str, int, dict[str, Any], float]] = []
        self.evicted: list[str | int] = []
        self.lease_puts: list[DictLeaseRecord] = []
        self.lease_drops: list[str] = []
        #: What the set appends to the dict's log (made when it is rendered).
        self.logged: LogRecord | None = None

    def add(
        self,
        rev: int,
        writes: int,
        written: dict[str, DictEntryRecord | None],
        request: tuple[str, int, dict[str, Any], float] | None,
        evicted: list[str | int],
        lease_puts: list[DictLeaseRecord],
        lease_drops: list[str],
    ) -> None:
        self.rev, self.writes = rev, writes
        self.entries.update(written)
        if request is not None:
            self.requests.append(request)
        self.evicted += evicted
        self.lease_puts += lease_puts
        self.lease_drops += lease_drops

    def chain_error(self, cause: BaseException) -> BaseException:
        # Planned on a write that did not land: its guard could pass by coincidence (another
        # replica may have advanced the counter by as much), so it must not run at all.
        return self.store.dict_chain_conflict()

    def render(self) -> list[Statement]:
        self.logged = LogRecord(
            self.writes,
            self.entries,
            self.requests[0][1] if self.requests else None,
            self.requests,
            self.evicted,
        )
        return self.store.dict_write_statements(
            self.record,
            self.rev,
            self.writes,
            self.logged,
            lease_puts=self.lease_puts,
            lease_drops=self.lease_drops,
        )


class _DictFold(WriteSet):
    """Folds committed log rows of a dict into its entry and request rows (see
    :mod:`apothic.server.dict_log`), guarded on the write counter the dict's write sets
    submitted before it leave: ``after``, the newest of them, is rendered (its counter final)
    by the time this is."""

    def __init__(self, store: Store, record: DictRecord, folded: Fold, after: _DictWrites | None) -> None:
        super().__init__(after, loop=store.loop)
        self.store = store
        self.record = record
        self.folded = folded

    def render(self) -> list[Statement]:
        after = self.after
        writes = after.writes if isinstance(after, _DictWrites) else self.record.writes
        return self.store.dict_fold_statements(replace(self.record, writes=writes), self.folded)

    def chain_error(self, cause: BaseException) -> BaseException:
        return self.store.dict_chain_conflict()


def _lease_gone(lease_id: str, name: str) -> NotFound:
    return NotFound(f"lease {lease_id!r} of dict {name!r} expired or was revoked; grant a new lease")


class _LockHeld(FailedPrecondition):
    """The lock key exists (another holder)."""

    def __init__(self, deadline: datetime | None) -> None:
        super().__init__("lock held")
        self.deadline = deadline


class _Conflict(Exception):
    """Another replica changed the dict since it was loaded (``chained``: or a write this one
    was planned on top of failed)."""

    def __init__(self, chained: bool = False) -> None:
        super().__init__()
        self.chained = chained


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
                while await self.fold() and any(len(live.log) >= MAX_FOLD for live in self._live.values()):
                    pass  # a backlog: fold on at once
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

    async def fold(self) -> int:
        """Folds the committed log rows of every dict in memory into its rows now (up to
        :data:`~apothic.server.dict_log.MAX_FOLD` each; a dict whose previous fold is still
        in flight waits for the next round); returns how many dicts it folded. A fold that
        fails leaves its log rows, and the dict is reloaded on its next use (another replica
        may have written it)."""
        pending: list[Any] = []
        for live in list(self._live.values()):
            if live.folding or not live.log or live.broken:
                continue
            live.folding = True
            pending.append(self._fold(live, live.log[:MAX_FOLD]))
        if pending:
            await asyncio.gather(*pending)
        return len(pending)

    async def _fold(self, live: _LiveDict, records: list[LogRecord]) -> None:
        folded = fold(records, lambda rid, row_key: live.request_rows.get(rid) == row_key)
        if folded.merged is not None:
            # From now on the ids are in the fold's row: a write that forgets them all
            # evicts that row (after the fold, in commit order).
            merged_key = folded.merged[0]
            for rid, *_ in folded.merged[1]:
                self._forget_request_rows(live, [rid])
                live.request_rows[rid] = merged_key
                live.row_live[merged_key] = live.row_live.get(merged_key, 0) + 1
        ws = live.write_set
        folding = _DictFold(self.store, live.record, folded, ws if ws is not None and live.inflight else None)
        self.store.submit_write_set(folding)
        try:
            await asyncio.shield(folding.future)
        except Exception as exc:
            # Memory moved the ids to a row that does not exist: reload from the store.
            self._forget(live)
            if not self.store.is_dict_conflict(exc):  # else another replica wrote it
                log.error("folding %d log rows of dict %r failed (they stay): %s", len(records), live.record.name, exc)
        else:
            del live.log[: len(records)]  # only a fold takes from the front, one at a time
        finally:
            live.folding = False

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
            await self._settled(live)
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
                await self._settled(live)
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
                await self._settled(live)
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
        """Revokes every due lease of ``live`` (called under its lock, with nothing in
        flight); raises _Conflict."""
        now = self.now()
        due = sorted(lid for lid, le in live.leases.items() if le.deadline <= now)
        if due:
            await self._land(live, self._stage(live, self._revoke_ops(live, due), "", None, rev_per_key=True))

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
                    await self._settled(live)
                    if self._live.get((account, name)) is not live:
                        continue
                    await self._expire_locked(live)
                except _Conflict:
                    self._forget(live)
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

        Due leases are expired first. ``plan(view)`` returns the outcome and the operations
        to apply (none: nothing is written and the rev stays), or raises a domain error
        (FailedPrecondition or ``missing``: re-checked against the store before it is
        raised). With ``rev_per_key`` each key operation takes its own rev.

        Writes are pipelined: a mutation that only puts or deletes keys without leases is
        planned against the dict as it will be once the mutations in flight committed
        (:meth:`_view`), joins the dict's open write set and releases the lock before it
        waits for its commit, so the next mutation can join the same transaction. Each
        write set is guarded on the dict's write counter as the previous set leaves it, so
        when one fails every later one fails too and is re-planned after a reload. A
        decision that writes nothing (a failed condition, a no-op) and any mutation that
        touches leases wait until nothing is in flight and are made on committed state.
        """
        refuse: tuple[type[DomainError], ...] = (
            (FailedPrecondition,) if missing is None else (FailedPrecondition, missing)
        )
        validate_request_id(request_id)
        conflicts = 0
        # A mutation re-planned only because one planned before it failed does not count.
        for _ in range(_CONFLICT_RETRIES * 20):
            if conflicts >= _CONFLICT_RETRIES:
                break
            live = await self._get(account, name)
            async with live.lock:
                try:
                    step = await self._plan_locked(live, request_id, kind, plan, refuse, rev_per_key)
                except _Conflict as exc:
                    self._forget(live)
                    conflicts += not exc.chained
                    continue
            if step is _RETRY:
                conflicts += 1
                continue
            if not isinstance(step, _Landing):
                return step
            # The lock is released: later mutations may join this one's transaction.
            try:
                await self._land(live, step)
            except _Conflict as exc:
                self._forget(live)
                conflicts += not exc.chained
                continue
            if not isinstance(step.outcome, kind):
                raise InvalidArgument(
                    f"request id {request_id!r} was already used for a {KIND_OF[type(step.outcome)]} "
                    f"on dict {name!r}; use a new id for each operation"
                )
            return step.outcome
        raise FailedPrecondition(f"dict {name!r} kept changing under concurrent writers from other replicas; retry")

    async def _plan_locked(
        self,
        live: _LiveDict,
        request_id: str,
        kind: type[Any],
        plan: Any,
        refuse: tuple[type[DomainError], ...],
        rev_per_key: bool,
    ) -> Any:
        """The part of :meth:`_mutate` under the dict's lock: the outcome when it is decided
        (or landed), the :class:`_Landing` to wait for outside the lock, or ``_RETRY``.
        Raises _Conflict."""
        key = (live.record.account, live.record.name)
        while True:
            if self._live.get(key) is not live:
                return _RETRY  # deleted or reloaded while we waited
            if self._due(live):
                await self._settled(live)
                if self._live.get(key) is not live:
                    return _RETRY
                await self._expire_locked(live)
            earlier = live.requests.get(request_id) if request_id else None
            if earlier is not None:
                if not isinstance(earlier, kind):
                    raise InvalidArgument(
                        f"request id {request_id!r} was already used for a {KIND_OF[type(earlier)]} "
                        f"on dict {live.record.name!r}; use a new id for each operation"
                    )
                return earlier
            landing = live.pending_requests.get(request_id) if request_id else None
            if landing is not None:
                return landing  # the same request, still in flight: its answer is ours
            busy = bool(live.inflight)
            try:
                outcome, ops = plan(self._view(live))
            except refuse:
                if busy:
                    await self._settled(live)  # decide on committed state
                    continue
                # Decided from memory: make sure no other replica wrote since it loaded.
                if await self.store.dict_writes(live.record.dict_id) != live.record.writes:
                    self._forget(live)
                    return _RETRY
                raise
            if not ops and not request_id:
                if busy:
                    await self._settled(live)
                    continue
                if await self.store.dict_writes(live.record.dict_id) != live.record.writes:
                    self._forget(live)
                    return _RETRY
                return outcome
            if not self._touches_leases(live, ops):
                return self._stage(live, ops, request_id, outcome, rev_per_key)
            if busy:
                await self._settled(live)
                continue
            # Nothing else plans until it landed (the lock is held).
            await self._land(live, self._stage(live, ops, request_id, outcome, rev_per_key))
            return outcome

    # -- the write pipeline --------------------------------------------------------------

    def _view(self, live: _LiveDict) -> Any:
        """What a plan reads: the dict itself when nothing is in flight, else the dict as
        it will be once everything in flight committed."""
        if not live.inflight:
            return live
        return _Ahead(live)

    @staticmethod
    def _touches_leases(live: _LiveDict, ops: list[Any]) -> bool:
        for op in ops:
            if isinstance(op, LeasePut | LeaseDrop):
                return True
            if isinstance(op, DictPut) and op.lease:
                return True
            old = live.entries.get(op.key)
            if old is not None and old.lease:
                return True
        return False

    def _forget(self, live: _LiveDict) -> None:
        """Drops a copy that no longer matches the store (the next access reloads it)."""
        live.broken = True
        key = (live.record.account, live.record.name)
        if self._live.get(key) is live:
            self._live.pop(key, None)

    async def _settled(self, live: _LiveDict) -> None:
        """Waits until every mutation in flight landed (or failed)."""
        while live.inflight:
            with contextlib.suppress(Exception):
                await asyncio.shield(live.inflight[-1].future)
            await asyncio.sleep(0)

    async def _land(self, live: _LiveDict, landing: _Landing) -> None:
        """Waits for a staged mutation's commit; raises _Conflict when another replica
        wrote the dict (or an earlier mutation in flight failed)."""
        try:
            # Shielded: the write set is shared, and a cancelled caller leaves it alone.
            await asyncio.shield(landing.future)
        except Exception as exc:
            if self.store.is_dict_conflict(exc):
                raise _Conflict(chained=DICT_CHAIN_BROKEN in str(exc)) from exc
            raise

    def _stage(
        self, live: _LiveDict, ops: list[Any], request_id: str, outcome: Any, rev_per_key: bool = False
    ) -> _Landing:
        """Adds a mutation to the dict's open write set (one rev, or one per key operation
        with ``rev_per_key``; lease changes; the request id's outcome) and to what later
        plans see; memory takes it once it committed (:meth:`_landed`).

        With no key operations the rev stays; with no operations at all only the request id
        is recorded (a no-op stays a no-op on retry).
        """
        view = self._view(live)
        rec_rev = view.record.rev
        writes_before = view.record.writes
        n_keys = _key_ops(ops)
        rev = rec_rev + (n_keys if rev_per_key else min(n_keys, 1))
        #: (rev, events) of each change, for watchers.
        changes: list[tuple[int, list[DictEventRecord]]] = []
        written: dict[str, DictEntryRecord | None] = {}
        lease_puts: list[DictLeaseRecord] = []
        lease_drops: list[str] = []
        entries = view.entries
        for op in ops:
            if isinstance(op, LeasePut):
                lease_puts.append(op.lease)
                continue
            if isinstance(op, LeaseDrop):
                lease_drops.append(op.lease_id)
                continue
            if rev_per_key or not changes:
                changes.append((rec_rev + len(changes) + 1, []))
            op_rev, events = changes[-1]
            old = written[op.key] if op.key in written else entries.get(op.key)
            if isinstance(op, DictPut):
                entry = DictEntryRecord(
                    op.key,
                    op.value,
                    op.format,
                    (old.version + 1) if old else 1,
                    op_rev,
                    old.create_rev if old else op_rev,
                    op.lease,
                )
                written[op.key] = entry
                events.append(DictEventRecord(op.key, entry))
            else:
                written[op.key] = None
                events.append(DictEventRecord(op.key))
        now = self.now().timestamp()
        evicted = live.requests.due(now) if request_id else None
        gone = self._forget_request_rows(live, evicted) if evicted else []
        ws = live.write_set
        if ws is None or ws.taken:
            # Chained on the previous set only while it is in flight (or it is this
            # copy's: a copy that outlived a failure is broken and never writes again).
            after = ws if ws is not None and live.inflight else None
            ws = live.write_set = _DictWrites(self.store, live.record, writes_before, rec_rev, after)
            self.store.submit_write_set(ws)
            ws.future.add_done_callback(lambda f, live=live, ws=ws: self._logged(live, ws, f))
            ws.future.add_done_callback(lambda _f, live=live: self._landed(live))
        ws.add(
            rev,
            writes_before + 1,
            written,
            (request_id, writes_before + 1, outcome_to_doc(outcome), now) if request_id else None,
            gone,
            lease_puts,
            lease_drops,
        )
        if request_id:
            row_key = ws.requests[0][1]
            live.request_rows[request_id] = row_key
            live.row_live[row_key] = live.row_live.get(row_key, 0) + 1
        landing = _Landing(
            ws.future,
            rev,
            writes_before + 1,
            written,
            changes,
            request_id,
            outcome,
            now,
            evicted,
            lease_puts,
            lease_drops,
        )
        live.inflight.append(landing)
        live.ahead_rev, live.ahead_writes = rev, writes_before + 1
        for key, entry in written.items():
            live.ahead_entries[key] = entry if entry is not None else _Gone()
        landing.shown = {key: live.ahead_entries[key] for key in written}
        if request_id:
            live.pending_requests[request_id] = landing
        return landing

    @staticmethod
    def _forget_request_rows(live: _LiveDict, request_ids: list[str]) -> list[str | int]:
        """The request rows to delete once ``request_ids`` are forgotten (a row recording
        several ids goes once none of them is remembered). Asking again for ids already
        handed over returns nothing more."""
        gone: list[str | int] = []
        for request_id in request_ids:
            if request_id not in live.request_rows:
                continue
            row_key = live.request_rows.pop(request_id)
            left = live.row_live.get(row_key, 1) - 1
            if left > 0:
                live.row_live[row_key] = left
            else:
                live.row_live.pop(row_key, None)
                gone.append(row_key)
        return gone

    @staticmethod
    def _logged(live: _LiveDict, ws: _DictWrites, future: asyncio.Future[None]) -> None:
        """Keeps what a committed write set appended to the dict's log, for the next fold."""
        if not future.cancelled() and future.exception() is None and ws.logged:
            live.log.append(ws.logged)

    def _landed(self, live: _LiveDict) -> None:
        """Applies, in order, the mutations whose commits settled (a failed one drops the
        copy: the mutations behind it fail too, and their callers re-plan after a reload)."""
        landed: tuple[int, int] | None = None
        while live.inflight and live.inflight[0].future.done():
            landing = live.inflight.popleft()
            if landing.request_id:
                live.pending_requests.pop(landing.request_id, None)
            for key, shown in landing.shown.items():
                if live.ahead_entries.get(key) is shown:
                    del live.ahead_entries[key]
            future = landing.future
            if live.broken or future.cancelled() or future.exception() is not None:
                self._forget(live)
                continue
            rec = live.record
            landed = (landing.rev, landing.writes)
            entries = live.entries
            for key, entry in landing.written.items():
                old = entries.get(key)
                if old is not None and old.lease:
                    keys = live.by_lease.get(old.lease)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del live.by_lease[old.lease]
                if entry is None:
                    if old is not None:
                        del entries[key]
                        live._sorted = None
                else:
                    if old is None:
                        live._sorted = None
                    entries[key] = entry
                    if entry.lease:
                        live.by_lease.setdefault(entry.lease, set()).add(key)
            for lease in landing.lease_puts:
                live.leases[lease.lease_id] = lease
            for lease_id in landing.lease_drops:
                live.leases.pop(lease_id, None)
                live.by_lease.pop(lease_id, None)
            if landing.request_id:
                live.requests.add(landing.request_id, landing.outcome, landing.at, landing.evicted)
            if landing.changes:
                self.feeds.append((rec.account, rec.name), landing.changes)
        if landed is not None and not live.broken:
            live.record = replace(live.record, rev=landed[0], writes=landed[1])
            live.changed.set()
            live.changed = asyncio.Event()
        if not live.inflight:
            live.ahead_entries.clear()

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
        stored, remembered, logged = await self.store.dict_contents(record.dict_id)
        entries = {e.key: e for e in stored}
        replay_entries(entries, logged)
        requests: RecentRequests[Outcome] = RecentRequests()
        request_rows: dict[str, str | int] = {}
        row_live: dict[str | int, int] = {}
        for rid, doc, at, row_key in replay_requests(remembered, logged):
            requests.restore(rid, outcome_from_doc(doc), at)
            request_rows[rid] = row_key
            row_live[row_key] = row_live.get(row_key, 0) + 1
        leases = {le.lease_id: le for le in await self.store.dict_leases(record.dict_id)}
        by_lease: dict[str, set[str]] = {}
        for entry in entries.values():
            if entry.lease:
                by_lease.setdefault(entry.lease, set()).add(entry.key)
        live = self._live[(account, name)] = _LiveDict(
            record, entries, requests, leases, by_lease, request_rows=request_rows, row_live=row_live, log=logged
        )
        self.feeds.attach((account, name), live)
        if record.expires_at is not None:
            self._ephemeral.setdefault((account, name), record.expires_at)
        return live


def _key_ops(ops: list[Any]) -> int:
    """How many operations of ``ops`` write or delete a key."""
    return sum(1 for op in ops if isinstance(op, DictPut | DictDelete))
