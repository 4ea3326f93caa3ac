"""A job watch resumes from its last seq across control-plane restarts (a SIGKILL and a
graceful stop) with no gap and no repeat, and every seq it saw names the same event that a
replay of the job's log shows afterwards.

Watchers are only sent committed events, so a SIGKILL cannot take back an event a watcher
saw. The job itself is a spawned (durable) job: a control plane that dies mid-attempt loses
that attempt; on its next start it logs "attempt N was lost: the control plane restarted"
and queues the job again, and attempt N+1 runs it from the start (the lost attempt's output
stays in the log).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import apothic
from apothic.config import ClientConfig
from apothic.exceptions import ApothicError, UnavailableError
from apothic.testing import unique_name, wait_for
from apothic.watch import SnapshotEnd
from tests.server.plane_process import PlaneProcess, end, free_port, start_worker

LINES = 30
LINE_S = 0.1


class _Watcher(threading.Thread):
    """Watches a job from its first event to its end, resuming after the last seq it saw
    whenever the stream breaks."""

    def __init__(self, job_id: str, config: ClientConfig) -> None:
        super().__init__(daemon=True)
        self.job = apothic.Job.from_id(job_id, client=config)
        self.seen: list[apothic.JobEvent] = []
        #: The last seq seen before each failed attempt to watch.
        self.breaks: list[int] = []
        self.done = threading.Event()
        self.failure: ApothicError | None = None

    @property
    def last(self) -> int:
        return self.seen[-1].seq if self.seen else 0

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                for event in self.job.watch(snapshot=False, after_seq=self.last):
                    self.seen.append(event)
                    if isinstance(event, apothic.JobEndEvent):
                        self.done.set()
                        return
            except UnavailableError:  # the control plane went away: resume where we were
                self.breaks.append(self.last)
                time.sleep(0.1)
            except ApothicError as exc:
                self.failure = exc
                return

    def progress(self) -> int:
        """How many events the watcher saw; raises what stopped it."""
        if self.failure is not None:
            raise AssertionError(f"the watch failed after seq {self.last}") from self.failure
        return len(self.seen)

    def lines_of(self, attempt: int) -> int:
        """How many lines of ``attempt`` the watcher saw."""
        current, count = 0, 0
        for event in self.seen:
            if isinstance(event, apothic.JobRunningEvent):
                current = event.attempt
            elif isinstance(event, apothic.JobLogEvent) and event.stream == "stdout" and current == attempt:
                count += event.data.count("\n")
        return count


def _content(event: apothic.JobEvent) -> dict[str, Any]:
    fields = dataclasses.asdict(event)
    fields.pop("time")
    return {"kind": event.kind, **fields}


def test_job_watch_resumes_after_kill_and_graceful_restart(tmp_path: Path) -> None:
    plane = PlaneProcess(tmp_path / "state", free_port(), tmp_path / "server.log")
    plane.start()
    worker = start_worker(plane, tmp_path / "worker", tmp_path / "worker.log")
    try:
        app = apothic.App(unique_name("resume"), client=plane.config)

        @app.function(timeout_s=120)
        def count(n: int, pause: float) -> str:
            for i in range(1, n + 1):
                print(f"line {i}", flush=True)
                time.sleep(pause)
            return "counted"

        app.deploy()
        job = count.spawn(LINES, LINE_S)
        watcher = _Watcher(job.job_id, plane.config)
        watcher.start()

        wait_for(lambda: watcher.progress() and watcher.lines_of(1) >= 5, timeout=60, what="attempt 1 to print")
        plane.kill()  # mid-attempt, no flush: what the watcher saw must already be durable
        plane.start()
        wait_for(lambda: watcher.progress() and watcher.lines_of(2) >= 5, timeout=60, what="attempt 2 to print")
        plane.stop()  # graceful, still mid-attempt
        plane.start()
        watcher.join(120)
        assert watcher.progress() and watcher.done.is_set(), f"the watch did not reach the job's end: {watcher.seen}"
        resumed_after = sorted(set(watcher.breaks))
        print("the watch resumed after seqs", resumed_after)

        assert len(resumed_after) >= 2, "it resumed after each restart"
        seen = watcher.seen
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1)), "no gap and no repeat"
        end_event = seen[-1]
        assert isinstance(end_event, apothic.JobEndEvent) and end_event.status is apothic.JobStatus.SUCCEEDED
        assert [e.kind for e in seen].count("job.end") == 1

        # Every seq the watcher saw names the event a replay of the durable log shows.
        replay = list(job.watch(snapshot=False))
        assert [_content(e) for e in replay] == [_content(e) for e in seen]

        # The documented recovery: each lost attempt is logged and the job runs again.
        running = [e for e in seen if isinstance(e, apothic.JobRunningEvent)]
        assert [e.attempt for e in running] == [1, 2, 3]
        system = "".join(e.data for e in seen if isinstance(e, apothic.JobLogEvent) and e.stream == "system")
        assert "attempt 1 was lost: the control plane restarted" in system
        assert "attempt 2 was lost: the control plane restarted" in system
        assert job.wait(timeout=30) == "counted"
        assert job.info().attempt == 3
        assert job.logs().count(f"line {LINES}\n") == 1, "only the last attempt finished"

        # A watch that starts with a snapshot after the restarts agrees with the log.
        snapshot, *rest = job.watch(snapshot=True, markers=True)
        assert isinstance(snapshot, apothic.JobSnapshotEvent) and snapshot.seq == end_event.seq
        assert rest == [SnapshotEnd(end_event.seq)]
    finally:
        end(worker)
        plane.stop()
