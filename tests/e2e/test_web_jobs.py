"""The job trail of web requests: each HTTP request an ASGI/WSGI service or endpoint answers
is a job of its function, with the request's output as the job's log, its status as the
result, and a handler's exception as the job's error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import ModuleType

import httpx
import pytest

import apothic
from apothic._client import get_client
from apothic.exceptions import FailedPreconditionError
from apothic.models import JobInfo, JobStatus
from apothic.runtime import LocalRuntime
from apothic.testing import deployed, wait_for
from tests.e2e.apps import web

JOB_HEADER = "x-apothic-job-id"


@pytest.fixture(scope="module")
def web_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    with deployed(web.app, apothic_runtime):
        yield web


def _jobs(runtime: LocalRuntime, function: str) -> list[JobInfo]:
    async def read() -> list[JobInfo]:
        jobs = await get_client(runtime.config).list_jobs(app_name=web.app.name, limit=500)
        return [j for j in jobs if j.function_name == function]

    return runtime.run_coroutine(read())  # type: ignore[no-any-return]


def test_an_endpoint_request_is_a_job_with_its_output_and_status(web_app: ModuleType) -> None:
    r = httpx.get(web_app.add.get_web_url(), params={"a": 40, "b": 2}, timeout=30)
    assert r.status_code == 200
    job = apothic.Job.from_id(r.headers[JOB_HEADER])
    assert job.wait(timeout=30) == {"status_code": 200}
    info = job.info()
    assert (info.app_name, info.function_name, info.status) == (web.app.name, "add", JobStatus.SUCCEEDED)
    assert "adding 40 and 2" in job.logs()
    kinds = [e.kind for e in job.watch(snapshot=False)]
    assert kinds[0] == "job.running"  # a request is never queued
    assert kinds[-2:] == ["job.result", "job.end"]


def test_an_endpoint_that_raises_fails_its_job_with_the_exception(web_app: ModuleType) -> None:
    r = httpx.get(web_app.fails.get_web_url(), params={"x": 7}, timeout=30)
    assert r.status_code == 500
    assert r.json()["error"] == "ValueError"
    job = apothic.Job.from_id(r.headers[JOB_HEADER])
    with pytest.raises(ValueError, match="bad x: 7"):
        job.wait(timeout=30)
    info = job.info()
    assert info.status == JobStatus.FAILED
    assert info.reason == "ValueError: bad x: 7"
    assert "ValueError: bad x: 7" in job.logs()  # the traceback is in the request's output


def test_a_client_error_answer_is_a_succeeded_job_with_its_status(web_app: ModuleType) -> None:
    r = httpx.get(web_app.add.get_web_url(), params={"a": "not a number"}, timeout=30)
    assert r.status_code == 422
    assert apothic.Job.from_id(r.headers[JOB_HEADER]).wait(timeout=30) == {"status_code": 422}


def test_asgi_and_wsgi_requests_are_listed_as_jobs(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    ids = set()
    for _ in range(3):
        r = httpx.get(f"{web_app.api.get_web_url()}/health", timeout=30)
        assert r.status_code == 200
        ids.add(r.headers[JOB_HEADER])
    w = httpx.get(f"{web_app.legacy.get_web_url()}/hello", timeout=30)
    assert w.status_code == 200
    assert len(ids) == 3
    for job_id in ids:
        apothic.Job.from_id(job_id).wait(timeout=30)
    listed = {j.job_id for j in _jobs(apothic_runtime, "api")}
    assert ids <= listed
    wsgi_job = apothic.Job.from_id(w.headers[JOB_HEADER])
    assert wsgi_job.wait(timeout=30) == {"status_code": 200}
    assert wsgi_job.info().function_name == "legacy"


def test_a_request_in_flight_is_a_running_job_that_cannot_be_cancelled(
    web_app: ModuleType, apothic_runtime: LocalRuntime
) -> None:
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(httpx.get(f"{web_app.api.get_web_url()}/slow", params={"s": 3}, timeout=30))
    )
    thread.start()
    try:
        running = wait_for(
            lambda: [j for j in _jobs(apothic_runtime, "api") if j.status == JobStatus.RUNNING], timeout=20
        )
        with pytest.raises(FailedPreconditionError, match="HTTP request .* cannot be cancelled"):
            apothic.Job.from_id(running[0].job_id).cancel()
    finally:
        thread.join(30)
    assert answers[0].status_code == 200
    assert answers[0].headers[JOB_HEADER] == running[0].job_id
    assert apothic.Job.from_id(running[0].job_id).wait(timeout=30) == {"status_code": 200}


def test_a_container_crash_fails_the_request_job(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    url = web_app.crashy.get_web_url()
    httpx.get(f"{url}/pid", timeout=30)
    before = {j.job_id for j in _jobs(apothic_runtime, "crashy")}
    assert httpx.get(f"{url}/crash-later", timeout=30).status_code == 502

    def crashed() -> list[JobInfo]:
        return [
            j
            for j in _jobs(apothic_runtime, "crashy")
            if j.job_id not in before and j.status == JobStatus.FAILED and "answering the request" in j.reason
        ]

    assert wait_for(crashed, timeout=20)


def test_request_jobs_are_written_to_the_store(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    r = httpx.get(web_app.add.get_web_url(), params={"a": 1}, timeout=30)
    job_id = r.headers[JOB_HEADER]
    apothic.Job.from_id(job_id).wait(timeout=30)
    plane = apothic_runtime.plane
    assert plane is not None

    live = plane.jobs.live(job_id)
    assert live is not None
    account = live.record.account

    async def stored() -> list[str]:
        await plane.store.drain()
        records = await plane.store.list_jobs(account, web.app.name, "succeeded", 1000)
        return [j.job_id for j in records]

    # Ended request jobs are written together, within REQUEST_WRITE_DELAY_S.
    wait_for(lambda: job_id in apothic_runtime.run_coroutine(stored()), timeout=10)
