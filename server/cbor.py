"""A faster CBOR path for the SurrealDB client.

The SurrealDB SDK encodes every request with a pure-Python CBOR encoder, which was the
largest single cost of writing jobs (about 45% of the control plane's CPU while spawning).
:func:`install` swaps in the ``cbor2`` C encoder for the SDK's request encoding, after
checking on sample requests that it produces byte-for-byte the same output; when it
does not (a changed SDK), the SDK's own encoder stays.

Writes need even less of the SDK: :func:`query_raw` sends a query straight to the embedded
engine (no per-request schema validation) and decodes the answer with ``cbor2``'s C decoder
(SurrealDB's tags stay ``CBORTag`` objects: fine for write results, which are statuses and
error strings). It falls back to the SDK on other connections or without the fast encoder.
"""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("apothic.server.cbor")

_TAG_NONE = 6
_TAG_RECORD_ID = 8


class _NoneMarker:
    """Stands for None, which SurrealDB expects as tag 6 rather than CBOR null."""


_NONE: Any = _NoneMarker()
#: Values the C encoder writes as they are.
_PLAIN = frozenset({str, int, float, bool, bytes, datetime})
#: The record id class, once :func:`install` imported it (its ids become tags up front, so
#: the C encoder never calls back into Python for them).
_RECORD_ID: Any = None


def _prepare(value: Any) -> Any:
    """``value`` with None as tag 6 and record ids as tag 8 (what SurrealDB expects)."""
    kind = type(value)
    if kind is dict:
        out = {}
        for k, v in value.items():
            out[k] = v if type(v) in _PLAIN else _prepare(v)
        return out
    if kind is list or kind is tuple:
        return [v if type(v) in _PLAIN else _prepare(v) for v in value]
    if value is None:
        return _NONE
    if kind is _RECORD_ID:
        return _record_tag(value.table_name, _prepare(value.id))
    return value


def _record_tag(table: str, key: Any) -> Any:  # replaced by install()
    raise NotImplementedError


def install() -> bool:
    """Installs the fast encoder when it is available and equivalent; returns whether it is."""
    try:
        import cbor2
        from surrealdb import RecordID
        from surrealdb.data import cbor as sdk_cbor
        from surrealdb.request_message.descriptors import cbor_ws
    except ImportError:
        return False
    if getattr(cbor_ws.encode, "__apothic_fast__", False):
        return True

    global _NONE, _RECORD_ID, _record_tag
    none_tag = cbor2.CBORTag(_TAG_NONE, None)

    def record_tag(table: str, key: Any) -> Any:
        return cbor2.CBORTag(_TAG_RECORD_ID, [table, key])

    # None and record ids become tags in _prepare; ``default`` stays for subclasses.
    _NONE, _RECORD_ID, _record_tag = none_tag, RecordID, record_tag

    def default(encoder: Any, value: Any) -> None:
        if value is _NONE:
            encoder.encode(none_tag)
        elif isinstance(value, RecordID):
            encoder.encode(cbor2.CBORTag(_TAG_RECORD_ID, [value.table_name, _prepare(value.id)]))
        else:
            raise TypeError(f"no fast CBOR encoding for {type(value).__name__}")

    slow = sdk_cbor.encode

    def fast(obj: Any) -> bytes:
        try:
            return bytes(cbor2.dumps(_prepare(obj), default=default, timezone=UTC))
        except TypeError:
            return bytes(slow(obj))

    fast.__apothic_fast__ = True  # type: ignore[attr-defined]
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    samples: list[Any] = [
        {"id": RecordID("job_event", ["k", 3]), "t": now, "b": b"\x00x", "n": None, "f": 1.5, "i": -(2**40)},
        [{"rows": [{"x": [1, None, {"y": RecordID("t", "z")}], "s": "é"}]}, True, False, 0],
    ]
    if any(fast(s) != slow(s) for s in samples):
        log.warning("the cbor2 encoder differs from the SurrealDB SDK's; keeping the SDK's")
        return False
    cbor_ws.encode = fast
    return True


_request_ids = itertools.count(1)


async def query_raw(db: Any, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """``db.query_raw(sql, params)``, through the embedded engine directly when possible.

    Returns:
        The raw response: ``{"result": [{"status", "result", "time"}, ...]}`` or ``{"error": ...}``.
    """
    engine = getattr(db, "_db", None)
    execute = getattr(engine, "execute", None)
    if execute is None:
        response: dict[str, Any] = await db.query_raw(sql, params)
        return response
    import cbor2
    from surrealdb.request_message.descriptors import cbor_ws

    if not getattr(cbor_ws.encode, "__apothic_fast__", False):
        response = await db.query_raw(sql, params)
        return response
    request = cbor_ws.encode({"id": str(next(_request_ids)), "method": "query", "params": [sql, params]})
    decoded = cbor2.loads(await execute(request))
    return decoded if isinstance(decoded, dict) else {}
