"""The store's group committer, on a real embedded SurrealDB (``mem://``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from surrealdb import RecordID

from apothic.server.store import MAX_BATCH, Statement, Store


def _create(key: str, **doc: Any) -> Statement:
    return ("CREATE $id CONTENT $doc RETURN NONE", {"id": RecordID("meta", key), "doc": doc})


async def _keys(store: Store) -> set[str]:
    rows = await store._q("SELECT id FROM meta")
    return {row["id"].id for row in rows}


class _CountingQueries:
    """Counts the database round trips the committer makes (wraps the real connection)."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._db, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await method(*args, **kwargs)

        return counted


async def test_concurrent_commits_are_all_durable_and_share_transactions(store: Store) -> None:
    assert store._committer is not None
    counter = _CountingQueries(store._db)
    store._committer._db = counter
    results = await asyncio.gather(*(store.commit([_create(f"k{i}", n=i)]) for i in range(300)))
    assert results == [None] * 300
    assert await _keys(store) == {f"k{i}" for i in range(300)}
    assert 0 < counter.calls < 30, f"300 concurrent commits took {counter.calls} transactions"


async def test_more_statements_than_one_batch_holds(store: Store) -> None:
    count = MAX_BATCH * 2 + 7
    await asyncio.gather(*(store.commit([_create(f"b{i}")]) for i in range(count)))
    assert len(await _keys(store)) == count


async def test_commits_apply_in_the_order_they_were_queued(store: Store) -> None:
    record = RecordID("meta", "counter")
    await asyncio.gather(
        *(store.commit([("UPSERT $id CONTENT $doc RETURN NONE", {"id": record, "doc": {"v": i}})]) for i in range(100))
    )
    rows = await store._q("SELECT v FROM ONLY $id", {"id": record})
    assert rows["v"] == 99


async def test_a_bad_group_does_not_fail_its_neighbours(store: Store) -> None:
    await store.commit([_create("taken")])
    results = await asyncio.gather(
        store.commit([_create("before")]),
        # Atomic: the first statement must not land when the second fails.
        store.commit([_create("half-done"), _create("taken")]),
        store.commit([_create("middle"), _create("middle-2")]),
        store.commit([("SELEC * FRM (", {})]),  # a parse error
        store.commit([_create("after")]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None and results[4] is None
    assert isinstance(results[1], Exception) and "taken" in str(results[1])
    assert isinstance(results[3], Exception)
    assert await _keys(store) == {"taken", "before", "middle", "middle-2", "after"}
    # The committer carries on after the failures.
    await store.commit([_create("later")])
    assert "later" in await _keys(store)


async def test_write_behind_is_flushed_by_drain_and_its_errors_are_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.commit([_create("dup")])
    with caplog.at_level(logging.ERROR, logger="apothic.server.store"):
        store.write_behind([_create("wb-1")])
        store.write_behind([_create("dup")])
        store.write_behind([_create("wb-2")])
        await store.drain()
    assert {"wb-1", "wb-2"} <= await _keys(store)
    assert any("write-behind failed" in r.getMessage() for r in caplog.records)


async def test_close_flushes_write_behind_to_disk(tmp_path: Path) -> None:
    url = f"surrealkv://{tmp_path / 'db'}"
    first = Store(url)
    await first.open()
    first.write_behind([_create(f"queued-{i}") for i in range(50)])
    await first.close()
    second = Store(url)
    await second.open()
    try:
        assert await _keys(second) == {f"queued-{i}" for i in range(50)}
    finally:
        await second.close()
