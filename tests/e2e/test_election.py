"""Leader election against the real runtime: a leader killed with SIGKILL (a subprocess) is
replaced within its TTL + 1 s, observers never see leadership go backwards, proclaim is
guarded on still leading, resign hands over at once, and the async forms."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import apothic
from apothic.election import ElectionLeader
from apothic.exceptions import FailedPreconditionError, NotFoundError, UsageError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for

TTL_S = 1.0

_LEADER = """
import sys, time
import apothic

election = apothic.Dict.from_name(sys.argv[1]).election("main")
leadership = election.campaign("subprocess", ttl_s=float(sys.argv[2]))
print(leadership.token, flush=True)
time.sleep(600)
"""


@pytest.fixture
def d(apothic_runtime: LocalRuntime) -> apothic.Dict:
    return apothic.Dict.from_name(unique_name("elect"), client=apothic_runtime.config)


class Observer:
    """Collects what ``election.observe()`` yields, on a thread."""

    def __init__(self, d: apothic.Dict) -> None:
        self.seen: list[ElectionLeader] = []
        self._stream = d.election("main").observe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for leader in self._stream:
                self.seen.append(leader)
        except NotFoundError:
            pass  # the dict was deleted: the test is over


@pytest.fixture
def observers(d: apothic.Dict) -> Iterator[list[Observer]]:
    watching = [Observer(d), Observer(d)]
    yield watching
    apothic.Dict.delete(d.name)  # ends the streams


def _never_backwards(seen: list[ElectionLeader]) -> None:
    for before, after in zip(seen, seen[1:], strict=False):
        assert (after.token, after.rev) > (before.token, before.rev), seen


def test_a_killed_leader_is_replaced_within_its_ttl(
    d: apothic.Dict, observers: list[Observer], apothic_runtime: LocalRuntime
) -> None:
    env = {**os.environ, "APOTHIC_BASE_URL": apothic_runtime.address, "APOTHIC_API_KEY": apothic_runtime.api_key}
    proc = subprocess.Popen(
        [sys.executable, "-c", _LEADER, d.name, str(TTL_S)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        first_token = int(proc.stdout.readline())
        election = d.election("main")
        assert election.leader() == ElectionLeader("subprocess", first_token, first_token)
        # It keeps its leadership past its TTL while alive (its keepalive runs).
        time.sleep(TTL_S * 1.5)
        assert election.leader() == ElectionLeader("subprocess", first_token, first_token)

        campaign: list[float] = []
        taken = threading.Event()

        def candidate() -> None:
            with election.campaign("test", ttl_s=TTL_S) as leadership:
                campaign.append(time.monotonic())
                assert leadership.token is not None and leadership.token > first_token
                taken.set()
                leadership.proclaim("test, proclaimed")
                wait_for(lambda: all(len(o.seen) == 3 for o in observers), timeout=5, what="observers")

        thread = threading.Thread(target=candidate)
        thread.start()
        time.sleep(0.2)
        assert not taken.is_set(), "the live leader keeps leading"
        proc.kill()  # SIGKILL: no resign, no more keepalives
        killed = time.monotonic()
        assert taken.wait(TTL_S + 5)
        assert campaign[0] - killed <= TTL_S + 1.0
        thread.join(10)
    finally:
        proc.kill()
        proc.wait()
    assert election.leader() is None, "leaving the block resigned"
    for observer in observers:
        values = [leader.value for leader in observer.seen]
        assert values == ["subprocess", "test", "test, proclaimed"]
        assert observer.seen[0].token == first_token and observer.seen[1].token > first_token
        assert observer.seen[2].token == observer.seen[1].token
        _never_backwards(observer.seen)


def test_proclaim_only_while_leading(d: apothic.Dict) -> None:
    election = d.election("main")
    assert election.leader() is None
    with pytest.raises(UsageError, match="call campaign"):
        election.proclaim("x")
    leadership = election.campaign({"host": "a"}, ttl_s=0.5)
    election.proclaim({"host": "a", "n": 1})
    leader = election.leader()
    assert leader is not None and leader.value == {"host": "a", "n": 1} and leader.token == leadership.token
    d.put("plan", 1, fence=leadership.fence)
    # Stall it: its keepalive stops and the lease lapses.
    from apothic._sync import run_sync

    run_sync(leadership._lock._stop_keepalive(), "stall")
    wait_for(lambda: election.leader() is None, timeout=5, what="the lease to lapse")
    with pytest.raises(FailedPreconditionError, match="not held"):
        leadership.proclaim("stale")
    with pytest.raises(FailedPreconditionError, match="not held"):
        d.put("plan", 2, fence=leadership.fence)
    assert election.leader() is None and d["plan"] == 1
    assert leadership.resign() is False
    with pytest.raises(UsageError, match="resigned"):
        leadership.proclaim("after resign")


def test_resign_hands_over_and_tokens_increase(d: apothic.Dict) -> None:
    first = d.election("main")
    second = d.election("main")
    leadership = first.campaign("first")
    with pytest.raises(UsageError, match="already leads"):
        first.campaign("again")
    with pytest.raises(TimeoutError, match="not acquired within 0.2"):
        second.campaign("second", timeout=0.2)
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(second.campaign("second", timeout=10).token or 0))
    thread.start()
    time.sleep(0.1)
    assert not got
    assert first.resign() is True
    thread.join(10)
    assert leadership.token is None and got[0] > 0
    leader = first.leader()
    assert leader is not None and leader.value == "second" and leader.token == got[0]
    assert second.resign() is True and first.leader() is None
    with first.campaign("third") as third:
        assert third.token is not None and third.token > got[0]
    assert first.leader() is None


async def test_async_forms(d: apothic.Dict) -> None:
    election = d.election("main")
    async with election.aio.campaign("a", ttl_s=5) as leadership:
        await election.aio.proclaim("b")
        leader = await election.aio.leader()
        assert leader is not None and leader.value == "b" and leader.token == leadership.token
        seen = []
        async for observed in election.aio.observe():
            seen.append(observed)
            break
        assert seen == [leader]
    assert await election.aio.leader() is None
    leadership = await election.aio.campaign("c")
    assert (await election.aio.leader()) is not None
    assert await leadership.aio.resign() is True
    assert await election.aio.resign() is False
