"""Each container calls the control plane with a credential of its own: it works for the
account's objects while the container runs, cannot open a worker session, and stops
working when the container stops."""

from __future__ import annotations

import grpc
import pytest

import apothic
from apothic._proto.v1 import worker_service_pb2 as w_pb
from apothic._proto.v1 import worker_service_pb2_grpc as w_grpc
from apothic.exceptions import AuthError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


def test_a_container_has_its_own_credential(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    queue_name = unique_name("cred")
    app = apothic.App(unique_name("cred"), client=config)

    @app.function()
    def whoami() -> str:
        import os

        import apothic as ap

        ap.Queue.from_name(queue_name).put("from inside")  # the credential works for the account
        return os.environ["APOTHIC_API_KEY"]

    app.deploy()
    try:
        token = whoami.remote()
    finally:
        app.stop()
    assert token.startswith("ct-") and token != apothic_runtime.api_key
    assert apothic.Queue.from_name(queue_name, client=config).get(timeout=5) == "from inside"

    # It cannot act as a worker, even while its container runs.
    channel = grpc.insecure_channel(apothic_runtime.address)
    session = w_grpc.WorkerServiceStub(channel).Session(
        iter([w_pb.SessionRequest(hello=w_pb.WorkerHello(worker_id="workers:impostor"))]),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    with pytest.raises(grpc.RpcError) as info:
        list(session)
    assert info.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    channel.close()

    # Once its container stops, it is refused.
    stolen = apothic.ClientConfig(base_url=apothic_runtime.address, api_key=token)

    def refused() -> bool:
        try:
            apothic.Queue.from_name(queue_name, client=stolen).len()
        except AuthError:
            return True
        return False

    wait_for(refused, timeout=20, what="the stopped container's credential to be refused")
