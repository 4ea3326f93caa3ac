"""Log-structured persistence of dict writes: each write set appends one row.

A dict's durable state is its ``dict`` row (rev and write counter, which every write is
guarded on), its ``dict_lease`` rows, its ``dict_entry`` and ``dict_request`` rows (the
*folded* state), and its ``dict_oplog`` rows: one per committed write set, keyed
``[dict key, lsn]`` where ``lsn`` is the dict's write counter after the set, holding what the
set did as one CBOR blob (:class:`LogRecord`): each key it wrote, in its final state, or
deleted; the request ids it applied with their outcomes, recorded under one request row key;
and the request rows it evicted.

So a hot write costs the guarded update of the dict row plus one appended row, however many
keys and request ids it carries, where it used to cost a row per key plus one for its request
ids. The truth is the folded rows with the log rows replayed over them in ``lsn`` order
(:func:`replay_entries`, :func:`replay_requests`), which is what the acknowledged writes
produced: a log row commits in the same transaction as the write's guard, before its callers
are answered. The dict manager folds a dict's committed log rows into its entry rows and one
request row (:func:`fold`, ``Store.dict_fold_statements``) in one transaction that also
deletes them and is guarded on the dict's write counter like a write: a replica whose copy is
stale (another replica wrote since) never folds, and a crash leaves either the log rows or
their folded result, never both, never half of either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from apothic.server.dict_records import DictEntryRecord

#: The layout of an encoded record (its first element).
LOG_FORMAT = 1
#: Most log rows one fold takes.
MAX_FOLD = 256

#: ``(request id, seq, outcome document, applied at)``, as a write set records it.
Request = tuple[str, int, dict[str, Any], float]
#: ``(request id, outcome document, applied at, request row key)``, as a dict loads them.
Remembered = tuple[str, dict[str, Any], float, "str | int"]


@dataclass(frozen=True)
class LogRecord:
    """What one committed write set of a dict did.

    Attributes:
        lsn: the dict's write counter after the set (the row's key).
        entries: each key the set wrote, in its final state (None: deleted).
        request_row: the key the set's request ids are recorded under (None: it had none).
        requests: the request ids it applied.
        evicted: the request row keys it forgot.
    """

    lsn: int
    entries: dict[str, DictEntryRecord | None]
    request_row: int | None = None
    requests: list[Request] = field(default_factory=list)
    evicted: list[str | int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.requests or self.evicted)

    def encode(self) -> bytes:
        entries = [
            [key] if e is None else [key, e.value, e.format, e.version, e.mod_rev, e.create_rev, e.lease]
            for key, e in self.entries.items()
        ]
        requests = [list(r) for r in self.requests]
        return bytes(cbor2.dumps([LOG_FORMAT, entries, self.request_row, requests, list(self.evicted)]))

    @classmethod
    def decode(cls, lsn: int, data: bytes) -> LogRecord:
        fmt, entries, request_row, requests, evicted = cbor2.loads(data)
        if fmt != LOG_FORMAT:
            raise ValueError(f"dict log row {lsn} has format {fmt}, not {LOG_FORMAT}")
        return cls(
            lsn,
            {e[0]: None if len(e) == 1 else DictEntryRecord(*e) for e in entries},
            request_row,
            [(rid, seq, outcome, at) for rid, seq, outcome, at in requests],
            list(evicted),
        )


def replay_entries(entries: dict[str, DictEntryRecord], records: Iterable[LogRecord]) -> None:
    """Applies log records (in ``lsn`` order) to a dict's entries, in place."""
    for rec in records:
        for key, entry in rec.entries.items():
            if entry is None:
                entries.pop(key, None)
            else:
                entries[key] = entry


def replay_requests(rows: Sequence[Remembered], records: Iterable[LogRecord]) -> list[Remembered]:
    """The request ids a dict remembers: those of its stored request rows (oldest first), then
    those the log records (in ``lsn`` order) applied, less those of the rows they evicted."""
    out = list(rows)
    for rec in records:
        if rec.evicted:
            gone = set(rec.evicted)
            out = [r for r in out if r[3] not in gone]
        if rec.request_row is not None:
            out += [(rid, outcome, at, rec.request_row) for rid, _, outcome, at in rec.requests]
    return out


@dataclass(frozen=True)
class Fold:
    """The net effect of consecutive log records on a dict's folded rows.

    Attributes:
        puts: each key whose final state is stored.
        deletes: each key that ends deleted.
        merged: the request row to create, ``(row key, requests)``, with every request id
            the records applied that is still remembered (None: there is none). Its key is
            the negated last ``lsn``: write sets key their rows by positive seqs, so no log
            record names it before the fold does.
        gone_rows: the stored request rows to delete.
        lsns: the log rows folded (to delete).
    """

    puts: list[DictEntryRecord]
    deletes: list[str]
    merged: tuple[int, list[Request]] | None
    gone_rows: list[str | int]
    lsns: list[int]


def fold(records: Sequence[LogRecord], remembered: Callable[[str, int], bool]) -> Fold:
    """Folds consecutive log records (in ``lsn`` order) into one final state per key, one
    request row holding the ids that ``remembered(request id, row key)`` says are still
    remembered, and the stored request rows the records evicted."""
    entries: dict[str, DictEntryRecord | None] = {}
    rows: dict[int, list[Request]] = {}
    gone: list[str | int] = []
    for rec in records:
        entries.update(rec.entries)
        if rec.request_row is not None and rec.requests:
            rows[rec.request_row] = list(rec.requests)
        for key in rec.evicted:
            if not (isinstance(key, int) and rows.pop(key, None) is not None):
                gone.append(key)
    kept = [r for key, requests in rows.items() for r in requests if remembered(r[0], key)]
    return Fold(
        [e for e in entries.values() if e is not None],
        [k for k, e in entries.items() if e is None],
        (-records[-1].lsn, kept) if kept else None,
        gone,
        [rec.lsn for rec in records],
    )
