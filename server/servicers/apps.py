"""AppService: deploy apps and manage their deployments."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc.aio

from apothic._proto.v1 import app_service_pb2 as app_pb
from apothic._proto.v1 import app_service_pb2_grpc as app_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server.auth import current_account
from apothic.server.deployments import DeploymentManager, validate_name
from apothic.server.errors import FailedPrecondition, InvalidArgument, NotFound
from apothic.server.images import ImageManager
from apothic.server.jobs import JobManager
from apothic.server.models import utcnow
from apothic.server.scheduler import ServiceLogLine
from apothic.server.schedules import ScheduleRunner
from apothic.server.secrets import SecretManager
from apothic.server.servicers import convert, image_specs
from apothic.server.watch import Change, SnapshotChunk
from apothic.server.web import web_options

#: Lines a TailServiceLogs follower may fall behind by before it misses some.
FOLLOW_QUEUE_LINES = 1000


def _with_spec_hash(spec: pb.FunctionSpec, archive: bytes) -> pb.FunctionSpec:
    """The spec with ``spec_hash`` set: its code (the archive the module comes from, or the
    pickled function inside the spec) and every field, inline secret values included."""
    out = pb.FunctionSpec()
    out.CopyFrom(spec)
    out.spec_hash = ""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(archive).digest() if spec.module else b"by-value")
    digest.update(out.SerializeToString(deterministic=True))
    out.spec_hash = digest.hexdigest()
    return out


class AppServicer(app_grpc.AppServiceServicer):
    def __init__(
        self,
        deployments: DeploymentManager,
        jobs: JobManager,
        schedules: ScheduleRunner | None = None,
        secrets: SecretManager | None = None,
        images: ImageManager | None = None,
    ) -> None:
        self.deployments = deployments
        self.images = images
        self.secrets = secrets
        self.jobs = jobs
        self.schedules = schedules
        #: ``http://host:port`` of the HTTP ingress; deployments name their services' URLs
        #: under it (set by the control plane).
        self.web_base_url = ""

    async def DeployApp(
        self, request: app_pb.DeployAppRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.DeployAppResponse:
        functions = [_with_spec_hash(f, request.source_archive) for f in await self._with_images(request)]
        dep = await self.deployments.deploy(
            current_account.get(),
            request.app_name,
            [convert.spec_from_pb(f, self.secrets.seal_inline if self.secrets else None) for f in functions],
            request.source_archive,
            ephemeral=request.ephemeral,
        )
        return app_pb.DeployAppResponse(deployment=convert.deployment_to_pb(dep, self.web_base_url))

    async def _with_images(self, request: app_pb.DeployAppRequest) -> list[pb.FunctionSpec]:
        """The request's functions with their images checked, named and built on every
        executor kind connected (a build already recorded answers at once).

        Raises:
            InvalidArgument: a malformed image, or an archive it names is missing.
            FailedPrecondition: an image failed to build; names the step, with the output's end.
        """
        functions = list(request.functions)
        with_image = [i for i, f in enumerate(functions) if f.HasField("image")]
        if not with_image:
            return functions
        if self.images is None:
            raise FailedPrecondition("this control plane does not build images; deploy without image=")
        specs = await image_specs.prepare(
            self.images.store, [functions[i].image for i in with_image], request.image_contexts
        )
        built: dict[str, str] = {}
        for i, spec in zip(with_image, specs, strict=True):
            copy = pb.FunctionSpec()
            copy.CopyFrom(functions[i])
            copy.image.CopyFrom(spec)
            functions[i] = copy
            if spec.image_id in built:
                continue
            data = spec.SerializeToString(deterministic=True)
            for outcome in await self.images.ensure_built(spec.image_id, data, image_specs.named_contexts(spec)):
                if not outcome.ok:
                    raise FailedPrecondition(f"function {copy.name!r}: {outcome.describe()}")
            built[spec.image_id] = copy.name
        return functions

    async def GetDeployment(
        self, request: app_pb.GetDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.GetDeploymentResponse:
        dep = await self.deployments.get(current_account.get(), request.deployment_id)
        return app_pb.GetDeploymentResponse(deployment=convert.deployment_to_pb(dep, self.web_base_url))

    async def ListDeployments(
        self, request: app_pb.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.ListDeploymentsResponse:
        deps = await self.deployments.list_deployments(current_account.get(), request.app_name, request.limit)
        return app_pb.ListDeploymentsResponse(
            deployments=[convert.deployment_to_pb(d, self.web_base_url) for d in deps]
        )

    async def StopDeployment(
        self, request: app_pb.StopDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.StopDeploymentResponse:
        dep = await self.deployments.stop(current_account.get(), request.deployment_id)
        return app_pb.StopDeploymentResponse(deployment=convert.deployment_to_pb(dep, self.web_base_url))

    async def DeleteDeployment(
        self, request: app_pb.DeleteDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.DeleteDeploymentResponse:
        await self.deployments.delete(current_account.get(), request.deployment_id)
        return app_pb.DeleteDeploymentResponse()

    async def HeartbeatDeployment(
        self, request: app_pb.HeartbeatDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.HeartbeatDeploymentResponse:
        lease = await self.deployments.heartbeat(current_account.get(), request.deployment_id)
        return app_pb.HeartbeatDeploymentResponse(lease_s=lease)

    async def WatchDeployment(
        self, request: app_pb.WatchDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[app_pb.WatchDeploymentResponse]:
        async for item in self.deployments.watch(
            current_account.get(), request.deployment_id, snapshot=request.snapshot
        ):
            if isinstance(item, SnapshotChunk):
                for dep in item.entries:
                    yield app_pb.WatchDeploymentResponse(
                        event=pb.DeploymentEvent(
                            deployment_id=dep.deployment_id,
                            seq=item.rev,
                            time=convert.timestamp(utcnow()),
                            kind="deployment.snapshot",
                            deployment=convert.deployment_to_pb(dep),
                        )
                    )
            elif isinstance(item, Change):
                for event, dep in item.events:
                    yield app_pb.WatchDeploymentResponse(
                        event=pb.DeploymentEvent(
                            deployment_id=event.object_id,
                            seq=event.seq,
                            time=convert.timestamp(event.time),
                            kind=event.kind,
                            deployment=convert.deployment_to_pb(dep),
                        )
                    )
            else:
                yield app_pb.WatchDeploymentResponse(**convert.watch_marker(item))

    async def ListApps(
        self, request: app_pb.ListAppsRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.ListAppsResponse:
        apps = await self.deployments.list_apps(current_account.get())
        return app_pb.ListAppsResponse(apps=[convert.app_to_pb(a, d) for a, d in apps])

    async def WatchApp(
        self, request: app_pb.WatchAppRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[app_pb.WatchAppResponse]:
        account = current_account.get()
        validate_name("app", request.app_name)
        if not any(a.name == request.app_name for a, _ in await self.deployments.list_apps(account)):
            raise NotFound(f"app {request.app_name!r} not found")
        with self.jobs.watch_app(account, request.app_name, snapshot=request.snapshot) as items:
            await context.send_initial_metadata((("apothic-subscribed", "1"),))
            async for item in items:
                if isinstance(item, SnapshotChunk):
                    for record in item.entries:
                        yield app_pb.WatchAppResponse(event=convert.job_event_to_pb(None, record))
                elif isinstance(item, Change):
                    for event, record in item.events:
                        yield app_pb.WatchAppResponse(event=convert.job_event_to_pb(event, record))
                else:
                    yield app_pb.WatchAppResponse(**convert.watch_marker(item))

    async def ListSchedules(
        self, request: app_pb.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> app_pb.ListSchedulesResponse:
        if self.schedules is None:
            raise FailedPrecondition("this control plane does not run schedules")
        views = await self.schedules.list_schedules(current_account.get(), request.app_name)
        return app_pb.ListSchedulesResponse(
            schedules=[
                app_pb.ScheduledFunction(
                    app_name=v.deployment.app_name,
                    function_name=v.spec.name,
                    deployment_id=v.deployment.deployment_id,
                    schedule=convert.schedule_to_pb(v.spec),
                    next_run_at=convert.timestamp(v.next_run_at),
                    last_run_at=convert.timestamp(v.last_run_at),
                    last_job_id=v.last_job_id,
                )
                for v in views
            ]
        )

    async def TailServiceLogs(
        self, request: app_pb.TailServiceLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[app_pb.TailServiceLogsResponse]:
        dep = await self.deployments.get(current_account.get(), request.deployment_id)
        spec = dep.function(request.function_name)
        if spec is None:
            raise NotFound(f"deployment {dep.deployment_id} has no function {request.function_name!r}")
        if web_options(spec) is None:
            raise InvalidArgument(f"function {spec.name!r} of app {dep.app_name!r} is not a web service")
        scheduler = self.deployments.scheduler
        pool = scheduler.service_pool(dep, spec) if scheduler is not None else None
        if pool is None:
            return
        follower: asyncio.Queue[ServiceLogLine] = asyncio.Queue(FOLLOW_QUEUE_LINES)
        if request.follow:
            pool.log_followers.add(follower)  # before the tail: no line falls in between
        try:
            for line in list(pool.log_tail):
                yield _log_line(line)
            while request.follow:
                yield _log_line(await follower.get())
        finally:
            pool.log_followers.discard(follower)


def _log_line(line: ServiceLogLine) -> app_pb.TailServiceLogsResponse:
    return app_pb.TailServiceLogsResponse(
        container_id=line.container_id,
        stream=convert.LOG_STREAM_CODES.get(line.stream, pb.LOG_STREAM_STDOUT),
        data=line.data,
        time=convert.timestamp(datetime.fromtimestamp(line.time, UTC)),
    )
