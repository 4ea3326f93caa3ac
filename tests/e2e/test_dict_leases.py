"""Dict leases and fenced locks against the real runtime: attached keys vanish when a lease
expires or is revoked, keepalive holds them, a stalled lock holder's guarded write is
rejected (a holder simulated in process, and a real subprocess paused with SIGSTOP), fencing
tokens strictly increase, and leases survive a restart. Expiry runs on the control plane's
clock, which most of these tests replace with a fake one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import apothic
from apothic.dict import DictLock
from apothic.exceptions import FailedPreconditionError, InvalidArgumentError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for
from tests.e2e.fake_clock import FakeClock


@pytest.fixture
def d(apothic_runtime: LocalRuntime) -> apothic.Dict:
    return apothic.Dict.from_name(unique_name("dict"), client=apothic_runtime.config)


def _stall(lock: DictLock) -> None:
    """Simulates a paused holder: its keepalive stops (the lock stays 'held' on its side)."""
    from apothic._sync import run_sync

    run_sync(lock._stop_keepalive(), "stall")


def test_keys_vanish_when_a_lease_expires(d: apothic.Dict, clock: FakeClock) -> None:
    lease = d.grant(10)
    assert lease.ttl_s == 10 and lease.deadline == clock() + timedelta(seconds=10)
    d.put("a", 1, lease=lease)
    d.put("b", 2, lease=lease.lease_id)
    d.put("plain", 3)
    rev = d.rev()
    clock.advance(9.9)
    assert d.keys() == ["a", "b", "plain"]
    clock.advance(0.2)
    # The next operation (or the sweep) expires it: one rev per deleted key.
    assert d.items() == [("plain", 3)]
    assert d.rev() == rev + 2
    with pytest.raises(NotFoundError, match="expired or was revoked"):
        d.keepalive(lease)
    with pytest.raises(NotFoundError, match="expired or was revoked"):
        d.put("c", 1, lease=lease)
    assert d.revoke(lease) is False


def test_the_sweep_expires_untouched_dicts(apothic_runtime: LocalRuntime, d: apothic.Dict, clock: FakeClock) -> None:
    d.put("k", "v", lease=d.grant(1))
    clock.advance(2)
    assert apothic_runtime.plane is not None
    account = next(acct for (acct, name) in apothic_runtime.plane.dicts._live if name == d.name)
    live = apothic_runtime.plane.dicts._live[(account, d.name)]
    wait_for(lambda: "k" not in live.entries, timeout=5, what="the sweep to delete the key")


def test_keepalive_keeps_keys_and_revoke_deletes_them(d: apothic.Dict, clock: FakeClock) -> None:
    lease = d.grant(5)
    d.put("k", "v", lease=lease)
    for _ in range(4):
        clock.advance(4)
        deadline = d.keepalive(lease)
        assert deadline == clock() + timedelta(seconds=5)
    assert d["k"] == "v"
    # A put without a lease detaches the key.
    d.put("detached", 1, lease=lease)
    d.put("detached", 2)
    rev = d.rev()
    assert d.revoke(lease) is True
    assert d.items() == [("detached", 2)] and d.rev() == rev + 1
    assert d.revoke(lease) is False and d.rev() == rev + 1
    with pytest.raises(InvalidArgumentError, match="TTL"):
        d.grant(0)


def test_a_stalled_holder_loses_the_lock_and_its_fenced_write(d: apothic.Dict, clock: FakeClock) -> None:
    first = d.lock("leader", ttl_s=30)
    token1 = first.__enter__()
    d.put("config", "from first", fence=("leader", token1))
    assert first.lease is not None and d.get("__lock__/leader") == first.lease.lease_id
    _stall(first)
    clock.advance(31)
    with d.lock("leader", ttl_s=30, timeout=5) as token2:
        assert token2 > token1
        with pytest.raises(FailedPreconditionError, match=f"held with token {token2}, not with token {token1}"):
            d.put("config", "from first, stale", fence=("leader", token1))
        d.put("config", "from second", fence=("leader", token2))
        # The stale holder's release does not free the new holder's lock.
        first.__exit__(None, None, None)
        assert d.contains("__lock__/leader")
    assert d["config"] == "from second"
    assert not d.contains("__lock__/leader")
    with pytest.raises(FailedPreconditionError, match="not held"):
        d.put("config", "late", fence=("leader", token2))


def test_a_waiter_gets_the_lock_when_the_holder_releases(d: apothic.Dict) -> None:
    order: list[str] = []
    held = threading.Event()
    tokens: list[int] = []

    def second() -> None:
        held.wait()
        with d.lock("m", timeout=10) as token:
            order.append("second")
            tokens.append(token)

    thread = threading.Thread(target=second)
    thread.start()
    with d.lock("m") as token:
        tokens.append(token)
        held.set()
        with pytest.raises(TimeoutError, match="'m'"):
            with d.lock("m", timeout=0.2):
                pass
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"] and tokens[1] > tokens[0]


def test_tokens_strictly_increase(d: apothic.Dict) -> None:
    tokens: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            with d.lock("counter", timeout=30) as token:
                with lock:
                    tokens.append(token)
                d.put("n", d.get("n", 0) + 1, fence=("counter", token))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert tokens == sorted(tokens) and len(set(tokens)) == 20
    assert d["n"] == 20, "the lock made the read-modify-write exclusive"


async def test_async_lock(d: apothic.Dict) -> None:
    async with d.aio.lock("a") as token:
        await d.aio.put("k", 1, fence=("a", token))
        lease = d.aio.lock("a", timeout=0)
        with pytest.raises(TimeoutError):
            await lease.acquire()
    assert not await d.aio.contains("__lock__/a")


def test_a_restart_keeps_leases(tmp_path: Path) -> None:
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=0).start()
    name = unique_name("dict")
    try:
        d = apothic.Dict.from_name(name, client=first.config)
        long = d.grant(3600)
        short = d.grant(0.5)
        d.put("long", 1, lease=long)
        d.put("short", 2, lease=short)
        rev = d.rev()
    finally:
        first.stop()
    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=0, api_key=first.api_key).start()
    try:
        d = apothic.Dict.from_name(name, client=second.config)
        # The short lease expires after the restart (the sweep loaded the dict); the long
        # one kept its deadline.
        wait_for(lambda: d.keys() == ["long"], timeout=10, what="the short lease to expire")
        assert d.rev() == rev + 1
        assert d.keepalive(long) > long.deadline
        assert d.revoke(long) is True and d.keys() == []
    finally:
        second.stop()


_HOLDER = """
import sys
import apothic
from apothic.exceptions import FailedPreconditionError

d = apothic.Dict.from_name(sys.argv[1])
token = d.lock("leader", ttl_s=float(sys.argv[2])).__enter__()
d.put("config", "from the subprocess", fence=("leader", token))
print(token, flush=True)
sys.stdin.readline()  # the test pauses this process here
try:
    d.put("config", "from the subprocess, stale", fence=("leader", token))
    print("accepted", flush=True)
except FailedPreconditionError as exc:
    print("rejected:", exc, flush=True)
"""


def test_a_paused_holder_process_loses_the_lock_and_its_fenced_write(
    d: apothic.Dict, apothic_runtime: LocalRuntime
) -> None:
    ttl_s = 1.0
    env = {**os.environ, "APOTHIC_BASE_URL": apothic_runtime.address, "APOTHIC_API_KEY": apothic_runtime.api_key}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, d.name, str(ttl_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        accepted = [int(proc.stdout.readline())]
        assert d["config"] == "from the subprocess"
        os.kill(proc.pid, signal.SIGSTOP)  # no keepalives from here on
        with d.lock("leader", ttl_s=30, timeout=ttl_s + 5) as token:
            accepted.append(token)
            d.put("config", "from the test", fence=("leader", token))
            os.kill(proc.pid, signal.SIGCONT)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            verdict = proc.stdout.readline()
            assert verdict.startswith("rejected:"), verdict
            assert f"held with token {token}, not with token {accepted[0]}" in verdict
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert d["config"] == "from the test"
    assert accepted == sorted(set(accepted)) and len(accepted) == 2, "accepted tokens strictly increase"
