"""DictManager's watch feed on a real ``mem://`` Store: one change per rev (one per deleted
key when a lease ends), prefix filtering inside a change, and a reset (not a silent gap)
when the dict is reloaded after another replica wrote it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from apothic.server.dict_watch import DictEventRecord
from apothic.server.dicts import DictManager, DictPut
from apothic.server.store import Store
from apothic.server.watch import Change, Progress, Reset, SnapshotChunk, SnapshotEnd, WatchSettings

ACCOUNT = "accounts:watch"
SETTINGS = WatchSettings(retention=100, progress_s=0.1)


async def _next(stream: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(stream.__anext__(), 5)


def _events(change: Any) -> list[tuple[str, bytes | None]]:
    assert isinstance(change, Change)
    events: tuple[DictEventRecord, ...] = change.events
    return [(e.key, None if e.entry is None else e.entry.value) for e in events]


async def test_changes_lease_expiry_and_prefixes() -> None:
    store = Store("mem://")
    await store.open()
    try:
        dicts = DictManager(store, watch=SETTINGS)
        await dicts.create(ACCOUNT, "d", exist_ok=False)
        await dicts.put(ACCOUNT, "d", "a/1", b"1", "json")
        everything = dicts.watch(ACCOUNT, "d", snapshot=True, after_rev=None)
        under_a = dicts.watch(ACCOUNT, "d", snapshot=True, after_rev=None, prefix="a/")
        chunk = await _next(everything)
        assert isinstance(chunk, SnapshotChunk) and [e.key for e in chunk.entries] == ["a/1"]
        assert await _next(everything) == SnapshotEnd(1)
        assert isinstance(await _next(under_a), SnapshotChunk) and await _next(under_a) == SnapshotEnd(1)

        lease = await dicts.grant(ACCOUNT, "d", 60)
        await dicts.txn(
            ACCOUNT, "d", [], [DictPut("a/2", b"2", "json", lease.lease_id), DictPut("b", b"3", "json")], []
        )
        await dicts.put(ACCOUNT, "d", "b", b"4", "json", lease=lease.lease_id)
        await dicts.revoke(ACCOUNT, "d", lease.lease_id)

        changes = [await _next(everything) for _ in range(4)]
        assert [c.rev for c in changes] == [2, 3, 4, 5]
        assert _events(changes[0]) == [("a/2", b"2"), ("b", b"3")]
        assert _events(changes[1]) == [("b", b"4")]
        # The revoke deleted each key at a rev of its own, in key order.
        assert _events(changes[2]) == [("a/2", None)] and _events(changes[3]) == [("b", None)]

        filtered = [await _next(under_a) for _ in range(2)]
        assert [(c.rev, _events(c)) for c in filtered] == [(2, [("a/2", b"2")]), (4, [("a/2", None)])]
        assert await _next(under_a) == Progress(5)
        await everything.aclose()
        await under_a.aclose()
    finally:
        await store.close()


async def test_a_reload_after_another_replica_wrote_resets_watchers() -> None:
    store = Store("mem://")
    await store.open()
    try:
        mine, other = DictManager(store, watch=SETTINGS), DictManager(store, watch=SETTINGS)
        await mine.create(ACCOUNT, "d", exist_ok=False)
        await mine.put(ACCOUNT, "d", "k", b"1", "json")
        stream = mine.watch(ACCOUNT, "d", snapshot=True, after_rev=None)
        assert isinstance(await _next(stream), SnapshotChunk) and await _next(stream) == SnapshotEnd(1)

        await other.put(ACCOUNT, "d", "k", b"2", "json")  # rev 2: this replica does not see it
        await mine.put(ACCOUNT, "d", "k", b"3", "json")  # conflicts, reloads at rev 2, writes rev 3

        reset = await _next(stream)
        assert isinstance(reset, Reset) and reset.after_rev == 1 and reset.oldest_rev == 3
        chunk = await _next(stream)
        assert isinstance(chunk, SnapshotChunk) and chunk.rev == 3 and chunk.entries[0].value == b"3"
        assert await _next(stream) == SnapshotEnd(3)
        await stream.aclose()
    finally:
        await store.close()
