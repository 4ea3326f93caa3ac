"""Object ids: a kind prefix and a time-sortable key (``jobs:0187a…``)."""

from __future__ import annotations

import hashlib
import secrets
import time

from apothic.server.errors import InvalidArgument, NotFound

KINDS = {"jobs", "deployments", "containers", "workers", "accounts", "sessions"}


def new_id(kind: str) -> str:
    """A fresh id of ``kind``; later ids sort after earlier ones."""
    return f"{kind}:{time.time_ns():016x}{secrets.token_hex(4)}"


def derived_id(kind: str, source: str) -> str:
    """The id of ``kind`` that ``source`` always maps to (a request id's job, say)."""
    return f"{kind}:{hashlib.sha256(source.encode()).hexdigest()[:24]}"


def key_of(object_id: str, kind: str) -> str:
    """The key part of an id, after checking its kind prefix.

    Raises:
        InvalidArgument: the id is empty.
        NotFound: the id is not of ``kind`` (so it cannot name an existing object).
    """
    if not object_id:
        raise InvalidArgument(f"a {kind[:-1]} id is required")
    prefix, sep, key = object_id.partition(":")
    if not sep or prefix != kind or not key or not key.isalnum():
        raise NotFound(f"{kind[:-1]} {object_id!r} not found (ids look like '{kind}:…')")
    return key
