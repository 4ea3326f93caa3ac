"""FunctionService: invoke, spawn and follow jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc.aio

from apothic._proto.v1 import function_service_pb2 as fn_pb
from apothic._proto.v1 import function_service_pb2_grpc as fn_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server.auth import current_account
from apothic.server.deployments import DeploymentManager
from apothic.server.errors import InvalidArgument, Unavailable
from apothic.server.jobs import JobManager
from apothic.server.servicers import convert

if TYPE_CHECKING:
    from apothic.server.billing import Billing

#: Largest inline argument payload.
INLINE_LIMIT = 2 * 1024 * 1024
#: Most inputs one SpawnFunctionMany call takes.
MAX_SPAWN_BATCH = 5000


def _check_args(payload: pb.Payload) -> str:
    fmt = convert.payload_format(payload, "args")
    if len(payload.data) > INLINE_LIMIT:
        raise InvalidArgument(
            f"args payload is {len(payload.data):,} bytes, over the {INLINE_LIMIT:,}-byte inline limit"
        )
    return fmt


def _not_a_generator(spec: Any) -> None:
    if spec.is_generator:
        raise InvalidArgument(
            f"function {spec.name!r} is a generator: call it with remote_gen() to receive its items as it yields them"
        )


class FunctionServicer(fn_grpc.FunctionServiceServicer):
    def __init__(self, deployments: DeploymentManager, jobs: JobManager) -> None:
        self.deployments = deployments
        self.jobs = jobs
        #: Refuses calls at entry when the account's balance is exhausted (set by the server).
        self.billing: Billing | None = None

    async def _resolve(self, account: str, ref: Any) -> tuple[Any, Any]:
        """The deployment and spec a call names, once billing admits the call."""
        dep, spec = await self.deployments.resolve(account, ref.app_name, ref.function_name, ref.deployment_id)
        if self.billing is not None:
            await self.billing.check_call(account, spec, f"function {spec.name!r} of app {dep.app_name!r}")
        return dep, spec

    async def _target(self, request: Any) -> tuple[str, Any, Any, str, str]:
        account = current_account.get()
        dep, spec = await self._resolve(account, request.function)
        args_fmt = _check_args(request.args)
        result_fmt = convert.FORMAT_NAMES.get(request.result_format, args_fmt)
        return account, dep, spec, args_fmt, result_fmt

    async def InvokeFunction(
        self, request: fn_pb.InvokeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.InvokeFunctionResponse:
        account, dep, spec, args_fmt, result_fmt = await self._target(request)
        _not_a_generator(spec)
        job = await self.jobs.invoke(account, dep, spec, args_fmt, request.args.data, result_fmt)
        rec = job.record
        if not job.final:
            raise Unavailable(f"the control plane shut down while job {rec.job_id} was running; retry the call")
        return fn_pb.InvokeFunctionResponse(
            job_id=rec.job_id,
            status=convert.JOB_STATUS_CODES[rec.status],
            result=convert.result_to_pb(rec.result),
            reason=rec.reason,
            attempt=rec.attempt,
        )

    async def SpawnFunction(
        self, request: fn_pb.SpawnFunctionRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.SpawnFunctionResponse:
        account, dep, spec, args_fmt, result_fmt = await self._target(request)
        _not_a_generator(spec)
        if request.request_id:
            (job_id,) = await self.jobs.spawn_once(
                account, dep, spec, args_fmt, [request.args.data], result_fmt, request.request_id
            )
            return fn_pb.SpawnFunctionResponse(job_id=job_id)
        job = await self.jobs.spawn(account, dep, spec, args_fmt, request.args.data, result_fmt)
        return fn_pb.SpawnFunctionResponse(job_id=job.job_id)

    async def GetJob(self, request: fn_pb.GetJobRequest, context: grpc.aio.ServicerContext) -> fn_pb.GetJobResponse:
        record = await self.jobs.get(current_account.get(), request.job_id)
        return fn_pb.GetJobResponse(job=convert.job_to_pb(record))

    async def WaitJob(self, request: fn_pb.WaitJobRequest, context: grpc.aio.ServicerContext) -> fn_pb.WaitJobResponse:
        record, done = await self.jobs.wait(current_account.get(), request.job_id, request.timeout_s)
        return fn_pb.WaitJobResponse(job=convert.job_to_pb(record), done=done)

    async def CancelJob(
        self, request: fn_pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.CancelJobResponse:
        record = await self.jobs.cancel_by_id(current_account.get(), request.job_id)
        return fn_pb.CancelJobResponse(job=convert.job_to_pb(record))

    async def GetJobLogs(
        self, request: fn_pb.GetJobLogsRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.GetJobLogsResponse:
        account = current_account.get()
        record = await self.jobs.get(account, request.job_id)
        events = [e for e in await self.jobs.events(account, request.job_id) if e.kind == "job.log"]
        return fn_pb.GetJobLogsResponse(events=[convert.job_event_to_pb(e, record) for e in events])

    async def WatchJob(
        self, request: fn_pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fn_pb.WatchJobResponse]:
        async for item in self.jobs.watch(
            current_account.get(), request.job_id, snapshot=request.snapshot, after_seq=request.after_seq
        ):
            if isinstance(item, tuple):
                yield fn_pb.WatchJobResponse(event=convert.job_event_to_pb(*item))
            else:
                yield fn_pb.WatchJobResponse(**convert.watch_marker(item))

    async def ListJobs(
        self, request: fn_pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.ListJobsResponse:
        status = convert.JOB_STATUS_NAMES.get(request.status, "") if request.status else ""
        records = await self.jobs.list_jobs(current_account.get(), request.app_name, status, request.limit)
        return fn_pb.ListJobsResponse(jobs=[convert.job_to_pb(r) for r in records])

    async def SpawnFunctionMany(
        self, request: fn_pb.SpawnFunctionManyRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.SpawnFunctionManyResponse:
        account = current_account.get()
        dep, spec = await self._resolve(account, request.function)
        _not_a_generator(spec)
        if not request.args:
            return fn_pb.SpawnFunctionManyResponse()
        if len(request.args) > MAX_SPAWN_BATCH:
            raise InvalidArgument(
                f"at most {MAX_SPAWN_BATCH} inputs per SpawnFunctionMany call, got {len(request.args)}"
            )
        formats = {_check_args(a) for a in request.args}
        if len(formats) != 1:
            raise InvalidArgument("all inputs of one SpawnFunctionMany call must use the same payload format")
        args_fmt = formats.pop()
        result_fmt = convert.FORMAT_NAMES.get(request.result_format, args_fmt)
        args = [a.data for a in request.args]
        if request.request_id:
            job_ids = await self.jobs.spawn_once(account, dep, spec, args_fmt, args, result_fmt, request.request_id)
            return fn_pb.SpawnFunctionManyResponse(job_ids=job_ids)
        jobs = await self.jobs.spawn_many(account, dep, spec, args_fmt, args, result_fmt)
        return fn_pb.SpawnFunctionManyResponse(job_ids=[job.job_id for job in jobs])

    async def InvokeFunctionStream(
        self, request: fn_pb.InvokeFunctionStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fn_pb.InvokeFunctionStreamResponse]:
        account, dep, spec, args_fmt, result_fmt = await self._target(request)
        if not spec.is_generator:
            # Its return value would be dropped: the stream carries only yielded items.
            raise InvalidArgument(f"function {spec.name!r} is not a generator; call it with remote() instead")
        async for item in self.jobs.invoke_stream(account, dep, spec, args_fmt, request.args.data, result_fmt):
            if isinstance(item, tuple):
                fmt, data = item
                yield fn_pb.InvokeFunctionStreamResponse(item=pb.Payload(format=convert.FORMAT_CODES[fmt], data=data))
                continue
            rec = item.record
            if not item.final:
                raise Unavailable(f"the control plane shut down while job {rec.job_id} was running; retry the call")
            yield fn_pb.InvokeFunctionStreamResponse(
                end=fn_pb.InvokeFunctionResponse(
                    job_id=rec.job_id,
                    status=convert.JOB_STATUS_CODES[rec.status],
                    result=convert.result_to_pb(rec.result),
                    reason=rec.reason,
                    attempt=rec.attempt,
                )
            )

    async def MapFunction(
        self, request_iterator: AsyncIterator[fn_pb.MapFunctionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fn_pb.MapFunctionResponse]:
        account = current_account.get()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "start":
            raise InvalidArgument("a MapFunction stream must begin with a start message naming the function")
        dep, spec = await self._resolve(account, first.start.function)
        if spec.is_generator:
            raise InvalidArgument(f"function {spec.name!r} is a generator; map it with remote_gen per input instead")
        call = self.jobs.open_map(account, dep, spec, "", convert.FORMAT_NAMES.get(first.start.result_format, ""))
        yield fn_pb.MapFunctionResponse(started=fn_pb.MapStarted(job_id=call.job.job_id))
        failure: list[BaseException] = []

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    if msg.WhichOneof("message") != "inputs":
                        raise InvalidArgument("only input batches may follow a map's start message")
                    batch = []
                    for item in msg.inputs.inputs:
                        fmt = _check_args(item.args)
                        if not call.args_format:
                            call.args_format = fmt
                            call.result_format = call.result_format or fmt
                        elif fmt != call.args_format:
                            raise InvalidArgument("all inputs of a map must use the same payload format")
                        batch.append((item.index, item.args.data))
                    call.add(batch)
                call.close_inputs()
            except BaseException as exc:
                failure.append(exc)
                call.changed.fire()
                raise

        reader = asyncio.ensure_future(read())
        try:
            while True:
                waiter = call.changed.waiter()
                outcomes = call.take()
                if outcomes:
                    yield fn_pb.MapFunctionResponse(
                        results=fn_pb.MapResults(
                            results=[
                                fn_pb.MapResult(
                                    index=o.index,
                                    status=convert.JOB_STATUS_CODES[o.status],
                                    result=convert.result_to_pb(o.result),
                                    reason=o.reason,
                                    attempts=o.attempts,
                                )
                                for o in outcomes
                            ]
                        )
                    )
                    continue
                if failure:
                    raise failure[0]
                if call.complete:
                    return
                await waiter.wait()
        finally:
            reader.cancel()
            if not call.complete:
                call.cancel("the caller went away before the map finished")
