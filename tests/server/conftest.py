"""Fixtures shared by the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from apothic.server.store import Store


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    """An open store on the in-memory engine, closed after the test."""
    store = Store("mem://")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
