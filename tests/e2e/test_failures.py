"""Bad input and misbehaving functions: each fails with a clear error, and the runtime keeps
serving the next call."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import apothic
from apothic import _serialization
from apothic._proto.v1 import app_service_pb2 as app_pb
from apothic._proto.v1 import app_service_pb2_grpc as app_grpc
from apothic._proto.v1 import function_service_pb2 as fn_pb
from apothic._proto.v1 import function_service_pb2_grpc as fn_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.exceptions import (
    AuthError,
    BlockingInAsyncContextError,
    FunctionTimeoutError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for
from tests.e2e.apps.failing import CustomError

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def channel(apothic_runtime: LocalRuntime) -> Iterator[grpc.Channel]:
    """A plain gRPC channel, as a client in another language would open."""
    with grpc.insecure_channel(apothic_runtime.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def functions(channel: grpc.Channel) -> fn_grpc.FunctionServiceStub:
    return fn_grpc.FunctionServiceStub(channel)


@pytest.fixture(scope="module")
def auth(apothic_runtime: LocalRuntime) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {apothic_runtime.api_key}"),)


def _still_serving(failing_app: ModuleType) -> None:
    assert failing_app.add.remote(1, 2) == 3


def _job_count(functions: fn_grpc.FunctionServiceStub, auth: tuple, app_name: str) -> int:
    return len(functions.ListJobs(fn_pb.ListJobsRequest(app_name=app_name, limit=100), metadata=auth).jobs)


# -- unknown names and ids -----------------------------------------------------------------


def test_unknown_app_is_not_found_by_name(apothic_runtime: LocalRuntime) -> None:
    fn = apothic.RemoteFunction.from_name("no-such-app-7f3a", "square", client=apothic_runtime.config)
    with pytest.raises(NotFoundError, match="no-such-app-7f3a"):
        fn.remote(1)
    with pytest.raises(NotFoundError, match="no-such-app-7f3a"):
        fn.spawn(1)


def test_unknown_function_is_not_found_by_name(failing_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    fn = apothic.RemoteFunction.from_name("e2e-failing", "no_such_function", client=apothic_runtime.config)
    with pytest.raises(NotFoundError, match="no_such_function") as err:
        fn.remote(1)
    assert "e2e-failing" in str(err.value)


@pytest.mark.parametrize("job_id", ["jobs:00000000deadbeef", "not-a-job-id"])
def test_unknown_job_is_not_found_by_id(apothic_runtime: LocalRuntime, job_id: str) -> None:
    job = apothic.Job.from_id(job_id, client=apothic_runtime.config)
    for call in (job.status, job.logs, job.wait, job.cancel, lambda: list(job.watch())):
        with pytest.raises(NotFoundError, match=job_id):
            call()


def test_unknown_deployment_is_not_found(channel: grpc.Channel, auth: tuple) -> None:
    apps = app_grpc.AppServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        apps.GetDeployment(app_pb.GetDeploymentRequest(deployment_id="deployments:00000000cafe"), metadata=auth)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "deployments:00000000cafe" in err.value.details()


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "api_key",
    ["ak-0123456789abcdef.not-the-secret", "", "garbage"],
    ids=["wrong", "missing", "malformed"],
)
def test_bad_api_key_is_rejected(failing_app: ModuleType, apothic_runtime: LocalRuntime, api_key: str) -> None:
    bad = apothic.ClientConfig(base_url=apothic_runtime.address, api_key=api_key)
    fn = apothic.RemoteFunction.from_name("e2e-failing", "add", client=bad)
    with pytest.raises(AuthError):
        fn.remote(1, 2)
    with pytest.raises(AuthError):
        fn.spawn(1, 2)
    with pytest.raises(AuthError):
        list(apothic.Job.from_id("jobs:00000000deadbeef", client=bad).watch())
    _still_serving(failing_app)


def test_rpc_without_metadata_is_unauthenticated_but_health_is_public(channel: grpc.Channel) -> None:
    stub = fn_grpc.FunctionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetJob(fn_pb.GetJobRequest(job_id="jobs:00000000deadbeef"))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- arguments and payloads ------------------------------------------------------------------


def test_unpicklable_argument_is_named_before_anything_is_sent(
    apothic_runtime: LocalRuntime, functions: fn_grpc.FunctionServiceStub, auth: tuple
) -> None:
    app = apothic.App(unique_name("unpicklable"), client=apothic_runtime.config)

    @app.function()
    def takes(count: int, guard: object) -> int:
        return count

    app.deploy()
    try:
        lock = threading.Lock()
        with pytest.raises(SerializationError, match="'guard'") as err:
            takes.remote(1, lock)
        assert "lock" in str(err.value).lower()
        with pytest.raises(SerializationError, match="'guard'"):
            takes.spawn(1, guard=lock)
        assert _job_count(functions, auth, app.name) == 0
        assert takes.remote(2, None) == 2
        assert _job_count(functions, auth, app.name) == 1
    finally:
        app.stop()


def test_arguments_over_the_inline_limit_are_refused(
    failing_app: ModuleType, functions: fn_grpc.FunctionServiceStub, auth: tuple
) -> None:
    big = b"x" * (2 * MiB + 1)
    with pytest.raises(SerializationError, match="limit"):
        failing_app.echo.remote(big)
    with pytest.raises(SerializationError, match="limit"):
        failing_app.echo.spawn(big)
    # A client that skips the SDK's check is refused by the control plane.
    request = fn_pb.InvokeFunctionRequest(
        function=pb.FunctionRef(app_name="e2e-failing", function_name="echo"),
        args=pb.Payload(format=pb.PAYLOAD_FORMAT_CLOUDPICKLE, data=_serialization.dumps_args((b"",), {}) + big),
    )
    with pytest.raises(grpc.RpcError) as err:
        functions.InvokeFunction(request, metadata=auth, timeout=30)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in err.value.details()
    # Just under the limit travels fine.
    assert failing_app.echo.remote(b"y" * (MiB)) == b"y" * MiB


def test_result_over_the_inline_limit_fails_the_job(failing_app: ModuleType) -> None:
    with pytest.raises(SerializationError, match="limit"):
        failing_app.big_result.remote(3 * MiB)
    _still_serving(failing_app)


def test_json_payloads_from_a_plain_grpc_client(
    failing_app: ModuleType, functions: fn_grpc.FunctionServiceStub, auth: tuple
) -> None:
    ref = pb.FunctionRef(app_name="e2e-failing", function_name="add")
    resp = functions.InvokeFunction(
        fn_pb.InvokeFunctionRequest(function=ref, args=pb.Payload(format=pb.PAYLOAD_FORMAT_JSON, data=b"[2, 3]")),
        metadata=auth,
        timeout=30,
    )
    assert resp.status == pb.JOB_STATUS_SUCCEEDED
    assert resp.job_id.startswith("jobs:")
    assert resp.result.WhichOneof("outcome") == "value"
    assert resp.result.value.format == pb.PAYLOAD_FORMAT_JSON
    assert json.loads(resp.result.value.data) == 5

    # Keyword arguments, through spawn and wait.
    spawned = functions.SpawnFunction(
        fn_pb.SpawnFunctionRequest(
            function=ref,
            args=pb.Payload(
                format=pb.PAYLOAD_FORMAT_JSON, data=json.dumps({"args": [40], "kwargs": {"b": 2}}).encode()
            ),
        ),
        metadata=auth,
        timeout=30,
    )
    waited = functions.WaitJob(fn_pb.WaitJobRequest(job_id=spawned.job_id, timeout_s=30), metadata=auth, timeout=40)
    assert waited.done
    assert waited.job.status == pb.JOB_STATUS_SUCCEEDED
    assert json.loads(waited.job.result.value.data) == 42

    # A user error comes back in-band, readable without Python.
    resp = functions.InvokeFunction(
        fn_pb.InvokeFunctionRequest(
            function=pb.FunctionRef(app_name="e2e-failing", function_name="raise_custom"),
            args=pb.Payload(format=pb.PAYLOAD_FORMAT_JSON, data=b'["from json"]'),
        ),
        metadata=auth,
        timeout=30,
    )
    assert resp.status == pb.JOB_STATUS_FAILED
    assert resp.result.error.type == "tests.e2e.apps.failing.CustomError"
    assert "from json" in resp.result.error.message
    assert "raise_custom" in resp.result.error.traceback

    # Arguments that are not JSON fail the job with a clear error, not the runtime.
    resp = functions.InvokeFunction(
        fn_pb.InvokeFunctionRequest(function=ref, args=pb.Payload(format=pb.PAYLOAD_FORMAT_JSON, data=b"{nope")),
        metadata=auth,
        timeout=30,
    )
    assert resp.status == pb.JOB_STATUS_FAILED
    assert "JSON" in resp.result.error.message
    _still_serving(failing_app)


# -- functions that misbehave ----------------------------------------------------------------


def test_user_exception_is_reraised_as_its_own_type(failing_app: ModuleType) -> None:
    with pytest.raises(CustomError) as err:
        failing_app.raise_custom.remote("it broke")
    exc = err.value
    assert exc.code == 42
    assert "it broke" in str(exc)
    assert "raise_custom" in exc.remote_traceback  # type: ignore[attr-defined]
    assert "CustomError" in exc.remote_traceback  # type: ignore[attr-defined]
    assert isinstance(exc.__cause__, RemoteTraceback)

    job = failing_app.raise_custom.spawn("again")
    with pytest.raises(CustomError, match="again"):
        job.wait(timeout=30)
    assert job.status() is apothic.JobStatus.FAILED
    _still_serving(failing_app)


def test_exception_that_cannot_be_rebuilt_comes_back_as_remote_error(failing_app: ModuleType) -> None:
    with pytest.raises(RemoteError, match="odd failure") as err:
        failing_app.raise_unrebuildable.remote()
    assert err.value.remote_type == "tests.e2e.apps.failing.NeedsTwoArguments"
    assert "raise_unrebuildable" in err.value.remote_traceback
    assert err.value.job_id.startswith("jobs:")
    _still_serving(failing_app)


def test_result_that_cannot_be_serialized_fails_the_call(failing_app: ModuleType) -> None:
    with pytest.raises(SerializationError, match="return value"):
        failing_app.return_lock.remote()
    _still_serving(failing_app)


def test_another_accounts_objects_look_missing(
    failing_app: ModuleType, apothic_runtime: LocalRuntime, channel: grpc.Channel
) -> None:
    plane = apothic_runtime.plane
    assert plane is not None

    async def other_key() -> str:
        account = await plane.accounts.ensure_account(unique_name("other-account"))
        return await plane.accounts.create_key(account)

    other = apothic.ClientConfig(base_url=apothic_runtime.address, api_key=apothic_runtime.run_coroutine(other_key()))
    with pytest.raises(NotFoundError, match="e2e-failing"):
        apothic.RemoteFunction.from_name("e2e-failing", "add", client=other).remote(1, 2)
    job = failing_app.add.spawn(1, 2)
    assert job.wait(timeout=30) == 3
    with pytest.raises(NotFoundError, match=job.job_id):
        apothic.Job.from_id(job.job_id, client=other).status()
    with pytest.raises(NotFoundError, match=job.job_id):
        apothic.Job.from_id(job.job_id, client=other).cancel()
    apps = app_grpc.AppServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        apps.GetDeployment(
            app_pb.GetDeploymentRequest(deployment_id=failing_app.app.deployment_id),
            metadata=(("authorization", f"Bearer {other.api_key}"),),
        )
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    # The other account's own app of the same name is its own.
    mine = apothic.App("e2e-failing", client=other)

    @mine.function(name="add")
    def subtract(a: int, b: int) -> int:
        return a - b

    mine.deploy()
    assert apothic.RemoteFunction.from_name("e2e-failing", "add", client=other).remote(5, 2) == 3
    assert failing_app.add.remote(5, 2) == 7
    mine.stop()


def test_timeout_fails_the_attempt(failing_app: ModuleType) -> None:
    with pytest.raises(FunctionTimeoutError, match="timeout") as err:
        failing_app.overrun.remote()
    assert isinstance(err.value, TimeoutError)
    job = failing_app.overrun.spawn()
    with pytest.raises(FunctionTimeoutError):
        job.wait(timeout=30)
    assert job.status() is apothic.JobStatus.TIMED_OUT
    assert job.info().reason
    _still_serving(failing_app)


def test_ten_megabytes_of_output_is_truncated_with_a_notice(failing_app: ModuleType) -> None:
    job = failing_app.print_ten_megabytes.spawn()
    assert job.wait(timeout=60) == "done"
    assert job.status() is apothic.JobStatus.SUCCEEDED
    logs = job.logs()
    assert logs.startswith("x" * 1023 + "\n")
    assert len(logs.encode()) < 2 * MiB
    assert logs.count("[output truncated") == 1
    assert "the end" not in logs
    events = list(job.watch(snapshot=False))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].kind == "job.end"
    _still_serving(failing_app)


def test_process_that_kills_itself_fails_the_job_with_a_reason(failing_app: ModuleType) -> None:
    with pytest.raises(JobFailedError, match="SIGKILL") as err:
        failing_app.kill_self.remote()
    assert "SIGKILL" in err.value.reason
    job = failing_app.kill_self.spawn()
    with pytest.raises(JobFailedError):
        job.wait(timeout=30)
    assert job.status() is apothic.JobStatus.FAILED
    assert "exited" in job.info().reason
    _still_serving(failing_app)


def test_module_that_fails_to_import_fails_the_call(broken_app: ModuleType, failing_app: ModuleType) -> None:
    with pytest.raises(JobFailedError, match="apothic_dependency_that_does_not_exist") as err:
        broken_app.unreachable.remote()
    assert "ModuleNotFoundError" in str(err.value)
    job = broken_app.unreachable.spawn()
    with pytest.raises(JobFailedError, match="apothic_dependency_that_does_not_exist"):
        job.wait(timeout=30)
    assert job.status() is apothic.JobStatus.FAILED
    _still_serving(failing_app)


def test_cancel_a_running_job(failing_app: ModuleType) -> None:
    job = failing_app.sleep_forever.spawn()
    wait_for(lambda: "started" in job.logs(), timeout=30, what="the job to start running")
    assert job.status() is apothic.JobStatus.RUNNING
    assert job.cancel() is apothic.JobStatus.CANCELLED
    with pytest.raises(JobCancelledError):
        job.wait(timeout=30)
    assert job.status() is apothic.JobStatus.CANCELLED
    events = list(job.watch(snapshot=False))
    assert [e.kind for e in events].count("job.end") == 1
    assert events[-1].status is apothic.JobStatus.CANCELLED  # type: ignore[attr-defined]
    # Cancelling again, or cancelling a finished job, changes nothing.
    assert job.cancel() is apothic.JobStatus.CANCELLED
    done = failing_app.add.spawn(2, 2)
    assert done.wait(timeout=30) == 4
    assert done.cancel() is apothic.JobStatus.SUCCEEDED
    _still_serving(failing_app)


async def test_blocking_call_inside_an_event_loop_names_the_aio_form(failing_app: ModuleType) -> None:
    with pytest.raises(BlockingInAsyncContextError, match=r"\.aio\.remote"):
        failing_app.add.remote(1, 2)
    with pytest.raises(BlockingInAsyncContextError, match=r"\.aio\.spawn"):
        failing_app.add.spawn(1, 2)
    job = await failing_app.add.aio.spawn(1, 2)
    with pytest.raises(BlockingInAsyncContextError, match=r"\.aio\.wait"):
        job.wait()
    with pytest.raises(BlockingInAsyncContextError, match=r"\.aio\.deploy"):
        failing_app.app.deploy()
    assert await job.aio.wait(timeout=30) == 3


def test_remote_sys_exit_does_not_end_the_caller(failing_app) -> None:
    with pytest.raises(apothic.exceptions.RemoteError) as info:
        failing_app.exit_early.remote()
    assert "SystemExit" in info.value.remote_type
    assert failing_app.add.remote(1, 1) == 2
