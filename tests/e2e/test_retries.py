"""Retries on the real runtime: each retry is a new attempt of the same job, visible in its
events, after its backoff delay; the final error says how many attempts ran."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import ModuleType

import pytest

import apothic
from apothic.exceptions import FunctionTimeoutError, InvalidConfigError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for
from tests.e2e.apps.calls import CallError


def _attempts(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _running(job: apothic.Job) -> list[apothic.JobRunningEvent]:
    return [e for e in job.watch(snapshot=False) if isinstance(e, apothic.JobRunningEvent)]


def _system_log(job: apothic.Job) -> str:
    return "".join(
        e.data for e in job.watch(snapshot=False) if isinstance(e, apothic.JobLogEvent) and e.stream == "system"
    )


def test_a_retried_job_succeeds_on_a_later_attempt(calls_app: ModuleType, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    started = time.monotonic()
    job = calls_app.flaky.spawn(str(counter), 2)
    assert job.wait(timeout=30) == 3
    elapsed = time.monotonic() - started
    assert _attempts(counter) == 3

    info = job.info()
    assert (info.status, info.attempt, info.reason) == (apothic.JobStatus.SUCCEEDED, 3, "")
    running = _running(job)
    assert [e.attempt for e in running] == [1, 2, 3]
    # Delays: 0.2 s before the first retry, 0.4 s before the second.
    assert running[1].time is not None and running[0].time is not None and running[2].time is not None
    assert (running[1].time - running[0].time).total_seconds() >= 0.2
    assert (running[2].time - running[1].time).total_seconds() >= 0.4
    assert elapsed >= 0.6
    system = _system_log(job)
    assert "attempt 1 failed: tests.e2e.apps.calls.CallError: attempt 1 failed" in system
    assert "retrying in 0.2s (attempt 2 of 4)" in system
    assert "retrying in 0.4s (attempt 3 of 4)" in system
    # Each attempt's output is in the job's log.
    logs = job.logs()
    assert all(f"attempt {n}\n" in logs for n in (1, 2, 3))


def test_remote_retries_too(calls_app: ModuleType, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    assert calls_app.flaky.remote(str(counter), 1) == 2
    assert _attempts(counter) == 2


def test_an_int_retries_uses_the_default_backoff(calls_app: ModuleType, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    started = time.monotonic()
    assert calls_app.flaky_int_retries.remote(str(counter)) == 2
    assert time.monotonic() - started >= 1.0  # Retries' default initial_delay


def test_a_job_that_always_fails_says_how_many_attempts_ran(calls_app: ModuleType, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    job = calls_app.always_fails.spawn(str(counter))
    with pytest.raises(CallError, match="attempt 3 failed") as err:
        job.wait(timeout=30)
    assert f"(job {job.job_id} failed after 3 attempts)" in err.value.__notes__
    assert _attempts(counter) == 3
    info = job.info()
    assert (info.status, info.attempt) == (apothic.JobStatus.FAILED, 3)
    assert info.reason == "tests.e2e.apps.calls.CallError: attempt 3 failed (after 3 attempts)"
    assert [e.attempt for e in _running(job)] == [1, 2, 3]
    ends = [e for e in job.watch(snapshot=False) if isinstance(e, apothic.JobEndEvent)]
    assert [(e.status, e.reason) for e in ends] == [(apothic.JobStatus.FAILED, info.reason)]

    # The same through remote().
    counter2 = tmp_path / "count2"
    with pytest.raises(CallError, match="attempt 3 failed") as err:
        calls_app.always_fails.remote(str(counter2))
    assert any("failed after 3 attempts" in note for note in err.value.__notes__)


def test_timeouts_are_retried(calls_app: ModuleType, tmp_path: Path) -> None:
    recovers, never = tmp_path / "recovers", tmp_path / "never"
    recovering = calls_app.slow_first_attempt.spawn(str(recovers))
    hopeless = calls_app.always_slow.spawn(str(never))

    assert recovering.wait(timeout=30) == 2
    assert [e.attempt for e in _running(recovering)] == [1, 2]
    assert "attempt 1 timed out: the attempt ran longer than its timeout of 1s" in _system_log(recovering)

    with pytest.raises(FunctionTimeoutError, match="after 2 attempts"):
        hopeless.wait(timeout=30)
    info = hopeless.info()
    assert (info.status, info.attempt) == (apothic.JobStatus.TIMED_OUT, 2)
    assert info.reason == "the attempt ran longer than its timeout of 1s (after 2 attempts)"
    assert _attempts(never) == 2


def test_map_inputs_are_retried_one_by_one(calls_app: ModuleType, tmp_path: Path) -> None:
    counters = [str(tmp_path / f"c{i}") for i in range(4)]
    # Every input fails its first attempt, then returns its attempt number.
    assert list(calls_app.flaky.map(counters, [1] * 4)) == [2, 2, 2, 2]
    results = list(calls_app.always_fails.map([str(tmp_path / "x"), str(tmp_path / "y")], return_exceptions=True))
    assert all(isinstance(r, CallError) for r in results)
    assert all(_attempts(tmp_path / name) == 3 for name in ("x", "y"))
    assert all(any("failed after 3 attempts" in n for n in r.__notes__) for r in results)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": 1, "initial_delay": -1}, "initial_delay"),
        ({"max_retries": 1, "initial_delay": math.inf}, "initial_delay"),
        ({"max_retries": 1, "max_delay": 3601}, "max_delay"),
        ({"max_retries": 1, "backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"max_retries": 1, "backoff_coefficient": 11}, "backoff_coefficient"),
        ({"max_retries": 1, "backoff_coefficient": math.nan}, "backoff_coefficient"),
    ],
)
def test_retries_out_of_range_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        apothic.Retries(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("retries", [-1, 11, "3", 2.0, True])
def test_bad_retries_option_fails_at_decoration(retries: object) -> None:
    app = apothic.App(unique_name("bad-retries"))
    with pytest.raises(InvalidConfigError, match="retries"):

        @app.function(retries=retries)
        def f() -> None: ...


def test_retry_delays_follow_the_policy() -> None:
    policy = apothic.Retries(max_retries=5, initial_delay=0.5, backoff_coefficient=3, max_delay=4)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.0, 4.0, 4.0]


def test_losing_the_worker_mid_attempt_retries_on_another_worker(
    calls_app: ModuleType, apothic_runtime: LocalRuntime, tmp_path: Path
) -> None:
    runtime = apothic_runtime
    assert runtime.plane is not None
    original = {w.settings.worker_id for w in runtime.workers if w.connected.is_set()}
    extra_id = f"workers:{unique_name('extra')}"
    runtime.run_coroutine(runtime.add_worker(extra_id))
    stopped: list[str] = []
    try:
        counter = tmp_path / "count"
        job = calls_app.hangs_first_attempt.spawn(str(counter))
        first = _first_running(job)
        wait_for(lambda: _attempts(counter) == 1, what="the first attempt to start")
        _stop_worker(runtime, first.worker_id)
        stopped.append(first.worker_id)

        attempt, _pid = job.wait(timeout=30)
        assert attempt == 2
        running = _running(job)
        assert [e.attempt for e in running] == [1, 2]
        assert running[1].worker_id != first.worker_id
        assert running[1].worker_id in runtime.plane.scheduler.workers
        system = _system_log(job)
        assert f"worker {first.worker_id} was lost" in system
        assert "retrying in 0.05s (attempt 2 of 3)" in system
    finally:
        # Leave the runtime as it was: the original workers up, the extra one gone.
        for worker_id in sorted(original - set(runtime.plane.scheduler.workers)):
            runtime.run_coroutine(runtime.add_worker(worker_id))
        if extra_id not in stopped:
            _stop_worker(runtime, extra_id)
    assert set(runtime.plane.scheduler.workers) == original
    assert calls_app.square.remote(4) == 16


def _first_running(job: apothic.Job) -> apothic.JobRunningEvent:
    for event in job.watch(snapshot=False):
        if isinstance(event, apothic.JobRunningEvent):
            return event
    raise AssertionError(f"job {job.job_id} ended without running")


def _stop_worker(runtime: LocalRuntime, worker_id: str) -> None:
    assert runtime.plane is not None
    worker = next(w for w in runtime.workers if w.settings.worker_id == worker_id and w.connected.is_set())
    runtime.run_coroutine(worker.stop())
    scheduler = runtime.plane.scheduler
    wait_for(lambda: worker_id not in scheduler.workers, what=f"{worker_id} to leave the scheduler")
