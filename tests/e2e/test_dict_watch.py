"""Dict watches against a real control plane whose watches retain few changes and report
progress quickly: a snapshot of 1,000 keys then live changes with every rev exactly once, a
stalled watcher that gets a reset and a fresh snapshot, resuming, prefixes, progress, the
end of the stream when the dict is deleted, and mutations that did not commit. Each stream
is replayed into a state that must equal the dict's final state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import apothic
from apothic._lazy import get_client
from apothic.dict import DictChange, DictCompare, DictEntry, DictPut, DictWatchItem
from apothic.exceptions import FailedPreconditionError, InvalidArgumentError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.server.watch import WatchSettings
from apothic.testing import unique_name
from apothic.watch import Progress, Reset, SnapshotEnd

RETENTION = 64
PROGRESS_S = 0.25
#: A value big enough that a few hundred of them fill every buffer between the control
#: plane and a watcher that stopped reading.
BIG = b"x" * (128 * 1024)


@pytest.fixture(scope="module")
def runtime() -> Iterator[LocalRuntime]:
    with LocalRuntime(workers=0, watch=WatchSettings(retention=RETENTION, progress_s=PROGRESS_S)) as rt:
        yield rt


@pytest.fixture
def d(runtime: LocalRuntime) -> apothic.Dict:
    return apothic.Dict.from_name(unique_name("watch"), client=runtime.config)


State = dict[str, tuple[Any, int, int, int]]


def _row(e: DictEntry) -> tuple[Any, int, int, int]:
    return (e.value, e.version, e.mod_rev, e.create_rev)


class Replay:
    """Rebuilds a dict's state from a watch stream and checks the stream's promises."""

    def __init__(self, *, snapshot: bool) -> None:
        self.state: State = {}
        self.rev = -1
        self.change_revs: list[int] = []
        self.resets: list[Reset] = []
        self.progress: list[int] = []
        self._snapshot: State | None = {} if snapshot else None

    def apply(self, item: DictWatchItem) -> None:
        if isinstance(item, DictEntry):
            assert self._snapshot is not None, "snapshot entries only come in a snapshot"
            self._snapshot[item.key] = _row(item)
        elif isinstance(item, SnapshotEnd):
            assert self._snapshot is not None
            self.state, self._snapshot = self._snapshot, None
            self.rev = item.rev
        elif isinstance(item, DictChange):
            assert self._snapshot is None, "no change inside a snapshot"
            assert item.rev > self.rev, f"rev {item.rev} after rev {self.rev}"
            self.change_revs.append(item.rev)
            self.rev = item.rev
            assert item.events
            for event in item.events:
                if event.type == "put":
                    assert event.entry is not None and event.entry.key == event.key
                    self.state[event.key] = _row(event.entry)
                else:
                    self.state.pop(event.key)
        elif isinstance(item, Progress):
            assert item.rev >= self.rev
            self.rev = item.rev
            self.progress.append(item.rev)
        else:
            assert isinstance(item, Reset)
            assert item.after_rev == self.rev and item.oldest_rev > self.rev + 1
            self.resets.append(item)
            self._snapshot = {}  # a fresh snapshot follows (these watches ask for one)

    async def follow(self, stream: AsyncIterator[DictWatchItem], until_rev: asyncio.Future[int]) -> None:
        """Applies items until the replay is at ``until_rev`` (once that is known)."""
        async with contextlib.aclosing(stream):
            async for item in stream:
                self.apply(item)
                if until_rev.done() and self._snapshot is None and self.rev >= until_rev.result():
                    return


async def _state(d: apothic.Dict, prefix: str = "") -> State:
    return {e.key: _row(e) async for e in d.aio.entries(prefix)}


async def test_a_snapshot_of_1000_keys_then_every_change_once(d: apothic.Dict) -> None:
    for batch in range(10):
        await d.aio.txn([], then=[DictPut(f"k{batch * 100 + i:04}", i) for i in range(100)])
    assert await d.aio.len() == 1000 and await d.aio.rev() == 10
    final: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    replays = [Replay(snapshot=True) for _ in range(3)]
    tasks = [asyncio.create_task(r.follow(d.aio.watch(snapshot=True), final)) for r in replays[:2]]

    lease = await d.aio.grant(60)
    for i in range(150):
        if i == 50:  # a watcher that joins mid-stream: its snapshot and cursor agree
            tasks.append(asyncio.create_task(replays[2].follow(d.aio.watch(snapshot=True), final)))
        key = f"k{(i * 37) % 1200:04}"
        if i % 5 == 4:
            await d.aio.delete(key)
        elif i % 7 == 6:
            await d.aio.put(key, {"i": i}, lease=lease)
        else:
            await d.aio.put(key, i)
    await d.aio.txn([DictCompare("k0000", ">", 0)], then=[DictPut("k0000", "txn"), DictPut("new", 1)])
    await d.aio.revoke(lease)  # deletes each attached key at a rev of its own
    final.set_result(await d.aio.rev())
    await asyncio.wait_for(asyncio.gather(*tasks), 30)

    expected = await _state(d)
    for replay in replays:
        assert replay.state == expected
        assert not replay.resets
    first, _, late = replays
    # Every rev after the snapshot exactly once, in order: no gap, no repeat.
    assert first.change_revs == list(range(11, final.result() + 1))
    assert late.change_revs == list(range(late.change_revs[0], final.result() + 1))
    assert late.change_revs[0] > 11


async def test_a_stalled_watcher_gets_a_reset_and_a_fresh_snapshot(d: apothic.Dict) -> None:
    for i in range(10):
        await d.aio.put(f"k{i}", i)
    stalled = Replay(snapshot=True)
    stream = d.aio.watch(snapshot=True)
    while stalled.rev < 0:
        stalled.apply(await stream.__anext__())
    start = stalled.rev
    plain = d.aio.watch(after_rev=start)
    assert await asyncio.wait_for(plain.__anext__(), 5) == Progress(start)
    # The watchers stop reading while writers write far more than the control plane
    # retains, and more than the transport buffers.
    for i in range(150):
        await d.aio.put(f"k{i % 30}", (i, BIG))
    await d.aio.delete("k3")
    final: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    final.set_result(await d.aio.rev())

    await asyncio.wait_for(stalled.follow(stream, final), 30)
    assert stalled.resets, "the stalled watcher was told it missed changes"
    assert stalled.state == await _state(d)

    # Without a snapshot the reset says what is gone and the stream goes on with the
    # oldest change still retained.
    last = start
    resets: list[Reset] = []
    async for item in plain:
        if isinstance(item, Reset):
            assert item.after_rev == last
            resets.append(item)
            last = item.oldest_rev - 1
        elif isinstance(item, DictChange):
            assert item.rev == last + 1, "no gap unless a reset says so"
            last = item.rev
            if last == final.result():
                break
    assert resets
    await plain.aclose()


async def test_resume_after_a_rev(d: apothic.Dict) -> None:
    for i in range(5):
        await d.aio.put(f"k{i}", i)
    revs = []
    async with contextlib.aclosing(d.aio.watch(after_rev=2)) as changes:
        async for item in changes:
            assert isinstance(item, DictChange)
            revs.append((item.rev, item.events[0].key))
            if item.rev == 5:
                break
    assert revs == [(3, "k2"), (4, "k3"), (5, "k4")]
    # Resuming at the current rev sends nothing until the next change.
    stream = d.aio.watch(after_rev=5, snapshot=True)
    assert await stream.__anext__() == Progress(5)
    await d.aio.put("k9", 9)
    change = await stream.__anext__()
    assert isinstance(change, DictChange) and change.rev == 6
    await stream.aclose()


async def test_resume_from_a_rev_no_longer_retained(d: apothic.Dict) -> None:
    for i in range(RETENTION + 10):
        await d.aio.put("k", i)
    items: list[Any] = []
    async with contextlib.aclosing(d.aio.watch(after_rev=1, snapshot=True)) as stream:
        async for item in stream:
            items.append(item)
            if isinstance(item, SnapshotEnd):
                break
    reset = items[0]
    assert isinstance(reset, Reset) and reset.after_rev == 1 and reset.rev == RETENTION + 10
    assert reset.oldest_rev == 11 and "no longer retained" in reset.reason
    assert [e.value for e in items[1:-1]] == [RETENTION + 9] and items[-1] == SnapshotEnd(RETENTION + 10)


async def test_bad_resume_revs_and_missing_dicts(d: apothic.Dict, runtime: LocalRuntime) -> None:
    await d.aio.put("k", 1)
    with pytest.raises(InvalidArgumentError, match="after rev 2: its current rev is 1"):
        async for _ in d.aio.watch(after_rev=2):
            pass
    with pytest.raises(InvalidArgumentError, match="revs start at 0"):
        async for _ in d.aio.watch(after_rev=-1):
            pass
    missing = apothic.Dict(unique_name("missing"), client=runtime.config)
    with pytest.raises(NotFoundError, match="not found"):
        async for _ in missing.aio.watch():
            pass


async def test_deleting_the_dict_ends_the_stream(d: apothic.Dict, runtime: LocalRuntime) -> None:
    seen: list[Any] = []

    async def watch() -> None:
        async for item in d.aio.watch(snapshot=True):
            seen.append(item)

    task = asyncio.create_task(watch())
    await d.aio.put("k", 1)
    await get_client(runtime.config).delete_dict(d.name)
    with pytest.raises(NotFoundError, match="was deleted"):
        await asyncio.wait_for(task, 5)
    assert isinstance(seen[-1], DictChange | SnapshotEnd | Progress)


async def test_a_prefix_sees_only_its_keys(d: apothic.Dict) -> None:
    await d.aio.put("jobs/1", "a")
    await d.aio.put("other", "x")
    replay = Replay(snapshot=True)
    stream = d.aio.watch(snapshot=True, prefix="jobs/")
    while replay.rev < 0:
        replay.apply(await stream.__anext__())
    assert replay.state == {"jobs/1": ("a", 1, 1, 1)} and replay.rev == 2
    await d.aio.put("other", "y")  # rev 3: skipped
    await d.aio.txn([], then=[DictPut("jobs/2", "b"), DictPut("jobz", "no")])  # rev 4: one event of two
    await d.aio.delete("jobs/1")  # rev 5
    items = [await stream.__anext__() for _ in range(2)]
    assert [type(i) for i in items] == [DictChange, DictChange]
    assert [(i.rev, [(e.type, e.key) for e in i.events]) for i in items if isinstance(i, DictChange)] == [
        (4, [("put", "jobs/2")]),
        (5, [("delete", "jobs/1")]),
    ]
    for item in items:
        replay.apply(item)
    assert replay.state == await _state(d, "jobs/")
    # Quiet prefix, busy dict: progress still moves, so a watcher can resume from it.
    for i in range(20):
        await d.aio.put("other", i)
        await asyncio.sleep(PROGRESS_S / 10)
    progress = await asyncio.wait_for(stream.__anext__(), 5)
    assert isinstance(progress, Progress) and progress.rev > 5
    await stream.aclose()


async def test_progress_when_idle(d: apothic.Dict) -> None:
    await d.aio.put("k", 1)
    loop = asyncio.get_running_loop()
    stream = d.aio.watch()
    started = loop.time()
    first = await asyncio.wait_for(stream.__anext__(), 5)
    assert first == Progress(1) and loop.time() - started >= PROGRESS_S * 0.8
    second = await asyncio.wait_for(stream.__anext__(), 5)
    assert second == Progress(1)
    await stream.aclose()


async def test_mutations_that_did_not_commit_never_appear(d: apothic.Dict) -> None:
    await d.aio.put("k", 1)
    stream = d.aio.watch(after_rev=1)
    with pytest.raises(FailedPreconditionError):
        await d.aio.put("k", 2, if_version=7)
    with pytest.raises(FailedPreconditionError):
        await d.aio.put("k", 2, if_absent=True)
    with pytest.raises(FailedPreconditionError):
        await d.aio.put("k", 2, fence=("nobody", 1))
    assert not (await d.aio.txn([DictCompare("k", "==", 9)], then=[DictPut("k", 3)])).succeeded
    assert not await d.aio.delete("missing")
    await d.aio.put("k", 4)
    change = await asyncio.wait_for(stream.__anext__(), 5)
    assert isinstance(change, DictChange) and change.rev == 2
    assert change.events[0].entry is not None and change.events[0].entry.value == 4
    await stream.aclose()


def test_the_blocking_form(d: apothic.Dict) -> None:
    d["a"] = 1
    stream = d.watch(snapshot=True)
    assert next(stream) == DictEntry("a", 1, 1, 1, 1)
    assert next(stream) == SnapshotEnd(1)
    d.put("b", 2, lease=d.grant(30))
    change = next(stream)
    assert isinstance(change, DictChange) and change.rev == 2
    assert change.events[0].entry is not None and change.events[0].entry.lease_id.startswith("leases:")
    stream.close()
