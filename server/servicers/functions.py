"""FunctionService: invoke, spawn and follow jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from apothic._proto.v1 import function_service_pb2 as fn_pb
from apothic._proto.v1 import function_service_pb2_grpc as fn_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server.auth import current_account
from apothic.server.deployments import DeploymentManager
from apothic.server.errors import InvalidArgument, Unavailable
from apothic.server.jobs import JobManager
from apothic.server.servicers import convert

#: Largest inline argument payload.
INLINE_LIMIT = 2 * 1024 * 1024


def _check_args(payload: pb.Payload) -> str:
    fmt = convert.payload_format(payload, "args")
    if len(payload.data) > INLINE_LIMIT:
        raise InvalidArgument(
            f"args payload is {len(payload.data):,} bytes, over the {INLINE_LIMIT:,}-byte inline limit"
        )
    return fmt


class FunctionServicer(fn_grpc.FunctionServiceServicer):
    def __init__(self, deployments: DeploymentManager, jobs: JobManager) -> None:
        self.deployments = deployments
        self.jobs = jobs

    async def _target(self, request: Any) -> tuple[str, Any, Any, str, str]:
        account = current_account.get()
        ref = request.function
        dep, spec = await self.deployments.resolve(account, ref.app_name, ref.function_name, ref.deployment_id)
        args_fmt = _check_args(request.args)
        result_fmt = convert.FORMAT_NAMES.get(request.result_format, args_fmt)
        return account, dep, spec, args_fmt, result_fmt

    async def InvokeFunction(
        self, request: fn_pb.InvokeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.InvokeFunctionResponse:
        account, dep, spec, args_fmt, result_fmt = await self._target(request)
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
        async for event, record in self.jobs.watch(
            current_account.get(), request.job_id, snapshot=request.snapshot, after_seq=request.after_seq
        ):
            yield fn_pb.WatchJobResponse(event=convert.job_event_to_pb(event, record))

    async def ListJobs(
        self, request: fn_pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> fn_pb.ListJobsResponse:
        status = convert.JOB_STATUS_NAMES.get(request.status, "") if request.status else ""
        records = await self.jobs.list_jobs(current_account.get(), request.app_name, status, request.limit)
        return fn_pb.ListJobsResponse(jobs=[convert.job_to_pb(r) for r in records])
