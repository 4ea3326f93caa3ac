"""DictManager's write pipeline on a real ``mem://`` Store: concurrent mutations of one dict
share transactions (write sets) without holding its lock across the commit. Each CAS
still wins at most once per version, revs stay gap-free and in commit order for watchers,
a retried request id in flight is applied once, and when another replica writes the dict
mid-pipeline every mutation in flight is re-planned on the reloaded copy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from surrealdb import RecordID

from apothic.server.dicts import DictManager, PutOutcome
from apothic.server.errors import FailedPrecondition
from apothic.server.store import Store
from apothic.server.watch import Change, SnapshotEnd, WatchSettings

ACCOUNT = "accounts:pipeline"


async def _next(stream: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(stream.__anext__(), 5)


async def _cas_loop(dicts: DictManager, key: str, rounds: int, wins: list[int], revs: list[int]) -> None:
    for i in range(rounds):
        entry, _ = await dicts.get(ACCOUNT, "d", key)
        try:
            outcome = await dicts.put(
                ACCOUNT, "d", key, str(i).encode(), "json", if_version=0 if entry is None else entry.version
            )
        except FailedPrecondition:
            continue
        wins.append(outcome.version)
        revs.append(outcome.rev)


async def test_concurrent_cas_shares_transactions_and_wins_once_per_version(store: Store) -> None:
    dicts = DictManager(store, watch=WatchSettings(retention=10_000))
    await dicts.create(ACCOUNT, "d", exist_ok=False)
    stream = dicts.watch(ACCOUNT, "d", snapshot=True, after_rev=None)
    assert await _next(stream) == SnapshotEnd(0)

    flushes = 0
    committer = store._committer
    assert committer is not None
    flush = committer._flush

    async def counting(batch: Any) -> None:
        nonlocal flushes
        flushes += 1
        await flush(batch)

    committer._flush = counting  # type: ignore[method-assign]
    shared: dict[str, tuple[list[int], list[int]]] = {k: ([], []) for k in ("s0", "s1")}
    own: dict[str, tuple[list[int], list[int]]] = {f"k{c}": ([], []) for c in range(12)}
    loops = [_cas_loop(dicts, k, 20, *shared[k]) for k in shared for _ in range(4)]
    loops += [_cas_loop(dicts, k, 20, *own[k]) for k in own]
    await asyncio.gather(*loops)

    # A client alone on its key always wins; on a shared key each version is won once.
    for wins, _ in own.values():
        assert wins == list(range(1, 21))
    for key, (wins, _) in shared.items():
        assert sorted(wins) == list(range(1, len(wins) + 1)), key
    revs = sorted(r for wins, rs in [*own.values(), *shared.values()] for r in rs)
    assert revs == list(range(1, len(revs) + 1))  # one rev per committed put, no gaps
    assert flushes < len(revs) / 2  # they shared transactions

    # The watch saw every rev once, in order; the store agrees with memory.
    seen = [(await _next(stream)).rev for _ in revs]
    assert seen == revs
    fresh = DictManager(store)
    for key in [*own, *shared]:
        assert (await fresh.get(ACCOUNT, "d", key))[0] == (await dicts.get(ACCOUNT, "d", key))[0]
    assert (await fresh.info(ACCOUNT, "d"))[0].rev == len(revs)


async def test_a_request_id_retried_while_in_flight_is_applied_once(store: Store) -> None:
    dicts = DictManager(store)
    await dicts.create(ACCOUNT, "d", exist_ok=False)
    await dicts.put(ACCOUNT, "d", "other", b"0", "json")
    calls = [dicts.put(ACCOUNT, "d", "k", b"1", "json", request_id="r1") for _ in range(3)]
    calls.append(dicts.put(ACCOUNT, "d", "other", b"1", "json"))
    outcomes = await asyncio.gather(*calls)
    assert outcomes[0] == outcomes[1] == outcomes[2] == PutOutcome(1, outcomes[0].rev)
    assert (await dicts.get(ACCOUNT, "d", "k"))[0].version == 1  # type: ignore[union-attr]
    assert (await DictManager(store).get(ACCOUNT, "d", "k"))[0].version == 1  # type: ignore[union-attr]


async def test_another_replica_writing_mid_pipeline_replans_everything_in_flight(store: Store) -> None:
    mine, theirs = DictManager(store), DictManager(store)
    await mine.create(ACCOUNT, "d", exist_ok=False)
    await mine.put(ACCOUNT, "d", "k", b"0", "json")
    await theirs.get(ACCOUNT, "d", "k")  # loaded by the other replica too

    async def bump(key: str, n: int) -> list[int]:
        versions = []
        for _ in range(n):
            versions.append((await mine.put(ACCOUNT, "d", key, b"x", "json")).version)
        return versions

    async def interfere() -> None:
        # The other replica shares this process's group committer, so while mine keeps a
        # write set queued its own guarded write can lose every race: it backs off.
        for i in range(5):
            await asyncio.sleep(0)
            while True:
                try:
                    await theirs.put(ACCOUNT, "d", "theirs", str(i).encode(), "json", request_id=f"t{i}")
                    break
                except FailedPrecondition:
                    await asyncio.sleep(0.001)

    results = await asyncio.gather(*(bump(f"m{c}", 10) for c in range(6)), interfere())
    for versions in results[:6]:
        assert versions == list(range(1, 11))
    # Memory and a fresh load agree, and the other replica's writes all landed (mine may
    # not have seen its last ones: reads are served from memory).
    fresh = DictManager(store)
    record, length = await fresh.info(ACCOUNT, "d")
    assert length == 8 and record.rev == 1 + 60 + 5
    for c in range(6):
        assert (await mine.get(ACCOUNT, "d", f"m{c}"))[0] == (await fresh.get(ACCOUNT, "d", f"m{c}"))[0]
    assert (await fresh.get(ACCOUNT, "d", "theirs"))[0].version == 5  # type: ignore[union-attr]


async def test_a_write_planned_on_a_failed_one_never_commits(store: Store) -> None:
    """The write counter guard alone would let it through: another replica advanced the
    counter by exactly as much as the failed write would have."""
    dicts = DictManager(store, watch=WatchSettings(retention=100))
    record, _, _ = await dicts.create(ACCOUNT, "d", exist_ok=False)
    await dicts.put(ACCOUNT, "d", "k", b"0", "json")
    stream = dicts.watch(ACCOUNT, "d", snapshot=False, after_rev=1)
    # Another replica's write, queued ahead of ours: it advances the counter by one.
    other = asyncio.ensure_future(
        store.commit(
            [
                (
                    "UPDATE $d SET writes = writes + 1, rev = rev + 1 RETURN NONE",
                    {"d": RecordID("dict", record.dict_id.partition(":")[2])},
                )
            ]
        )
    )
    first = asyncio.ensure_future(dicts.put(ACCOUNT, "d", "k", b"a", "json"))  # planned at version 1
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the committer took [other, first]: the next put opens a new set
    second = asyncio.ensure_future(dicts.put(ACCOUNT, "d", "k", b"b", "json", if_version=2))
    await other
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(outcomes[0], PutOutcome)
    # Either the CAS saw the first put committed (version 2) or it failed; it never
    # succeeded on a version 2 that was never committed.
    versions = []
    while len(versions) < (2 if isinstance(outcomes[1], PutOutcome) else 1):
        change = await _next(stream)
        if isinstance(change, Change):
            versions += [e.entry.version for e in change.events if e.key == "k" and e.entry is not None]
    assert versions == list(range(2, 2 + len(versions)))
    stored = (await DictManager(store).get(ACCOUNT, "d", "k"))[0]
    assert stored is not None and stored.version == 1 + len(versions)
