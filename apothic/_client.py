"""The client transport: functions, jobs and apps; one shared client per loop.

One long-lived channel per (event loop, address, key). Dict, queue, secret and volume calls
live in :mod:`apothic._client_dict`, :mod:`apothic._client_queue`,
:mod:`apothic._client_secret` and :mod:`apothic._client_volume`;
the channel and the error mapping in :mod:`apothic._transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from apothic import _serialization as ser
from apothic._client_billing import BillingCalls
from apothic._client_dict import DictCalls
from apothic._client_image import BuildProgress, ImageCalls, image_to_pb
from apothic._client_queue import QueueCalls
from apothic._client_sandbox import SandboxCalls
from apothic._client_secret import SecretCalls
from apothic._client_volume import VolumeCalls
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
from apothic._transport import FORMAT_FROM_PB, FORMAT_TO_PB, _time, watch_marker_from_pb
from apothic.cloud_bucket import CloudBucketMount
from apothic.config import ClientConfig, load_client_config
from apothic.exceptions import ImageBuildError, InvalidConfigError, from_grpc_error
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
    ServiceLogLine,
)
from apothic.options import FunctionDefinition
from apothic.retries import Retries
from apothic.schedules import Cron, Period
from apothic.watch import WatchMarker

#: Map inputs a client keeps in flight at once (the rest wait client-side).
MAP_WINDOW = 4096

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
        web_urls=dict(dep.web_urls),
        spec_hashes={f.name: f.spec_hash for f in dep.functions},
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


def _bucket_mount_pb(path: str, mount: CloudBucketMount) -> pb.FunctionBucketMount:
    secret = mount.secret
    return pb.FunctionBucketMount(
        mount_path=path,
        bucket_name=mount.bucket_name,
        endpoint_url=mount.endpoint_url or "",
        prefix=mount.prefix,
        read_only=mount.read_only,
        secret=(
            pb.FunctionSecret(name=secret.name or "", values=secret._inline_values() or {})
            if secret is not None
            else None
        ),
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


class Client(BillingCalls, DictCalls, ImageCalls, QueueCalls, SandboxCalls, SecretCalls, VolumeCalls):
    """A connection to one control plane, bound to the event loop that created it."""

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._fn = fn_grpc.FunctionServiceStub(self._channel)
        self._app = app_grpc.AppServiceStub(self._channel)

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

    async def watch_job(
        self, job_id: str, *, snapshot: bool, after_seq: int = 0
    ) -> AsyncIterator[JobEvent | WatchMarker]:
        """Streams a job's events until its end event, with the watch markers between them."""
        req = fn_pb.WatchJobRequest(job_id=job_id, snapshot=snapshot, after_seq=after_seq)
        async for resp in self._stream(self._fn.WatchJob, req):
            which = resp.WhichOneof("message")
            if which == "event":
                yield event_from_pb(resp.event)
            elif which is not None:
                yield watch_marker_from_pb(which, getattr(resp, which))

    async def list_jobs(self, *, app_name: str = "", status: JobStatus | None = None, limit: int = 50) -> list[JobInfo]:
        """Lists recent jobs, newest first."""
        code = STATUS_TO_PB[status] if status else pb.JOB_STATUS_UNSPECIFIED
        req = fn_pb.ListJobsRequest(app_name=app_name, status=code, limit=limit)  # type: ignore[arg-type]
        resp = await self._unary(self._fn.ListJobs, req)
        return [job_from_pb(j) for j in resp.jobs]

    # -- apps and deployments -----------------------------------------------------------

    async def _build_images(
        self, functions: list[FunctionDefinition], progress: BuildProgress | None
    ) -> tuple[dict[str, Any], list[Any]]:
        """Builds every image the functions name, once each: their specs by function name and
        every archive they need.

        Raises:
            ImageBuildError: an image failed to build on some executor.
        """
        specs: dict[str, Any] = {}
        contexts: dict[str, Any] = {}
        built: dict[Any, Any] = {}
        for f in functions:
            if f.image is None:
                continue
            if f.image not in built:
                spec, needed = image_to_pb(f.image)
                image_id, results = await self.build_image(spec, needed, progress=progress)
                for r in results:
                    if not r.ok:
                        where = "its base" if r.failed_step < 0 else f"step {r.failed_step}"
                        raise ImageBuildError(
                            f"function {f.name!r}: image {image_id} ({f.image.describe()}) failed to build on a "
                            f"{r.executor} worker at {where}: {r.error}"
                            + (f"\n--- build output (last lines) ---\n{r.log_tail}" if r.log_tail else ""),
                            image_id=image_id,
                            executor=r.executor,
                            step=r.failed_step,
                            log_tail=r.log_tail,
                        )
                built[f.image] = spec
                for c in needed:
                    contexts[c.sha256] = pb.ImageContext(sha256=c.sha256, data=c.data)
            specs[f.name] = built[f.image]
        return specs, list(contexts.values())

    async def deploy(
        self,
        app_name: str,
        functions: list[FunctionDefinition],
        archive: bytes,
        *,
        ephemeral: bool,
        progress: BuildProgress | None = None,
    ) -> DeploymentInfo:
        """Builds the functions' images (see :meth:`_build_images`), then deploys the app and
        returns the committed deployment."""
        images, contexts = await self._build_images(functions, progress)
        for vol in {v.name: v for f in functions for _, v in f.volumes if v._create_if_missing}.values():
            await self.create_volume(vol.name, exist_ok=True)
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
                secrets=[pb.FunctionSecret(name=s.name or "", values=s._inline_values() or {}) for s in f.secrets],
                volumes=[pb.FunctionVolume(mount_path=path, name=v.name) for path, v in f.volumes],
                image=images.get(f.name),
                bucket_mounts=[_bucket_mount_pb(path, b) for path, b in f.bucket_mounts],
            )
            for f in functions
        ]
        req = app_pb.DeployAppRequest(
            app_name=app_name, functions=specs, source_archive=archive, ephemeral=ephemeral, image_contexts=contexts
        )
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

    async def watch_deployment(
        self, deployment_id: str, *, snapshot: bool
    ) -> AsyncIterator[DeploymentEvent | WatchMarker]:
        """Streams a deployment's events until its deletion, with the watch markers between
        them (see :mod:`apothic.watch`; their ``rev`` is an event ``seq``)."""
        req = app_pb.WatchDeploymentRequest(deployment_id=deployment_id, snapshot=snapshot)
        async for resp in self._stream(self._app.WatchDeployment, req):
            which = resp.WhichOneof("message")
            if which != "event":
                if which is not None:
                    yield watch_marker_from_pb(which, getattr(resp, which))
                continue
            ev = resp.event
            yield DeploymentEvent(
                deployment_id=ev.deployment_id,
                seq=ev.seq,
                time=_time(ev.time),
                kind=ev.kind,
                deployment=deployment_from_pb(ev.deployment) if ev.HasField("deployment") else None,
            )

    async def tail_service_logs(
        self, deployment_id: str, function_name: str, *, follow: bool = False
    ) -> AsyncIterator[ServiceLogLine]:
        """A web service's output: its retained tail, then (``follow``) new output until the
        caller stops iterating."""
        req = app_pb.TailServiceLogsRequest(deployment_id=deployment_id, function_name=function_name, follow=follow)
        async for resp in self._stream(self._app.TailServiceLogs, req):
            yield ServiceLogLine(
                container_id=resp.container_id,
                stream=LOG_STREAM_FROM_PB.get(resp.stream, "stdout"),
                data=resp.data,
                time=_time(resp.time),
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

    async def watch_app(
        self, app_name: str, subscribed: asyncio.Event | None = None, *, snapshot: bool = False
    ) -> AsyncIterator[JobEvent | WatchMarker]:
        """Streams the committed events of every job of an app, with the watch markers between
        them (see :mod:`apothic.watch`); sets ``subscribed`` once the server has subscribed, so
        no later event is missed. With ``snapshot``, first a ``job.snapshot`` event per
        unfinished job of the app, then :class:`~apothic.watch.SnapshotEnd`. A
        :class:`~apothic.watch.Reset` means this reader fell behind and events were skipped."""
        call = self._app.WatchApp(app_pb.WatchAppRequest(app_name=app_name, snapshot=snapshot), metadata=self._metadata)
        try:
            await call.initial_metadata()
            if subscribed is not None:
                subscribed.set()
            async for resp in call:
                which = resp.WhichOneof("message")
                if which == "event":
                    yield event_from_pb(resp.event)
                elif which is not None:
                    yield watch_marker_from_pb(which, getattr(resp, which))
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None
        finally:
            call.cancel()


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
