"""Queue crash safety: the control plane (``surrealkv://`` on disk) is killed with SIGKILL
three times while several producer and consumer processes run about 10,000 puts, claims
and acks through the real SDK; after the last restart and a drain no acknowledged put is
lost and no acknowledged item is delivered again.

Clients ride the outages on the SDK's own machinery: every queue mutation carries a request
id and is retried with it while the control plane is unavailable, and the server applies a
request id once. Each process records an operation only after it returned, so the records
are what a user of the SDK could rely on.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import apothic
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for
from tests.server.plane_process import PlaneProcess, client_rows, end, free_port, start_client

PRODUCERS = 3
PUTS_EACH = 1100
CONSUMERS = 3
#: Puts, plus a claim and an ack per item: about 10,000 operations.
TOTAL_OPS = 3 * PRODUCERS * PUTS_EACH
KILLS = 3
#: A claim whose answer was lost with the control plane comes back after its lease.
LEASE_S = 4.0
#: The test's own put, retried late with its request id.
LATE, LATE_ID = "late-put", "late-put-request"
#: More newer requests to one queue than a count-only memory of request ids would keep.
BUSY_REQUESTS = 1300

# One process of the run. It records each operation on its own line, flushed, only after the
# call returned: "P value who t_sent_ns t_returned_ns", "C value t_sent_ns who receipt attempt
# t_returned_ns", "A value t_returned_ns who receipt t_sent_ns", "S value who receipt t_sent_ns
# t_returned_ns" (an ack refused as stale: that claim's lease ran out during an outage, so the
# item comes again). Times are CLOCK_MONOTONIC, shared by the processes.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    import apothic
    from apothic.exceptions import FailedPreconditionError

    role, name, who, count, out_path, done_path, lease_s = sys.argv[1:8]
    q = apothic.Queue.from_name(name)
    with open(out_path, "a", buffering=1) as out:
        if role == "producer":
            for i in range(int(count)):
                value = f"{who}-{i}"
                sent = time.monotonic_ns()
                q.put(value)
                out.write(f"P {value} {who} {sent} {time.monotonic_ns()}\\n")
            sys.exit(0)
        done = Path(done_path)
        while True:
            sent = time.monotonic_ns()
            claims = q.claim(1, lease_s=float(lease_s), wait_s=0.5)
            got = time.monotonic_ns()
            for c in claims:
                out.write(f"C {c.value} {sent} {who} {c.receipt} {c.attempt} {got}\\n")
            if not claims:
                if done.exists() and q.len() == 0:
                    sys.exit(0)
                continue
            sent = time.monotonic_ns()
            try:
                q.ack(*claims)
            except FailedPreconditionError:
                for c in claims:
                    out.write(f"S {c.value} {who} {c.receipt} {sent} {time.monotonic_ns()}\\n")
                continue
            returned = time.monotonic_ns()
            for c in claims:
                out.write(f"A {c.value} {returned} {who} {c.receipt} {sent}\\n")
    """
)


def test_queue_survives_kill_9_during_puts_claims_and_acks(tmp_path: Path) -> None:
    plane = PlaneProcess(tmp_path / "state", free_port(), tmp_path / "server.log")
    name = unique_name("crash")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = tmp_path / "producers-done"
    children: list[subprocess.Popen[bytes]] = []
    outs: list[Path] = []
    plane.start()
    try:
        apothic.Queue.from_name(name, client=plane.config).info()  # created before anyone races to create it

        def spawn(role: str, who: str, count: int) -> None:
            out = tmp_path / f"{who}.log"
            outs.append(out)
            args = [str(script), role, name, who, str(count), str(out), str(done), str(LEASE_S)]
            children.append(start_client(plane, args, tmp_path / f"{who}.err"))

        for i in range(PRODUCERS):
            spawn("producer", f"p{i}", PUTS_EACH)
        for i in range(CONSUMERS):
            spawn("consumer", f"c{i}", 0)

        def ops() -> int:
            return len(client_rows(outs))

        started = time.monotonic()
        kills: list[int] = []
        q = apothic.Queue.from_name(name, create_if_missing=False, client=plane.config)
        for k in range(1, KILLS + 1):
            # Spread the kills over the run: after about 20%, 45% and 70% of the operations.
            target = TOTAL_OPS * (k * 25 - 5) // 100
            wait_for(lambda t=target: ops() >= t, timeout=120, interval=0.05, what=f"{target} operations")
            if k == KILLS:
                # A put whose answer is lost with the control plane, as far as its client knows.
                q.put(LATE, request_id=LATE_ID)
            kills.append(time.monotonic_ns())
            plane.kill()
            time.sleep(0.2 * k)  # the clients keep retrying against nothing for a while
            plane.start()
            kills.append(time.monotonic_ns())
        producers, consumers = children[:PRODUCERS], children[PRODUCERS:]

        def failed(who: str) -> str:
            return f"{who} failed:\n{(tmp_path / f'{who}.err').read_text()}\nserver:\n{plane.output()[-5000:]}"

        for i, proc in enumerate(producers):
            assert proc.wait(120) == 0, failed(f"p{i}")
        done.touch()
        for i, proc in enumerate(consumers):
            assert proc.wait(120) == 0, failed(f"c{i}")
        elapsed = time.monotonic() - started
        # Its client retries it with the same request id, well within the SDK's retry window
        # (UNAVAILABLE_RETRY_S) but a few thousand other operations later: it is applied once.
        q.put(LATE, request_id=LATE_ID)

        # After one more restart nothing is left and nothing comes back.
        plane.kill()
        plane.start()
        left = q.len()
        leftover = [c.value for c in q.claim(10, lease_s=LEASE_S, wait_s=0.2)]
    finally:
        for proc in children:
            end(proc)
        plane.stop()

    rows = client_rows(outs)

    def history(value: str) -> list[str]:
        return [" ".join(r) for r in rows if r[1] == value]

    puts = [r[1] for r in rows if r[0] == "P"]
    assert len(puts) == len(set(puts)) == PRODUCERS * PUTS_EACH
    puts.append(LATE)
    claims = [(r[1], int(r[2]), r[4].partition(".")[0]) for r in rows if r[0] == "C"]
    acks = {r[1]: int(r[2]) for r in rows if r[0] == "A"}
    refused = {r[1] for r in rows if r[0] == "S"}
    claimed = Counter(value for value, _, _ in claims)
    assert len(rows) >= TOTAL_OPS
    assert set(claimed) <= set(puts), f"claimed values nobody put: {sorted(set(claimed) - set(puts))[:10]}"
    lost = sorted(set(puts) - set(claimed))
    assert not lost, f"{len(lost)} acknowledged puts were never delivered: {[history(v) for v in lost[:5]]}"

    # A put applied twice would show as one value at two item seqs.
    seqs: dict[str, set[str]] = {}
    for value, _, seq in claims:
        seqs.setdefault(value, set()).add(seq)
    put_twice = sorted(v for v, at in seqs.items() if len(at) > 1)
    assert not put_twice, f"puts applied twice: {[history(v) for v in put_twice[:5]]}; kills at {kills}"
    # An ack applied but answered "stale" on its retry would leave its item gone, unacked.
    gone_unacked = sorted(set(puts) - set(acks))
    assert not gone_unacked, f"items gone without an ack that returned: {[history(v) for v in gone_unacked[:5]]}"
    again = sorted({v for v, sent, _ in claims if sent > acks[v]})
    assert not again, f"acked items were delivered again: {[history(v) for v in again[:5]]}; kills at {kills}"
    assert left == 0 and leftover == [], f"{left} items left after the drain: {leftover}"
    redelivered = sum(n > 1 for n in claimed.values())
    print(
        f"\n{len(rows)} operations in {elapsed:.1f}s with {KILLS} kills; {redelivered} items delivered more than "
        f"once (at-least-once: their claim or ack was lost with the control plane); {len(refused)} acks refused "
        "as stale (their lease ran out during an outage)"
    )


def test_a_request_id_is_remembered_while_the_sdk_may_retry_it() -> None:
    # However busy the queue, an id outlives the SDK's retry window (UNAVAILABLE_RETRY_S).
    with LocalRuntime(db_url="mem://", workers=0) as runtime:
        q = apothic.Queue.from_name(unique_name("ids"), client=runtime.config)
        q.put("once", request_id="put-once")
        for i in range(BUSY_REQUESTS):  # a couple of seconds of a busy queue
            q.put(i)
        q.put("once", request_id="put-once")  # the SDK's retry of the first put
        assert q.len() == BUSY_REQUESTS + 1, "the retried put was applied again"
