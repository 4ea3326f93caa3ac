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
answers the stored outcome without applying anything (the last
:data:`MAX_REQUEST_IDS` ids per dict are kept).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apothic.server.deployments import validate_name
from apothic.server.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from apothic.server.ids import new_id
from apothic.server.watch import WatchSettings

if TYPE_CHECKING:
    from apothic.server.store import Statement, Store

#: Largest key, in UTF-8 bytes.
MAX_KEY_BYTES = 512
#: Largest value, in serialized bytes.
MAX_VALUE_BYTES = 1024 * 1024
#: Request ids remembered per dict for idempotent retries.
MAX_REQUEST_IDS = 1024
MAX_REQUEST_ID_CHARS = 128
#: Page size of ListDictEntries.
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
#: Times a mutation is re-evaluated after another replica wrote the same dict.
_CONFLICT_RETRIES = 5
#: Shortest and longest lease TTL, in seconds.
MIN_LEASE_TTL_S = 0.05
MAX_LEASE_TTL_S = 86_400.0
#: Longest wait of one AcquireDictLock call; clients call again to wait longer.
MAX_LOCK_WAIT_S = 60.0
#: Prefix of the key that holds a lock.
LOCK_PREFIX = "__lock__/"
#: Real seconds between sweeps for expired leases of dicts nobody touches.
SWEEP_INTERVAL_S = 0.25
#: Longest real wait for a held lock before re-checking (expiry may need the clock only).
_LOCK_RECHECK_S = 0.5

log = logging.getLogger("apothic.server.dicts")

COMPARE_OPS = ("==", "!=", ">", "<")


class AlreadyExists(DomainError):
    """The dict already exists."""

    code = "ALREADY_EXISTS"


@dataclass(frozen=True)
class DictEntryRecord:
    """One stored key."""

    key: str
    value: bytes
    format: str
    version: int
    mod_rev: int
    create_rev: int
    #: The lease the key is attached to ("" for none).
    lease: str = ""


@dataclass(frozen=True)
class DictLeaseRecord:
    """A live lease of a dict: its keys are deleted when it expires or is revoked."""

    lease_id: str
    ttl_s: float
    #: On the server's clock.
    deadline: datetime


@dataclass(frozen=True)
class LeasePut:
    """Creates or extends a lease (inside a commit)."""

    lease: DictLeaseRecord


@dataclass(frozen=True)
class LeaseDrop:
    """Forgets a lease (inside a commit; its keys are deleted by the same commit)."""

    lease_id: str


@dataclass(frozen=True)
class DictRecord:
    """A dict's row: identity and current rev."""

    dict_id: str
    account: str
    name: str
    rev: int
    created_at: datetime
    #: Committed writes, including those that only record a request id; every write is
    #: guarded on it, so a replica with a stale copy cannot write.
    writes: int = 0


@dataclass(frozen=True)
class DictCompare:
    """``version(key) op version``; a missing key has version 0."""

    key: str
    op: str
    version: int


@dataclass(frozen=True)
class DictPut:
    """Writes ``key``."""

    key: str
    value: bytes
    format: str
    #: Attach the key to this lease ("" for none).
    lease: str = ""


@dataclass(frozen=True)
class DictDelete:
    """Deletes ``key``."""

    key: str


DictOp = DictPut | DictDelete


@dataclass(frozen=True)
class PutOutcome:
    version: int
    rev: int


@dataclass(frozen=True)
class DeleteOutcome:
    deleted: bool
    rev: int


@dataclass(frozen=True)
class TxnOutcome:
    succeeded: bool
    rev: int


Outcome = PutOutcome | DeleteOutcome | TxnOutcome
_OUTCOME_KINDS: dict[str, type[Any]] = {"put": PutOutcome, "delete": DeleteOutcome, "txn": TxnOutcome}
_KIND_OF = {v: k for k, v in _OUTCOME_KINDS.items()}


def outcome_to_doc(outcome: Outcome) -> dict[str, Any]:
    """How an outcome is stored with its request id."""
    doc: dict[str, Any] = {"kind": _KIND_OF[type(outcome)], **outcome.__dict__}
    return doc


def outcome_from_doc(doc: dict[str, Any]) -> Outcome:
    cls = _OUTCOME_KINDS[doc["kind"]]
    return cls(**{k: doc[k] for k in cls.__dataclass_fields__})  # type: ignore[no-any-return]


@dataclass
class _LiveDict:
    record: DictRecord
    entries: dict[str, DictEntryRecord]
    requests: OrderedDict[str, Outcome]
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


def validate_key(key: str) -> None:
    """Raises InvalidArgument unless ``key`` is a valid dict key."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("a dict key must be a non-empty string")
    if "\x00" in key:
        raise InvalidArgument("a dict key must not contain NUL characters")
    size = len(key.encode())
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(f"dict key is {size} bytes; keys are at most {MAX_KEY_BYTES} bytes of UTF-8")


def validate_value(key: str, value: bytes) -> None:
    """Raises InvalidArgument when a serialized value is over the limit."""
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"the value for dict key {key!r} is {len(value):,} bytes serialized, over the 1 MiB limit "
            f"({MAX_VALUE_BYTES:,} bytes); store it on a Volume and put a reference instead"
        )


def _validate_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"a request id is at most {MAX_REQUEST_ID_CHARS} characters")


def _validate_ops(ops: list[DictOp], branch: str) -> None:
    seen: set[str] = set()
    for op in ops:
        validate_key(op.key)
        if isinstance(op, DictPut):
            validate_value(op.key, op.value)
        if op.key in seen:
            raise InvalidArgument(f"key {op.key!r} appears twice in the {branch} branch of a transaction")
        seen.add(op.key)


def lock_key(lock: str) -> str:
    """The key that holds lock ``lock``."""
    if not isinstance(lock, str) or not lock:
        raise InvalidArgument("a lock name must be a non-empty string")
    key = LOCK_PREFIX + lock
    validate_key(key)
    return key


def _validate_ttl(ttl_s: float) -> None:
    if not math.isfinite(ttl_s) or not MIN_LEASE_TTL_S <= ttl_s <= MAX_LEASE_TTL_S:
        raise InvalidArgument(f"a lease TTL is from {MIN_LEASE_TTL_S} to {MAX_LEASE_TTL_S:.0f} seconds, not {ttl_s}")


def _lease_gone(lease_id: str, name: str) -> NotFound:
    return NotFound(f"lease {lease_id!r} of dict {name!r} expired or was revoked; grant a new lease")


class _LockHeld(FailedPrecondition):
    """The lock key exists (another holder)."""

    def __init__(self, deadline: datetime | None) -> None:
        super().__init__("lock held")
        self.deadline = deadline


def _holds(compare: DictCompare, entries: dict[str, DictEntryRecord]) -> bool:
    entry = entries.get(compare.key)
    current = entry.version if entry is not None else 0
    if compare.op == "==":
        return current == compare.version
    if compare.op == "!=":
        return current != compare.version
    if compare.op == ">":
        return current > compare.version
    return current < compare.version


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
        self._clock = clock or (lambda: datetime.now(UTC))
        self._live: dict[tuple[str, str], _LiveDict] = {}
        self._load_locks: dict[tuple[str, str], asyncio.Lock] = {}
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
        dict that has leases)."""
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
            for account, name in await self.store.leased_dicts():
                with contextlib.suppress(NotFound):
                    await self._get(account, name)
            while True:
                await self.expire()
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

    # -- dicts -------------------------------------------------------------------------

    async def create(self, account: str, name: str, *, exist_ok: bool) -> tuple[DictRecord, int, bool]:
        """Creates a dict (or returns the existing one when ``exist_ok``).

        Returns:
            The dict, its number of keys, and whether this call created it.
        """
        validate_name("dict", name)
        async with self._load_lock(account, name):
            live = await self._load(account, name)
            if live is not None:
                if not exist_ok:
                    raise AlreadyExists(f"dict {name!r} already exists")
                return live.record, len(live.entries), False
            record = DictRecord(new_id("dicts"), account, name, 0, self._clock())
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
            self._live[(account, name)] = _LiveDict(record, {}, OrderedDict())
            return record, 0, True

    async def info(self, account: str, name: str) -> tuple[DictRecord, int]:
        """A dict and its number of keys."""
        live = await self._fresh(account, name)
        return live.record, len(live.entries)

    async def delete_dict(self, account: str, name: str) -> None:
        """Deletes a dict and all its keys."""
        live = await self._get(account, name)
        async with live.lock:
            await self.store.delete_dict(live.record.dict_id)
            self._live.pop((account, name), None)

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
            if lease and lease not in live.leases:
                raise _lease_gone(lease, name)
            if fence is not None:
                held = live.entries.get(fence_key)
                if held is None or held.mod_rev != fence[1]:
                    now = "is not held" if held is None else f"is held with token {held.mod_rev}"
                    raise FailedPrecondition(
                        f"fenced put of key {key!r} failed: lock {fence[0]!r} of dict {name!r} {now}, not with "
                        f"token {fence[1]}; the lock was lost, acquire it again"
                    )
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
        _validate_ops(then, "then")
        _validate_ops(else_, "else")

        def plan(live: _LiveDict) -> tuple[Outcome, list[DictOp]]:
            succeeded = all(_holds(c, live.entries) for c in compares)
            ops = [op for op in (then if succeeded else else_) if isinstance(op, DictPut) or op.key in live.entries]
            return TxnOutcome(succeeded, live.record.rev + (1 if ops else 0)), ops

        outcome = await self._mutate(account, name, request_id, TxnOutcome, plan)
        assert isinstance(outcome, TxnOutcome)
        return outcome

    # -- leases ------------------------------------------------------------------------

    async def grant(self, account: str, name: str, ttl_s: float) -> DictLeaseRecord:
        """Grants a lease that expires ``ttl_s`` seconds from now on the server's clock."""
        _validate_ttl(ttl_s)

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
        self, account: str, name: str, lock: str, ttl_s: float, timeout_s: float
    ) -> tuple[DictLeaseRecord, int] | None:
        """Acquires lock ``lock``: waits up to ``timeout_s`` seconds (at most
        :data:`MAX_LOCK_WAIT_S`) for its key to be absent, then creates it attached to a
        new lease of ``ttl_s``.

        Returns:
            The lease and the fencing token (the rev of the write), or None on timeout.
        """
        key = lock_key(lock)
        _validate_ttl(ttl_s)
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
            value = json.dumps(lease.lease_id).encode()
            return (lease, live.record.rev + 1), [LeasePut(lease), DictPut(key, value, "json", lease.lease_id)]

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
            if held is None or held.mod_rev != token or held.lease not in live.leases:
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
        _validate_request_id(request_id)
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
                if request_id and request_id in live.requests:
                    earlier = live.requests[request_id]
                    if not isinstance(earlier, kind):
                        raise InvalidArgument(
                            f"request id {request_id!r} was already used for a {_KIND_OF[type(earlier)]} "
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
                    rev,
                    old.create_rev if old else rev,
                    op.lease,
                )
                entries[op.key] = entry
                writes.append(entry)
            else:
                entries.pop(op.key, None)
                deletes.append(op.key)
        evicted: list[str] = []
        if request_id:
            extra = len(live.requests) + 1 - MAX_REQUEST_IDS
            evicted = list(live.requests)[: max(0, extra)]
        statements: list[Statement] = self.store.dict_mutation_statements(
            rec,
            rev,
            writes,
            deletes,
            request=(request_id, rec.writes + 1, outcome_to_doc(outcome)) if request_id else None,
            evicted_requests=evicted,
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
            for old_id in evicted:
                live.requests.pop(old_id, None)
            live.requests[request_id] = outcome

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
            return None
        entries = {e.key: e for e in await self.store.dict_entries(record.dict_id)}
        stored = await self.store.dict_requests(record.dict_id, MAX_REQUEST_IDS)
        requests: OrderedDict[str, Outcome] = OrderedDict((rid, outcome_from_doc(doc)) for rid, _, doc in stored)
        leases = {le.lease_id: le for le in await self.store.dict_leases(record.dict_id)}
        by_lease: dict[str, set[str]] = {}
        for entry in entries.values():
            if entry.lease:
                by_lease.setdefault(entry.lease, set()).add(entry.key)
        live = self._live[(account, name)] = _LiveDict(record, entries, requests, leases, by_lease)
        return live


def _key_ops(ops: list[Any]) -> int:
    """How many operations of ``ops`` write or delete a key."""
    return sum(1 for op in ops if isinstance(op, DictPut | DictDelete))
