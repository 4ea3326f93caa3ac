"""The watch machinery shared by queues and dicts: retained changes, snapshot, progress, reset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apothic.server.errors import InvalidArgument, NotFound
from apothic.server.watch import (
    Change,
    ChangeLog,
    Progress,
    Reset,
    SnapshotChunk,
    SnapshotEnd,
    WatchSettings,
    watch,
)


class _Object:
    """A toy watchable object: a dict of keys with a change log."""

    def __init__(self, retention: int = 100) -> None:
        self.state: dict[str, int] = {}
        self.log: ChangeLog[tuple[str, int]] = ChangeLog(0, retention)
        self.deleted = False

    def put(self, key: str, value: int) -> None:
        self.state[key] = value
        self.log.append(self.log.rev + 1, [(key, value)])

    def log_of(self) -> ChangeLog[tuple[str, int]]:
        if self.deleted:
            raise NotFound("gone")
        return self.log

    def delete(self) -> None:
        self.deleted = True
        self.log.close()

    def snapshot(self) -> list[tuple[str, int]]:
        return sorted(self.state.items())


def _stream(obj: _Object, *, snapshot: bool, after_rev: int | None = None, progress_s: float = 30.0) -> Any:
    return watch(
        obj.log_of,
        what="object 'o'",
        snapshot=obj.snapshot if snapshot else None,
        after_rev=after_rev,
        settings=WatchSettings(retention=100, progress_s=progress_s),
    )


async def _take(stream: AsyncIterator[Any], n: int) -> list[Any]:
    return [await asyncio.wait_for(anext(stream), 5) for _ in range(n)]


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="retention"):
        WatchSettings(retention=0)
    with pytest.raises(ValueError, match="progress"):
        WatchSettings(progress_s=0)


def test_change_log_keeps_the_newest_changes_and_finds_gaps() -> None:
    log: ChangeLog[str] = ChangeLog(10, retention=3)
    assert log.since(10) == [] and log.oldest_rev == 11
    for rev in range(11, 16):
        log.append(rev, [f"e{rev}"])
    assert [c.rev for c in log.since(12) or []] == [13, 14, 15]
    assert log.since(11) is None  # rev 12 is gone
    assert log.since(15) == []
    with pytest.raises(ValueError):
        log.append(15, ["again"])


async def test_snapshot_then_live_changes_in_rev_order() -> None:
    obj = _Object()
    obj.put("a", 1)
    obj.put("b", 2)
    stream = _stream(obj, snapshot=True)
    first = await _take(stream, 2)
    assert first == [SnapshotChunk(2, (("a", 1), ("b", 2))), SnapshotEnd(2)]
    obj.put("a", 3)
    obj.put("c", 4)
    assert await _take(stream, 2) == [Change(3, (("a", 3),)), Change(4, (("c", 4),))]
    await stream.aclose()


async def test_resume_after_a_rev_sends_only_later_changes() -> None:
    obj = _Object()
    for i in range(5):
        obj.put(f"k{i}", i)
    stream = _stream(obj, snapshot=False, after_rev=3)
    assert [c.rev for c in await _take(stream, 2)] == [4, 5]
    await stream.aclose()


async def test_resume_from_the_future_or_a_negative_rev_is_refused() -> None:
    obj = _Object()
    obj.put("a", 1)
    with pytest.raises(InvalidArgument, match="current rev is 1"):
        await anext(_stream(obj, snapshot=False, after_rev=7))
    with pytest.raises(InvalidArgument, match="revs start at 0"):
        await anext(_stream(obj, snapshot=False, after_rev=-1))


async def test_a_watcher_behind_the_window_gets_a_reset_then_a_fresh_snapshot() -> None:
    obj = _Object(retention=2)
    for i in range(5):
        obj.put(f"k{i}", i)
    stream = _stream(obj, snapshot=True, after_rev=1)
    reset, chunk, end = await _take(stream, 3)
    assert reset == Reset(1, 4, 5, reset.reason) and "no longer retained" in reset.reason
    assert isinstance(chunk, SnapshotChunk) and chunk.rev == 5 and len(chunk.entries) == 5
    assert end == SnapshotEnd(5)
    await stream.aclose()


async def test_without_snapshots_a_reset_goes_on_from_the_oldest_retained_change() -> None:
    obj = _Object(retention=2)
    for i in range(5):
        obj.put(f"k{i}", i)
    stream = _stream(obj, snapshot=False, after_rev=0)
    reset, *changes = await _take(stream, 3)
    assert isinstance(reset, Reset) and reset.oldest_rev == 4
    assert [c.rev for c in changes] == [4, 5]
    await stream.aclose()


async def test_a_slow_reader_is_reset_instead_of_skipping_changes() -> None:
    obj = _Object(retention=3)
    stream = _stream(obj, snapshot=False)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    obj.put("a", 1)
    assert await asyncio.wait_for(pending, 5) == Change(1, (("a", 1),))
    for i in range(10):  # the reader is away while ten changes commit
        obj.put("b", i)
    reset = await asyncio.wait_for(anext(stream), 5)
    assert isinstance(reset, Reset) and reset.after_rev == 1 and reset.oldest_rev == 9
    assert [c.rev for c in await _take(stream, 3)] == [9, 10, 11]
    await stream.aclose()


async def test_an_idle_watch_sends_progress_markers() -> None:
    obj = _Object()
    obj.put("a", 1)
    stream = _stream(obj, snapshot=False, progress_s=0.05)
    assert await _take(stream, 2) == [Progress(1), Progress(1)]
    obj.put("a", 2)
    assert await _take(stream, 1) == [Change(2, (("a", 2),))]
    await stream.aclose()


async def test_deleting_the_object_ends_the_watch() -> None:
    obj = _Object()
    stream = _stream(obj, snapshot=False)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    obj.delete()
    with pytest.raises(NotFound):
        await asyncio.wait_for(pending, 5)


async def test_skipping_revs_resets_watchers_that_had_not_seen_them() -> None:
    obj = _Object()
    obj.put("a", 1)
    stream = _stream(obj, snapshot=False, after_rev=1)
    obj.log.skip_to(5)  # revs 2..5 happened elsewhere
    reset = await asyncio.wait_for(anext(stream), 5)
    assert isinstance(reset, Reset) and reset.after_rev == 1 and reset.oldest_rev == 6
    obj.put("b", 2)
    assert await _take(stream, 1) == [Change(6, (("b", 2),))]
    await stream.aclose()


def test_retention_is_also_bounded_by_payload_bytes() -> None:
    log: ChangeLog[str] = ChangeLog(0, retention=100, retention_bytes=1000)
    for rev in range(1, 6):
        log.append(rev, ["x"], size=400)
    assert log.oldest_rev == 4  # three changes of 400 bytes would exceed 1000
    log.append(6, ["huge"], size=5000)
    assert log.oldest_rev == 6  # the newest change stays, however large


async def test_invalidating_the_log_resets_watchers_even_when_current() -> None:
    obj = _Object()
    obj.put("a", 1)
    stream = _stream(obj, snapshot=True)
    assert [type(i) for i in await _take(stream, 2)] == [SnapshotChunk, SnapshotEnd]
    obj.state["a"] = 7  # the object was reloaded with a different state
    obj.log.invalidate("reloaded after a failed write")
    reset, chunk, end = await _take(stream, 3)
    assert isinstance(reset, Reset) and "reloaded" in reset.reason
    assert chunk == SnapshotChunk(1, (("a", 7),)) and end == SnapshotEnd(1)
    await stream.aclose()
