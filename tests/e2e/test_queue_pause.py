"""A consumer process paused (SIGSTOP) past its lease loses its claim: another consumer
claims the item, and the paused one's ack, once it runs again, is refused as stale."""

from __future__ import annotations

import os
import queue as stdlib_queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import apothic
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for

LEASE_S = 1.0

# Claims one item, reports it, then finishes its "work" when the test says so and acks.
CONSUMER = textwrap.dedent(
    """
    import sys

    import apothic
    from apothic.exceptions import FailedPreconditionError

    q = apothic.Queue.from_name(sys.argv[1], create_if_missing=False)
    (claim,) = q.claim(lease_s=float(sys.argv[2]), wait_s=30)
    print("claimed", claim.value, claim.attempt, flush=True)
    sys.stdin.readline()
    try:
        q.ack(claim)
    except FailedPreconditionError as exc:
        print("rejected", exc, flush=True)
    else:
        print("acked", flush=True)
    """
)


def _lines(proc: subprocess.Popen[str]) -> stdlib_queue.Queue[str]:
    lines: stdlib_queue.Queue[str] = stdlib_queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _stopped(pid: int) -> bool:
    # The state letter follows the command name in parentheses: "T" is stopped.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"


def test_a_paused_consumers_ack_is_rejected_after_another_claimed(apothic_runtime: LocalRuntime) -> None:
    q = apothic.Queue.from_name(unique_name("pause"), client=apothic_runtime.config)
    q.put("job")
    env = {**os.environ, "APOTHIC_BASE_URL": apothic_runtime.address, "APOTHIC_API_KEY": apothic_runtime.api_key}
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, q.name, str(LEASE_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = _lines(proc)
        assert lines.get(timeout=60) == "claimed job 1"
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: _stopped(proc.pid), what="the consumer to stop")
        # Its lease runs out while it is frozen; another consumer gets the item.
        (mine,) = q.claim(lease_s=30, wait_s=10)
        assert mine.value == "job" and mine.attempt == 2
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.stdin is not None
        proc.stdin.write("done\n")
        proc.stdin.flush()
        outcome = lines.get(timeout=30)
        assert outcome.startswith("rejected") and "stale" in outcome, outcome
        assert proc.wait(30) == 0
        q.ack(mine)
        assert q.len() == 0, "the item was processed once, by the consumer that held it"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
