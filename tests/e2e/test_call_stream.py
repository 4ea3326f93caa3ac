"""CallService.StreamCalls: function, queue and dict calls multiplexed over one stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import grpc
import grpc.aio
import pytest

import apothic
from apothic._client import get_client
from apothic._proto.v1 import call_service_pb2 as call_pb
from apothic._proto.v1 import call_service_pb2_grpc as call_grpc
from apothic._proto.v1 import dict_service_pb2 as dict_pb
from apothic._proto.v1 import dict_service_pb2_grpc as dict_grpc
from apothic.exceptions import AuthError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.server.dicts import DictManager
from apothic.server.servicers.dicts import DictServicer
from apothic.server.store import Store
from apothic.testing import unique_name


async def _dict(runtime: LocalRuntime) -> apothic.Dict:
    d = apothic.Dict(unique_name("calls"), client=runtime.config)
    await get_client(runtime.config).create_dict(d.name, exist_ok=False)
    return d


async def _queue(runtime: LocalRuntime) -> apothic.Queue:
    q = apothic.Queue(unique_name("calls"), client=runtime.config)
    await get_client(runtime.config).create_queue(q.name)
    return q


def _metadata(runtime: LocalRuntime) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {runtime.api_key}"),)


async def _open(runtime: LocalRuntime) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall, AsyncIterator]:
    channel = grpc.aio.insecure_channel(runtime.address)
    call = call_grpc.CallServiceStub(channel).StreamCalls(metadata=_metadata(runtime))
    answers = call.__aiter__()
    first = await asyncio.wait_for(anext(answers), 10)
    assert list(first.results) == [], "the first message only says the stream was accepted"
    return channel, call, answers


async def _results(answers: AsyncIterator, n: int) -> dict[int, call_pb.CallResult]:
    out: dict[int, call_pb.CallResult] = {}
    while len(out) < n:
        message = await asyncio.wait_for(anext(answers), 10)
        out.update({r.call_id: r for r in message.results})
    return out


async def test_raw_stream_answers_each_call_by_id(apothic_runtime: LocalRuntime) -> None:
    d = await _dict(apothic_runtime)
    name = d.name
    await d.aio.put("k", 1)
    channel, call, answers = await _open(apothic_runtime)
    try:
        get = dict_pb.GetDictValueRequest(name=name, key="k")
        missing = dict_pb.GetDictValueRequest(name=unique_name("nope"), key="k")
        await call.write(
            call_pb.StreamCallsRequest(
                calls=[
                    call_pb.Call(call_id=1, get_dict_value=get),
                    call_pb.Call(call_id=2, get_dict_value=missing),
                    call_pb.Call(call_id=3),
                ]
            )
        )
        results = await _results(answers, 3)
        assert results[1].get_dict_value.found and results[1].get_dict_value.entry.version == 1
        assert results[2].error.code == "NOT_FOUND" and "not found" in results[2].error.message
        assert results[3].error.code == "INVALID_ARGUMENT" and "no request" in results[3].error.message
        # The stream goes on after errors.
        await call.write(call_pb.StreamCallsRequest(calls=[call_pb.Call(call_id=4, get_dict_value=get)]))
        assert (await _results(answers, 1))[4].get_dict_value.found
    finally:
        await call.done_writing()
        await channel.close()


async def test_a_reused_call_id_in_flight_is_refused(apothic_runtime: LocalRuntime) -> None:
    from apothic._proto.v1 import queue_service_pb2 as q_pb

    q = await _queue(apothic_runtime)
    channel, call, answers = await _open(apothic_runtime)
    try:
        claim = q_pb.ClaimItemsRequest(name=q.name, n=1, lease_s=30, wait_s=5)
        await call.write(call_pb.StreamCallsRequest(calls=[call_pb.Call(call_id=7, claim_items=claim)]))
        await call.write(call_pb.StreamCallsRequest(calls=[call_pb.Call(call_id=7, claim_items=claim)]))
        refused = await _results(answers, 1)
        assert refused[7].error.code == "INVALID_ARGUMENT" and "already in flight" in refused[7].error.message
        await q.aio.put("x")
        claimed = await _results(answers, 1)
        assert len(claimed[7].claim_items.items) == 1
    finally:
        await call.done_writing()
        await channel.close()


async def test_a_blocked_call_does_not_hold_up_the_others(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    q = await _queue(apothic_runtime)
    d = await _dict(apothic_runtime)
    waiting = asyncio.ensure_future(q.aio.claim(wait_s=10.0))
    await asyncio.sleep(0.05)
    for i in range(20):  # on the same stream, while the claim waits
        assert await d.aio.put("k", i) == i + 1
    assert not waiting.done()
    await q.aio.put("item")
    claims = await asyncio.wait_for(waiting, 10)
    assert [c.value for c in claims] == ["item"]
    assert get_client(config)._calls.supported


async def test_concurrent_calls_are_batched_and_all_answered(apothic_runtime: LocalRuntime) -> None:
    d = await _dict(apothic_runtime)
    versions = await asyncio.gather(*(d.aio.put(f"k{i}", i) for i in range(200)))
    assert versions == [1] * 200
    values = await asyncio.gather(*(d.aio.get(f"k{i}") for i in range(200)))
    assert values == list(range(200))


async def test_errors_come_back_typed(apothic_runtime: LocalRuntime) -> None:
    d = apothic.Dict(unique_name("missing"), client=apothic_runtime.config)
    with pytest.raises(NotFoundError, match="not found"):
        await d.aio.get("k")


@pytest.mark.parametrize("attempt", range(5))
async def test_a_bad_key_is_an_auth_error_not_an_internal_one(apothic_runtime: LocalRuntime, attempt: int) -> None:
    bad = apothic.ClientConfig(base_url=apothic_runtime.address, api_key="ak-nobody.secret")
    with pytest.raises(AuthError, match="not valid"):
        await apothic.Dict(unique_name("d"), client=bad).aio.get("k")


def test_function_calls_go_over_the_stream(basic_app: ModuleType) -> None:
    assert basic_app.square.remote(7) == 49
    assert basic_app.square.spawn(8).wait(timeout=30) == 64


async def test_a_control_plane_without_call_service_gets_unary_calls(tmp_path: Path) -> None:
    """An older control plane (no CallService): the client falls back to unary calls."""
    from apothic.server.auth import Accounts, AuthInterceptor

    store = Store("mem://")
    await store.open()
    accounts = Accounts(store)
    api_key = await accounts.create_key(await accounts.ensure_account("old"))
    dicts = DictManager(store)
    server = grpc.aio.server(interceptors=[AuthInterceptor(accounts)])
    dict_grpc.add_DictServiceServicer_to_server(DictServicer(dicts), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        config = apothic.ClientConfig(base_url=f"127.0.0.1:{port}", api_key=api_key)
        d = apothic.Dict(unique_name("old"), client=config)
        await get_client(config).create_dict(d.name, exist_ok=False)
        assert await d.aio.put("k", 5) == 1
        assert await d.aio.get("k") == 5
        assert get_client(config)._calls.supported is False
    finally:
        await server.stop(0)
        await dicts.close()
        await store.close()


async def test_a_call_the_caller_gives_up_on_is_cancelled(basic_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    """As with a unary call whose caller goes away: the running job is cancelled."""
    client = get_client(apothic_runtime.config)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(basic_app.slow_chatty.aio.remote(1, 20.0), 1.0)

    async def cancelled() -> list[apothic.JobInfo]:
        jobs = await client.list_jobs(app_name=basic_app.app.name, limit=20)
        return [j for j in jobs if j.function_name == "slow_chatty" and j.status is apothic.JobStatus.CANCELLED]

    for _ in range(100):
        found = await cancelled()
        if found:
            break
        await asyncio.sleep(0.05)
    assert found and "went away" in found[0].reason
