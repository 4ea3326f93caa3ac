"""What a dict is made of: its stored records, the operations of a mutation, their
outcomes, and the limits every key, value and lease is checked against.

The logic that applies them lives in :mod:`apothic.server.dicts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apothic.server.errors import InvalidArgument

#: Largest key, in UTF-8 bytes.
MAX_KEY_BYTES = 512
#: Largest value, in serialized bytes.
MAX_VALUE_BYTES = 1024 * 1024
MAX_REQUEST_ID_CHARS = 128
#: Why a dict write failed without running: a write it was planned on top of failed.
DICT_CHAIN_BROKEN = "an earlier write in flight failed"
#: Shortest and longest lease TTL, in seconds.
MIN_LEASE_TTL_S = 0.05
MAX_LEASE_TTL_S = 86_400.0
#: Prefix of the key that holds a lock.
LOCK_PREFIX = "__lock__/"

COMPARE_OPS = ("==", "!=", ">", "<")


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
    #: For an ephemeral dict: when it is deleted unless a heartbeat comes (server's clock).
    expires_at: datetime | None = None


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
OUTCOME_KINDS: dict[str, type[Any]] = {"put": PutOutcome, "delete": DeleteOutcome, "txn": TxnOutcome}
KIND_OF = {v: k for k, v in OUTCOME_KINDS.items()}


def outcome_to_doc(outcome: Outcome) -> dict[str, Any]:
    """How an outcome is stored with its request id."""
    doc: dict[str, Any] = {"kind": KIND_OF[type(outcome)], **outcome.__dict__}
    return doc


def outcome_from_doc(doc: dict[str, Any]) -> Outcome:
    cls = OUTCOME_KINDS[doc["kind"]]
    return cls(**{k: doc[k] for k in cls.__dataclass_fields__})  # type: ignore[no-any-return]


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


def validate_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"a request id is at most {MAX_REQUEST_ID_CHARS} characters")


def validate_ops(ops: list[DictOp], branch: str) -> None:
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


def validate_ttl(ttl_s: float) -> None:
    if not math.isfinite(ttl_s) or not MIN_LEASE_TTL_S <= ttl_s <= MAX_LEASE_TTL_S:
        raise InvalidArgument(f"a lease TTL is from {MIN_LEASE_TTL_S} to {MAX_LEASE_TTL_S:.0f} seconds, not {ttl_s}")


def holds(compare: DictCompare, entries: dict[str, DictEntryRecord]) -> bool:
    entry = entries.get(compare.key)
    current = entry.version if entry is not None else 0
    if compare.op == "==":
        return current == compare.version
    if compare.op == "!=":
        return current != compare.version
    if compare.op == ">":
        return current > compare.version
    return current < compare.version
