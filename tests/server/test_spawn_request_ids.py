"""A spawn carries a request id: retried (after a lost answer or a restart) it creates nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import apothic
from apothic._proto.v1 import function_service_pb2 as fn_pb
from apothic._proto.v1 import function_service_pb2_grpc as fn_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name


def _spawn(runtime: LocalRuntime, app: str, request_id: str, *values: int) -> list[str]:
    """SpawnFunction (one value) or SpawnFunctionMany, with an explicit request id."""
    import json

    with grpc.insecure_channel(runtime.address) as channel:
        stub = fn_grpc.FunctionServiceStub(channel)
        ref = pb.FunctionRef(app_name=app, function_name="double")
        metadata = (("authorization", f"Bearer {runtime.api_key}"),)
        args = [pb.Payload(format=pb.PAYLOAD_FORMAT_JSON, data=json.dumps([v]).encode()) for v in values]
        if len(args) == 1:
            req = fn_pb.SpawnFunctionRequest(function=ref, args=args[0], request_id=request_id)
            return [stub.SpawnFunction(req, metadata=metadata).job_id]
        many = fn_pb.SpawnFunctionManyRequest(function=ref, args=args, request_id=request_id)
        return list(stub.SpawnFunctionMany(many, metadata=metadata).job_ids)


def _deploy(runtime: LocalRuntime, name: str) -> apothic.App:
    app = apothic.App(name, client=runtime.config)

    @app.function()
    def double(x: int) -> int:
        return 2 * x

    app.deploy()
    return app


def _jobs_of(runtime: LocalRuntime, app: str) -> list[apothic.JobInfo]:
    from apothic._client import get_client
    from apothic._sync import run_sync

    async def listing() -> list[apothic.JobInfo]:
        return await get_client(runtime.config).list_jobs(app_name=app, limit=100)  # type: ignore[no-any-return]

    return run_sync(listing(), "list jobs")


def test_a_retried_spawn_answers_the_same_jobs(tmp_path: Path) -> None:
    runtime = LocalRuntime(db_url="mem://", state_dir=tmp_path, workers=1).start()
    try:
        name = unique_name("spawn-once")
        _deploy(runtime, name)
        first = _spawn(runtime, name, "req-1", 21)
        assert _spawn(runtime, name, "req-1", 21) == first
        assert _spawn(runtime, name, "req-2", 21) != first, "another id is another job"
        batch = _spawn(runtime, name, "req-3", 1, 2, 3)
        assert len(set(batch)) == 3 and _spawn(runtime, name, "req-3", 1, 2, 3) == batch
        assert apothic.Job.from_id(first[0], client=runtime.config).wait(timeout=30) == 42
        assert len(_jobs_of(runtime, name)) == 5
        with pytest.raises(grpc.RpcError) as refused:
            _spawn(runtime, name, "x" * 200, 1)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "request id" in str(refused.value.details())
    finally:
        runtime.stop()


def test_a_spawn_retried_after_a_restart_creates_nothing(tmp_path: Path) -> None:
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=1).start()
    name = unique_name("spawn-once")
    try:
        _deploy(first, name)
        (job_id,) = _spawn(first, name, "before-restart", 4)
        assert apothic.Job.from_id(job_id, client=first.config).wait(timeout=30) == 8
    finally:
        first.stop()
    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=1, api_key=first.api_key).start()
    try:
        assert _spawn(second, name, "before-restart", 4) == [job_id]
        assert len(_jobs_of(second, name)) == 1
    finally:
        second.stop()
