"""Calls from inside containers, ephemeral deployments that lose their client, and the
standard health and reflection services."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import apothic
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


def test_function_calls_another_function_from_its_container(nested_app) -> None:
    assert nested_app.fan_out.remote(3) == [101, 1, 2, 3]


def test_ephemeral_deployment_stops_when_its_client_stops_heartbeating(
    apothic_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = apothic_runtime.plane
    assert plane is not None
    monkeypatch.setattr(plane.deployments, "ephemeral_lease_s", 0.3)
    monkeypatch.setattr(plane.deployments, "reap_interval_s", 0.1)
    app = apothic.App(unique_name("ephemeral"), client=apothic_runtime.config)

    @app.function(serialized=True)
    def one() -> int:
        return 1

    # Deployed ephemerally and never heartbeated, as if its `apothic run` had died.
    apothic_runtime.run_coroutine(_deploy_ephemeral(app))
    assert one.remote() == 1

    def stopped() -> bool:
        deps = apothic_runtime.run_coroutine(_list(apothic_runtime, app.name))
        return deps[0].status == apothic.DeploymentStatus.STOPPED

    wait_for(stopped, timeout=30, what="the reaper to stop the abandoned ephemeral deployment")
    with pytest.raises((apothic.exceptions.FailedPreconditionError, apothic.exceptions.NotFoundError)):
        one.remote()


async def _deploy_ephemeral(app: apothic.App) -> None:
    await app.aio.deploy(ephemeral=True)


async def _list(runtime: LocalRuntime, app_name: str) -> list[apothic.DeploymentInfo]:
    from apothic._client import Client

    client = Client(runtime.config)
    try:
        return await client.list_deployments(app_name)
    finally:
        await client.close()


def test_health_and_reflection_need_no_key(apothic_runtime: LocalRuntime) -> None:
    with grpc.insecure_channel(apothic_runtime.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "apothic.v1.FunctionService", "apothic.v1.AppService", "apothic.v1.WorkerService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"apothic.v1.FunctionService", "apothic.v1.AppService", "apothic.v1.WorkerService"} <= names
