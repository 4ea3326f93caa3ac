"""The client transport: the only SDK module that touches gRPC stubs.

One long-lived channel per (event loop, address, key). Every RPC error is mapped to an
exception from :mod:`apothic.exceptions` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from apothic import _serialization as ser
from apothic._proto.v1 import (
    app_service_pb2 as app_pb,
)
from apothic._proto.v1 import (
    app_service_pb2_grpc as app_grpc,
)
from apothic._proto.v1 import (
    function_service_pb2 as fn_pb,
)
from apothic._proto.v1 import (
    function_service_pb2_grpc as fn_grpc,
)
from apothic._proto.v1 import types_pb2 as pb
from apothic.config import ClientConfig, load_client_config
from apothic.exceptions import InvalidConfigError, from_grpc_error
from apothic.models import (
    AppInfo,
    DeploymentEvent,
    DeploymentInfo,
    DeploymentStatus,
    JobEndEvent,
    JobEvent,
    JobInfo,
    JobLogEvent,
    JobQueuedEvent,
    JobResultEvent,
    JobRunningEvent,
    JobSnapshotEvent,
    JobStatus,
    Outcome,
    ScheduleInfo,
)
from apothic.options import FunctionDefinition
from apothic.queue import QueueInfo, QueueItem
from apothic.retries import Retries
from apothic.schedules import Cron, Period

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Map inputs a client keeps in flight at once (the rest wait client-side).
MAP_WINDOW = 4096
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

FORMAT_TO_PB: dict[str, pb.PayloadFormat.ValueType] = {
    ser.CLOUDPICKLE: pb.PAYLOAD_FORMAT_CLOUDPICKLE,
    ser.JSON: pb.PAYLOAD_FORMAT_JSON,
}
FORMAT_FROM_PB: dict[int, str] = {v: k for k, v in FORMAT_TO_PB.items()}
STATUS_FROM_PB: dict[int, JobStatus] = {
    pb.JOB_STATUS_QUEUED: JobStatus.QUEUED,
    pb.JOB_STATUS_RUNNING: JobStatus.RUNNING,
    pb.JOB_STATUS_SUCCEEDED: JobStatus.SUCCEEDED,
    pb.JOB_STATUS_FAILED: JobStatus.FAILED,
    pb.JOB_STATUS_CANCELLED: JobStatus.CANCELLED,
    pb.JOB_STATUS_TIMED_OUT: JobStatus.TIMED_OUT,
}
STATUS_TO_PB: dict[JobStatus, int] = {v: k for k, v in STATUS_FROM_PB.items()}
DEPLOYMENT_STATUS_FROM_PB: dict[int, DeploymentStatus] = {
    pb.DEPLOYMENT_STATUS_LIVE: DeploymentStatus.LIVE,
    pb.DEPLOYMENT_STATUS_SUPERSEDED: DeploymentStatus.SUPERSEDED,
    pb.DEPLOYMENT_STATUS_STOPPED: DeploymentStatus.STOPPED,
}
LOG_STREAM_FROM_PB: dict[int, str] = {
    pb.LOG_STREAM_STDOUT: "stdout",
    pb.LOG_STREAM_STDERR: "stderr",
    pb.LOG_STREAM_SYSTEM: "system",
}


def _time(ts: Any) -> datetime | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _error_info(err: pb.RemoteError) -> ser.ErrorInfo:
    return ser.ErrorInfo(type=err.type, message=err.message, traceback=err.traceback, pickled=err.pickled)


def _outcome(job_id: str, status: int, result: pb.JobResult, reason: str, attempt: int) -> Outcome:
    which = result.WhichOneof("outcome")
    return Outcome(
        job_id=job_id,
        status=STATUS_FROM_PB.get(status, JobStatus.FAILED),
        value_format=FORMAT_FROM_PB.get(result.value.format, ser.CLOUDPICKLE),
        value_data=result.value.data if which == "value" else b"",
        error=_error_info(result.error) if which == "error" else None,
        reason=reason,
        attempt=attempt,
    )


def job_from_pb(job: pb.Job) -> JobInfo:
    """Converts a Job message."""
    status = STATUS_FROM_PB.get(job.status, JobStatus.QUEUED)
    outcome = None
    if status.is_final:
        outcome = _outcome(job.job_id, job.status, job.result, job.reason, job.attempt)
    return JobInfo(
        job_id=job.job_id,
        app_name=job.app_name,
        function_name=job.function_name,
        deployment_id=job.deployment_id,
        status=status,
        attempt=job.attempt,
        reason=job.reason,
        created_at=_time(job.created_at),
        started_at=_time(job.started_at),
        ended_at=_time(job.ended_at),
        outcome=outcome,
    )


def event_from_pb(ev: pb.JobEvent) -> JobEvent:
    """Converts a JobEvent message to its typed event."""
    base: dict[str, Any] = {
        "job_id": ev.job_id,
        "seq": ev.seq,
        "time": _time(ev.time),
        "app_name": ev.app_name,
        "function_name": ev.function_name,
    }
    which = ev.WhichOneof("event")
    if which == "snapshot":
        return JobSnapshotEvent(**base, job=job_from_pb(ev.snapshot.job))
    if which == "queued":
        return JobQueuedEvent(**base)
    if which == "running":
        r = ev.running
        return JobRunningEvent(**base, attempt=r.attempt, worker_id=r.worker_id, container_id=r.container_id)
    if which == "log":
        return JobLogEvent(**base, stream=LOG_STREAM_FROM_PB.get(ev.log.stream, "stdout"), data=ev.log.data)
    if which == "result":
        res = ev.result
        kind = res.WhichOneof("outcome")
        return JobResultEvent(
            **base,
            ok=kind == "value",
            value_format=FORMAT_FROM_PB.get(res.value.format, ser.CLOUDPICKLE),
            value_data=res.value.data,
            error=_error_info(res.error) if kind == "error" else None,
        )
    if which == "end":
        return JobEndEvent(**base, status=STATUS_FROM_PB.get(ev.end.status, JobStatus.FAILED), reason=ev.end.reason)
    return JobEvent(**base)


def deployment_from_pb(dep: pb.Deployment) -> DeploymentInfo:
    """Converts a Deployment message."""
    return DeploymentInfo(
        deployment_id=dep.deployment_id,
        app_name=dep.app_name,
        version=dep.version,
        status=DEPLOYMENT_STATUS_FROM_PB.get(dep.status, DeploymentStatus.STOPPED),
        ephemeral=dep.ephemeral,
        function_names=tuple(f.name for f in dep.functions),
        created_at=_time(dep.created_at),
        updated_at=_time(dep.updated_at),
    )


def schedule_to_pb(schedule: Cron | Period | None) -> pb.Schedule | None:
    """Builds a Schedule message (None when the function is not scheduled)."""
    if isinstance(schedule, Cron):
        return pb.Schedule(cron=pb.CronSchedule(expression=schedule.expression, timezone=schedule.timezone))
    if isinstance(schedule, Period):
        return pb.Schedule(period=pb.PeriodSchedule(seconds=schedule.total_seconds))
    return None


def schedule_info_from_pb(item: app_pb.ScheduledFunction) -> ScheduleInfo:
    """Converts a ScheduledFunction message."""
    kind = item.schedule.WhichOneof("kind")
    cron = item.schedule.cron if kind == "cron" else None
    period_s = item.schedule.period.seconds if kind == "period" else 0.0
    if cron is not None:
        text = f"cron {cron.expression!r} ({cron.timezone or 'UTC'})"
    else:
        text = Period(seconds=period_s).describe() if period_s > 0 else ""
    return ScheduleInfo(
        app_name=item.app_name,
        function_name=item.function_name,
        deployment_id=item.deployment_id,
        schedule=text,
        cron=cron.expression if cron is not None else "",
        timezone=(cron.timezone or "UTC") if cron is not None else "",
        period_s=period_s,
        next_run_at=_time(item.next_run_at) if item.HasField("next_run_at") else None,
        last_run_at=_time(item.last_run_at) if item.HasField("last_run_at") else None,
        last_job_id=item.last_job_id,
    )


def _retry_policy(retries: Retries | None) -> pb.RetryPolicy | None:
    if retries is None:
        return None
    return pb.RetryPolicy(
        max_retries=retries.max_retries,
        initial_delay_s=retries.initial_delay,
        backoff_coefficient=retries.backoff_coefficient,
        max_delay_s=retries.max_delay,
    )


def function_ref(app_name: str, function_name: str, deployment_id: str = "") -> pb.FunctionRef:
    """Builds a FunctionRef message."""
    return pb.FunctionRef(app_name=app_name, function_name=function_name, deployment_id=deployment_id)


class Client:
    """A connection to one control plane, bound to the event loop that created it."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channel = grpc.aio.insecure_channel(config.base_url, options=CHANNEL_OPTIONS)
        self._metadata = (("authorization", f"Bearer {config.api_key}"),)
        self._fn = fn_grpc.FunctionServiceStub(self._channel)
        self._app = app_grpc.AppServiceStub(self._channel)

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None

    async def _stream(self, method: Any, request: Any) -> AsyncIterator[Any]:
        call = method(request, metadata=self._metadata)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None
        finally:
            call.cancel()

    # -- functions and jobs -------------------------------------------------------------

    async def invoke(self, ref: pb.FunctionRef, args: bytes, fmt: str = ser.CLOUDPICKLE) -> Outcome:
        """Calls a function and waits for how its job ended."""
        resp = await self._unary(
            self._fn.InvokeFunction,
            fn_pb.InvokeFunctionRequest(function=ref, args=pb.Payload(format=FORMAT_TO_PB[fmt], data=args)),
        )
        return _outcome(resp.job_id, resp.status, resp.result, resp.reason, resp.attempt)

    async def spawn(self, ref: pb.FunctionRef, args: bytes, fmt: str = ser.CLOUDPICKLE) -> str:
        """Creates a job and returns its id once it is durable."""
        resp = await self._unary(
            self._fn.SpawnFunction,
            fn_pb.SpawnFunctionRequest(function=ref, args=pb.Payload(format=FORMAT_TO_PB[fmt], data=args)),
        )
        return str(resp.job_id)

    async def spawn_many(self, ref: pb.FunctionRef, args: list[bytes], fmt: str = ser.CLOUDPICKLE) -> list[str]:
        """Creates one job per input; returns their ids once all are durable."""
        code = FORMAT_TO_PB[fmt]
        resp = await self._unary(
            self._fn.SpawnFunctionMany,
            fn_pb.SpawnFunctionManyRequest(function=ref, args=[pb.Payload(format=code, data=a) for a in args]),
        )
        return list(resp.job_ids)

    async def invoke_stream(
        self, ref: pb.FunctionRef, args: bytes, fmt: str = ser.CLOUDPICKLE
    ) -> AsyncIterator[tuple[str, bytes] | Outcome]:
        """Calls a generator function: yields ``(format, data)`` per item, then its Outcome."""
        req = fn_pb.InvokeFunctionStreamRequest(function=ref, args=pb.Payload(format=FORMAT_TO_PB[fmt], data=args))
        async for resp in self._stream(self._fn.InvokeFunctionStream, req):
            which = resp.WhichOneof("message")
            if which == "item":
                yield FORMAT_FROM_PB.get(resp.item.format, ser.CLOUDPICKLE), resp.item.data
            elif which == "end":
                end = resp.end
                yield _outcome(end.job_id, end.status, end.result, end.reason, end.attempt)

    async def map(
        self, ref: pb.FunctionRef, inputs: AsyncIterator[list[tuple[int, bytes]]], fmt: str = ser.CLOUDPICKLE
    ) -> AsyncIterator[tuple[int, Outcome]]:
        """Runs a function over batches of ``(index, args)``; yields ``(index, outcome)`` as
        inputs finish. At most :data:`MAP_WINDOW` inputs are in flight at once."""
        call = self._fn.MapFunction(metadata=self._metadata)
        room = asyncio.Semaphore(MAP_WINDOW)
        failure: list[BaseException] = []
        code = FORMAT_TO_PB[fmt]
        started = asyncio.Event()

        async def write() -> None:
            try:
                await call.write(fn_pb.MapFunctionRequest(start=fn_pb.MapStart(function=ref, result_format=code)))
                # A write racing the server's rejection of the map (unknown or generator
                # function) would replace its status with "Internal error from Core".
                await started.wait()
                async for batch in inputs:
                    for _ in batch:
                        await room.acquire()
                    items = [fn_pb.MapInput(index=i, args=pb.Payload(format=code, data=d)) for i, d in batch]
                    await call.write(fn_pb.MapFunctionRequest(inputs=fn_pb.MapInputs(inputs=items)))
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the call ended; the read side reports why
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - the caller's input iterator raised
                # Like builtin map(): the inputs sent so far still deliver their results,
                # then the caller sees the exception.
                failure.append(exc)
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await call.done_writing()

        writer = asyncio.ensure_future(write())
        try:
            job_id = ""
            async for resp in call:
                if resp.WhichOneof("message") == "started":
                    job_id = resp.started.job_id
                    started.set()
                    continue
                for r in resp.results.results:
                    room.release()
                    yield r.index, _outcome(f"{job_id} input {r.index}", r.status, r.result, r.reason, r.attempts)
            await writer
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
            if failure:  # the caller's input iterator raised, and the call was cancelled for it
                raise failure[0] from None
            if isinstance(err, asyncio.CancelledError):
                raise
            raise from_grpc_error(err) from None
        finally:
            writer.cancel()
            call.cancel()
        if failure:
            raise failure[0]

    async def get_job(self, job_id: str) -> JobInfo:
        """Returns a job's state."""
        resp = await self._unary(self._fn.GetJob, fn_pb.GetJobRequest(job_id=job_id))
        return job_from_pb(resp.job)

    async def wait_job(self, job_id: str, timeout_s: float) -> tuple[JobInfo, bool]:
        """Waits up to ``timeout_s`` for a job to end; returns its state and whether it ended."""
        resp = await self._unary(self._fn.WaitJob, fn_pb.WaitJobRequest(job_id=job_id, timeout_s=timeout_s))
        return job_from_pb(resp.job), bool(resp.done)

    async def cancel_job(self, job_id: str) -> JobInfo:
        """Cancels a job."""
        resp = await self._unary(self._fn.CancelJob, fn_pb.CancelJobRequest(job_id=job_id))
        return job_from_pb(resp.job)

    async def job_logs(self, job_id: str) -> list[JobLogEvent]:
        """Returns a job's log events so far."""
        resp = await self._unary(self._fn.GetJobLogs, fn_pb.GetJobLogsRequest(job_id=job_id))
        return [e for e in map(event_from_pb, resp.events) if isinstance(e, JobLogEvent)]

    async def watch_job(self, job_id: str, *, snapshot: bool, after_seq: int = 0) -> AsyncIterator[JobEvent]:
        """Streams a job's events until its end event."""
        req = fn_pb.WatchJobRequest(job_id=job_id, snapshot=snapshot, after_seq=after_seq)
        async for resp in self._stream(self._fn.WatchJob, req):
            yield event_from_pb(resp.event)

    async def list_jobs(self, *, app_name: str = "", status: JobStatus | None = None, limit: int = 50) -> list[JobInfo]:
        """Lists recent jobs, newest first."""
        code = STATUS_TO_PB[status] if status else pb.JOB_STATUS_UNSPECIFIED
        req = fn_pb.ListJobsRequest(app_name=app_name, status=code, limit=limit)  # type: ignore[arg-type]
        resp = await self._unary(self._fn.ListJobs, req)
        return [job_from_pb(j) for j in resp.jobs]

    # -- apps and deployments -----------------------------------------------------------

    async def deploy(
        self, app_name: str, functions: list[FunctionDefinition], archive: bytes, *, ephemeral: bool
    ) -> DeploymentInfo:
        """Deploys an app and returns the committed deployment."""
        specs = [
            pb.FunctionSpec(
                name=f.name,
                module=f.module,
                qualname=f.qualname,
                pickled_function=f.pickled_function,
                timeout_s=f.timeout_s,
                startup_timeout_s=f.startup_timeout_s,
                max_containers=f.max_containers,
                scaledown_window_s=f.scaledown_window_s,
                options_json=f.options_json,
                retry_policy=_retry_policy(f.retries),
                max_concurrent_inputs=f.max_concurrent_inputs,
                target_concurrent_inputs=f.target_concurrent_inputs,
                batch_max_size=f.batch_max_size,
                batch_wait_ms=f.batch_wait_ms,
                max_pending_tasks=f.max_pending_tasks,
                min_containers=f.min_containers,
                is_generator=f.is_generator,
                is_async=f.is_async,
                schedule=schedule_to_pb(f.schedule),
            )
            for f in functions
        ]
        req = app_pb.DeployAppRequest(app_name=app_name, functions=specs, source_archive=archive, ephemeral=ephemeral)
        resp = await self._unary(self._app.DeployApp, req)
        return deployment_from_pb(resp.deployment)

    async def get_deployment(self, deployment_id: str) -> DeploymentInfo:
        """Returns one deployment."""
        resp = await self._unary(self._app.GetDeployment, app_pb.GetDeploymentRequest(deployment_id=deployment_id))
        return deployment_from_pb(resp.deployment)

    async def list_deployments(self, app_name: str = "", limit: int = 100) -> list[DeploymentInfo]:
        """Lists deployments, newest first."""
        resp = await self._unary(
            self._app.ListDeployments, app_pb.ListDeploymentsRequest(app_name=app_name, limit=limit)
        )
        return [deployment_from_pb(d) for d in resp.deployments]

    async def stop_deployment(self, deployment_id: str) -> DeploymentInfo:
        """Stops a deployment."""
        resp = await self._unary(self._app.StopDeployment, app_pb.StopDeploymentRequest(deployment_id=deployment_id))
        return deployment_from_pb(resp.deployment)

    async def delete_deployment(self, deployment_id: str) -> None:
        """Deletes a deployment."""
        await self._unary(self._app.DeleteDeployment, app_pb.DeleteDeploymentRequest(deployment_id=deployment_id))

    async def heartbeat_deployment(self, deployment_id: str) -> float:
        """Keeps an ephemeral deployment alive; returns its lease in seconds."""
        resp = await self._unary(
            self._app.HeartbeatDeployment, app_pb.HeartbeatDeploymentRequest(deployment_id=deployment_id)
        )
        return float(resp.lease_s)

    async def watch_deployment(self, deployment_id: str, *, snapshot: bool) -> AsyncIterator[DeploymentEvent]:
        """Streams a deployment's events."""
        req = app_pb.WatchDeploymentRequest(deployment_id=deployment_id, snapshot=snapshot)
        async for resp in self._stream(self._app.WatchDeployment, req):
            ev = resp.event
            yield DeploymentEvent(
                deployment_id=ev.deployment_id,
                seq=ev.seq,
                time=_time(ev.time),
                kind=ev.kind,
                deployment=deployment_from_pb(ev.deployment) if ev.HasField("deployment") else None,
            )

    async def list_apps(self) -> list[AppInfo]:
        """Lists apps."""
        resp = await self._unary(self._app.ListApps, app_pb.ListAppsRequest())
        return [
            AppInfo(
                name=a.name,
                live_deployment_id=a.live_deployment_id,
                version=a.version,
                status=DEPLOYMENT_STATUS_FROM_PB.get(a.status, DeploymentStatus.STOPPED),
                function_names=tuple(a.function_names),
                updated_at=_time(a.updated_at),
            )
            for a in resp.apps
        ]

    async def list_schedules(self, app_name: str = "") -> list[ScheduleInfo]:
        """Lists the scheduled functions of live deployments (one app's when named)."""
        resp = await self._unary(self._app.ListSchedules, app_pb.ListSchedulesRequest(app_name=app_name))
        return [schedule_info_from_pb(s) for s in resp.schedules]

    async def watch_app(self, app_name: str, subscribed: asyncio.Event | None = None) -> AsyncIterator[JobEvent]:
        """Streams the events of every job of an app; sets ``subscribed`` once the server
        has subscribed, so no later event is missed."""
        call = self._app.WatchApp(app_pb.WatchAppRequest(app_name=app_name), metadata=self._metadata)
        try:
            await call.initial_metadata()
            if subscribed is not None:
                subscribed.set()
            async for resp in call:
                yield event_from_pb(resp.event)
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None
        finally:
            call.cancel()

    # -- dicts --------------------------------------------------------------------------

    @property
    def _dicts(self) -> Any:
        stub = self.__dict__.get("_dict_stub")
        if stub is None:
            from apothic._proto.v1 import dict_service_pb2_grpc as dict_grpc

            stub = self.__dict__["_dict_stub"] = dict_grpc.DictServiceStub(self._channel)
        return stub

    async def create_dict(self, name: str, *, exist_ok: bool) -> tuple[int, bool]:
        """Creates a dict (or finds it when ``exist_ok``); returns its rev and whether it was
        created."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.CreateDict, dict_pb.CreateDictRequest(name=name, exist_ok=exist_ok))
        return int(resp.dict.rev), bool(resp.created)

    async def get_dict(self, name: str) -> tuple[int, int]:
        """Returns a dict's rev and number of keys."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.GetDict, dict_pb.GetDictRequest(name=name))
        return int(resp.dict.rev), int(resp.dict.length)

    async def delete_dict(self, name: str) -> None:
        """Deletes a dict and its keys."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        await self._unary(self._dicts.DeleteDict, dict_pb.DeleteDictRequest(name=name))

    @staticmethod
    def _dict_entry(entry: Any) -> Any:
        from apothic.dict import DictEntry

        value = None
        if entry.HasField("value"):
            value = ser.loads_value(FORMAT_FROM_PB.get(entry.value.format, ser.CLOUDPICKLE), entry.value.data)
        return DictEntry(
            key=entry.key, value=value, version=entry.version, mod_rev=entry.mod_rev, create_rev=entry.create_rev
        )

    async def dict_get(self, name: str, key: str) -> Any:
        """Returns one key as a :class:`apothic.dict.DictEntry`, or None when it is missing."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.GetDictValue, dict_pb.GetDictValueRequest(name=name, key=key))
        return self._dict_entry(resp.entry) if resp.found else None

    async def dict_put(
        self,
        name: str,
        key: str,
        value: Any,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
        lease_id: str = "",
        fence: tuple[str, int] | None = None,
        request_id: str = "",
    ) -> tuple[int, int]:
        """Writes one key (value cloudpickled), optionally attached to a lease or fenced by
        ``(lock, token)``; returns its new version and the dict's rev."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb
        from apothic.dict import encode_value

        req = dict_pb.PutDictValueRequest(
            name=name,
            key=key,
            value=pb.Payload(format=pb.PAYLOAD_FORMAT_CLOUDPICKLE, data=encode_value(key, value)),
            if_absent=if_absent,
            request_id=request_id,
            lease_id=lease_id,
        )
        if if_version is not None:
            req.if_version = if_version
        if fence is not None:
            req.fence.lock, req.fence.token = fence
        resp = await self._unary(self._dicts.PutDictValue, req)
        return int(resp.version), int(resp.rev)

    async def dict_delete(self, name: str, key: str, *, request_id: str = "") -> tuple[bool, int]:
        """Deletes one key; returns whether it existed and the dict's rev."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.DeleteDictValueRequest(name=name, key=key, request_id=request_id)
        resp = await self._unary(self._dicts.DeleteDictValue, req)
        return bool(resp.deleted), int(resp.rev)

    async def dict_list(
        self, name: str, *, prefix: str = "", start_after: str = "", limit: int = 0, keys_only: bool = False
    ) -> tuple[list[Any], bool]:
        """One page of entries in key order, and whether more follow."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.ListDictEntriesRequest(
            name=name, prefix=prefix, start_after=start_after, limit=limit, keys_only=keys_only
        )
        resp = await self._unary(self._dicts.ListDictEntries, req)
        return [self._dict_entry(e) for e in resp.entries], bool(resp.more)

    async def dict_txn(
        self, name: str, compares: list[Any], then: list[Any], else_: list[Any], *, request_id: str = ""
    ) -> Any:
        """Runs a transaction of :mod:`apothic.dict` compares and ops; returns a
        :class:`apothic.dict.DictTxnResult`."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb
        from apothic.dict import DictDelete, DictPut, DictTxnResult, encode_value

        ops_pb = {
            "==": dict_pb.DICT_COMPARE_OP_EQUAL,
            "!=": dict_pb.DICT_COMPARE_OP_NOT_EQUAL,
            ">": dict_pb.DICT_COMPARE_OP_GREATER,
            "<": dict_pb.DICT_COMPARE_OP_LESS,
        }

        def op_pb(op: Any) -> Any:
            if isinstance(op, DictPut):
                data = encode_value(op.key, op.value)
                value = pb.Payload(format=pb.PAYLOAD_FORMAT_CLOUDPICKLE, data=data)
                return dict_pb.DictOp(put=dict_pb.DictPutOp(key=op.key, value=value))
            if isinstance(op, DictDelete):
                return dict_pb.DictOp(delete=dict_pb.DictDeleteOp(key=op.key))
            raise InvalidConfigError(f"a txn operation must be a DictPut or DictDelete, not {type(op).__name__}")

        compares_pb = []
        for c in compares:
            if c.op not in ops_pb:
                raise InvalidConfigError(f"compare op {c.op!r} is not one of {', '.join(ops_pb)}")
            compares_pb.append(dict_pb.DictCompare(key=c.key, op=ops_pb[c.op], version=c.version))
        req = dict_pb.ExecuteDictTxnRequest(
            name=name,
            compares=compares_pb,
            then_ops=[op_pb(o) for o in then],
            else_ops=[op_pb(o) for o in else_],
            request_id=request_id,
        )
        resp = await self._unary(self._dicts.ExecuteDictTxn, req)
        return DictTxnResult(succeeded=bool(resp.succeeded), rev=int(resp.rev))

    @staticmethod
    def _dict_lease(lease: Any) -> Any:
        from apothic.dict import Lease

        return Lease(lease_id=lease.lease_id, ttl_s=lease.ttl_s, deadline=lease.deadline.ToDatetime(tzinfo=UTC))

    async def dict_grant(self, name: str, ttl_s: float) -> Any:
        """Grants a lease; returns a :class:`apothic.dict.Lease`."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.GrantDictLease, dict_pb.GrantDictLeaseRequest(name=name, ttl_s=ttl_s))
        return self._dict_lease(resp.lease)

    async def dict_keepalive(self, name: str, lease_id: str) -> Any:
        """Extends a lease to now + its TTL; returns the :class:`apothic.dict.Lease`."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.KeepDictLeaseAliveRequest(name=name, lease_id=lease_id)
        resp = await self._unary(self._dicts.KeepDictLeaseAlive, req)
        return self._dict_lease(resp.lease)

    async def dict_revoke(self, name: str, lease_id: str) -> bool:
        """Revokes a lease (deleting its keys); returns whether it was live."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.RevokeDictLeaseRequest(name=name, lease_id=lease_id)
        resp = await self._unary(self._dicts.RevokeDictLease, req)
        return bool(resp.revoked)

    async def dict_acquire_lock(self, name: str, lock: str, ttl_s: float, timeout_s: float) -> tuple[Any, int] | None:
        """One acquisition attempt (waiting up to ``timeout_s`` server-side); returns the
        :class:`apothic.dict.Lease` and the fencing token, or None on timeout."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.AcquireDictLockRequest(name=name, lock=lock, ttl_s=ttl_s, timeout_s=timeout_s)
        resp = await self._unary(self._dicts.AcquireDictLock, req)
        if not resp.acquired:
            return None
        return self._dict_lease(resp.lease), int(resp.token)

    async def dict_release_lock(self, name: str, lock: str, token: int) -> bool:
        """Releases a lock held with ``token``; returns whether it still was."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.ReleaseDictLockRequest(name=name, lock=lock, token=token)
        resp = await self._unary(self._dicts.ReleaseDictLock, req)
        return bool(resp.released)

    # -- queues -------------------------------------------------------------------------

    def _queue_stub(self) -> Any:
        stub = self.__dict__.get("_queue_service")
        if stub is None:
            from apothic._proto.v1 import queue_service_pb2_grpc as q_grpc

            stub = self.__dict__["_queue_service"] = q_grpc.QueueServiceStub(self._channel)
        return stub

    async def create_queue(self, name: str, max_attempts: int | None = None) -> QueueInfo:
        """Creates a queue, or returns the existing one."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.CreateQueueRequest(name=name, max_attempts=max_attempts)
        return _queue_info(await self._unary(self._queue_stub().CreateQueue, req))

    async def get_queue(self, name: str) -> QueueInfo:
        """Returns a queue's state."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        return _queue_info(await self._unary(self._queue_stub().GetQueue, q_pb.GetQueueRequest(name=name)))

    async def delete_queue(self, name: str) -> None:
        """Deletes a queue and its dead-letter queue."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        await self._unary(self._queue_stub().DeleteQueue, q_pb.DeleteQueueRequest(name=name))

    async def put_items(self, name: str, items: list[tuple[str, bytes]], *, partition: str, request_id: str) -> int:
        """Appends ``(format, data)`` items; returns the queue's rev once they committed."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        payloads = [pb.Payload(format=FORMAT_TO_PB[fmt], data=data) for fmt, data in items]
        req = q_pb.PutItemsRequest(name=name, partition=partition, items=payloads, request_id=request_id)
        return int((await self._unary(self._queue_stub().PutItems, req)).rev)

    async def get_items(self, name: str, n: int, *, wait_s: float, partition: str, request_id: str) -> list[QueueItem]:
        """Removes up to ``n`` items (claim and ack in one step)."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.GetItemsRequest(name=name, partition=partition, n=n, wait_s=wait_s, request_id=request_id)
        return [_queue_item(i) for i in (await self._unary(self._queue_stub().GetItems, req)).items]

    async def claim_items(
        self, name: str, n: int, *, lease_s: float, wait_s: float, partition: str, request_id: str
    ) -> list[QueueItem]:
        """Leases up to ``n`` items."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.ClaimItemsRequest(
            name=name, partition=partition, n=n, lease_s=lease_s, wait_s=wait_s, request_id=request_id
        )
        return [_queue_item(i) for i in (await self._unary(self._queue_stub().ClaimItems, req)).items]

    async def ack_items(self, name: str, receipts: list[str], *, request_id: str) -> int:
        """Acknowledges claims; returns the queue's rev."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.AckItemsRequest(name=name, receipts=receipts, request_id=request_id)
        return int((await self._unary(self._queue_stub().AckItems, req)).rev)

    async def renew_lease(self, name: str, receipt: str, lease_s: float, *, request_id: str) -> datetime:
        """Extends a claim's lease; returns its new deadline."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.RenewLeaseRequest(name=name, receipt=receipt, lease_s=lease_s, request_id=request_id)
        resp = await self._unary(self._queue_stub().RenewLease, req)
        return resp.lease_deadline.ToDatetime(tzinfo=UTC)

    async def release_item(self, name: str, receipt: str, delay_s: float, error: str, *, request_id: str) -> bool:
        """Gives a claimed item back; returns whether it moved to the dead-letter queue."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.ReleaseItemRequest(name=name, receipt=receipt, delay_s=delay_s, error=error, request_id=request_id)
        return bool((await self._unary(self._queue_stub().ReleaseItem, req)).dead_lettered)

    async def queue_length(self, name: str, partition: str | None) -> int:
        """Counts items not yet acked, in one partition or all (None)."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.GetQueueLengthRequest(name=name, partition=partition)
        return int((await self._unary(self._queue_stub().GetQueueLength, req)).length)

    async def clear_queue(self, name: str, partition: str | None, *, request_id: str) -> int:
        """Removes the items of one partition or all (None); returns how many."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.ClearQueueRequest(name=name, partition=partition, request_id=request_id)
        return int((await self._unary(self._queue_stub().ClearQueue, req)).removed)

    async def redrive_queue(self, name: str, *, request_id: str) -> int:
        """Moves the dead-letter queue's items back; returns how many."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.RedriveQueueRequest(name=name, request_id=request_id)
        return int((await self._unary(self._queue_stub().RedriveQueue, req)).moved)


def _queue_info(resp: Any) -> QueueInfo:
    q = resp.queue
    return QueueInfo(
        name=q.name, rev=q.rev, max_attempts=q.max_attempts, length=q.length, dead_letter_queue=q.dead_letter_queue
    )


def _queue_item(item: Any) -> QueueItem:
    return QueueItem(
        format=FORMAT_FROM_PB.get(item.value.format, ser.CLOUDPICKLE),
        data=item.value.data,
        receipt=item.receipt,
        attempt=item.attempt,
        lease_deadline=_time(item.lease_deadline) if item.HasField("lease_deadline") else None,
        last_error=item.last_error,
        partition=item.partition,
    )


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Client]] = (
    weakref.WeakKeyDictionary()
)


def get_client(config: ClientConfig | None = None) -> Client:
    """Returns the shared client for the running loop and the resolved configuration.

    Raises:
        InvalidConfigError: no control plane is configured.
    """
    if config is None:
        config = load_client_config()
        if config is None:
            raise InvalidConfigError(
                "no Apothic control plane is configured: run `apothic up`, or set APOTHIC_BASE_URL and APOTHIC_API_KEY"
            )
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (config.base_url, config.api_key)
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = Client(config)
    return client
