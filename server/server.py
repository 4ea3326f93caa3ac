"""Builds and runs the control plane: store, services, gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from typing import IO

import grpc
import grpc.aio
from cryptography.fernet import Fernet
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from apothic._proto.v1 import (
    app_service_pb2,
    billing_service_pb2,
    call_service_pb2,
    dict_service_pb2,
    function_service_pb2,
    image_service_pb2,
    queue_service_pb2,
    sandbox_service_pb2,
    secret_service_pb2,
    volume_service_pb2,
    worker_service_pb2,
)
from apothic._proto.v1 import app_service_pb2_grpc as app_grpc
from apothic._proto.v1 import billing_service_pb2_grpc as billing_grpc
from apothic._proto.v1 import call_service_pb2_grpc as call_grpc
from apothic._proto.v1 import dict_service_pb2_grpc as dict_grpc
from apothic._proto.v1 import function_service_pb2_grpc as fn_grpc
from apothic._proto.v1 import image_service_pb2_grpc as image_grpc
from apothic._proto.v1 import queue_service_pb2_grpc as queue_grpc
from apothic._proto.v1 import sandbox_service_pb2_grpc as sandbox_grpc
from apothic._proto.v1 import secret_service_pb2_grpc as secret_grpc
from apothic._proto.v1 import volume_service_pb2_grpc as volume_grpc
from apothic._proto.v1 import worker_service_pb2_grpc as w_grpc
from apothic.server.auth import Accounts, AuthInterceptor
from apothic.server.billing import Billing
from apothic.server.deployments import DeploymentManager
from apothic.server.dicts import DictManager
from apothic.server.images import ImageManager
from apothic.server.ingress import Ingress
from apothic.server.jobs import JobManager
from apothic.server.models import JOB_FAILED
from apothic.server.queues import QueueManager
from apothic.server.scheduler import Scheduler
from apothic.server.schedules import ScheduleRunner
from apothic.server.secrets import SecretManager, load_key
from apothic.server.servicers.apps import AppServicer
from apothic.server.servicers.billing import BillingServicer
from apothic.server.servicers.calls import CallServicer
from apothic.server.servicers.dicts import DictServicer
from apothic.server.servicers.functions import FunctionServicer
from apothic.server.servicers.images import ImageServicer
from apothic.server.servicers.queues import QueueServicer
from apothic.server.servicers.sandboxes import SandboxServicer
from apothic.server.servicers.secrets import SecretServicer
from apothic.server.servicers.volumes import VolumeServicer
from apothic.server.servicers.workers import WorkerServicer
from apothic.server.settings import ServerSettings
from apothic.server.store import Store
from apothic.server.volumes import VolumeManager

log = logging.getLogger("apothic.server")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAMES = (
    function_service_pb2.DESCRIPTOR.services_by_name["FunctionService"].full_name,
    app_service_pb2.DESCRIPTOR.services_by_name["AppService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    dict_service_pb2.DESCRIPTOR.services_by_name["DictService"].full_name,
    queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name,
    call_service_pb2.DESCRIPTOR.services_by_name["CallService"].full_name,
    secret_service_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name,
    sandbox_service_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name,
    volume_service_pb2.DESCRIPTOR.services_by_name["VolumeService"].full_name,
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
)


class StateDirLocked(RuntimeError):
    """Another control plane already uses this state directory."""


class ControlPlane:
    """A running control plane. Build one with :func:`create_server`."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.store = Store(
            settings.resolved_db_url(), engine_threads=settings.engine_threads, sync_commits=settings.sync_commits
        )
        self.accounts = Accounts(self.store)
        self.jobs = JobManager(self.store, watch=settings.watch)
        self.scheduler = Scheduler()
        self.jobs.scheduler = self.scheduler
        self.deployments = DeploymentManager(self.store, watch=settings.watch)
        self.deployments.scheduler = self.scheduler
        self.dicts = DictManager(self.store, watch=settings.watch)
        self.queues = QueueManager(self.store, watch=settings.watch)
        self.secrets = SecretManager(self.store)
        self.deployments.secrets = self.secrets
        #: Volume contents live under the state directory, whatever the database.
        self.volumes = VolumeManager(self.store, settings.state_dir / "volumes")
        self.deployments.volumes = self.volumes
        self.scheduler.host_for = self.volumes.host_for
        self.scheduler.placed = self.volumes.placed
        self.scheduler.request_jobs = self.jobs.service_request
        self.scheduler.live_deployments = self.deployments.live
        self.images = ImageManager(self.store, self.scheduler)
        #: Charges containers on priced workers and refuses work when a balance runs out.
        self.billing = Billing(self.store, self.scheduler, settings.billing)
        self.billing.attach()
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        #: Also serves in-process worker sessions (see apothic.worker.transport).
        self.worker_servicer = WorkerServicer(self.scheduler, self.deployments, self.secrets, self.images)
        self.worker_servicer.volumes = self.volumes
        self.worker_servicer.accounts = self.accounts
        #: Fires scheduled functions (``@app.function(schedule=...)``).
        self.schedules = ScheduleRunner(self.deployments, self.jobs, self.store)
        #: The HTTP ingress for web services (see apothic.server.ingress).
        self.ingress = Ingress(
            deployments=self.deployments,
            scheduler=self.scheduler,
            tunnels=self.worker_servicer.tunnels,
            host=settings.host,
            port=settings.http_port,
            max_body_bytes=settings.http_max_body_bytes,
        )
        self.server: grpc.aio.Server | None = None
        self.calls: CallServicer | None = None
        self.port = 0
        self._lock_file: IO[str] | None = None

    @property
    def address(self) -> str:
        """``host:port`` clients and workers dial."""
        return f"{self.settings.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP ingress that serves web services."""
        return self.ingress.url

    def _lock_state_dir(self) -> None:
        url = self.settings.resolved_db_url()
        if not url.startswith(("surrealkv://", "rocksdb://", "file://")):
            return
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.state_dir / "control-plane.lock"
        handle = open(path, "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StateDirLocked(
                f"another control plane is using {self.settings.state_dir}; stop it or pass another --state-dir"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _secret_key(self) -> bytes:
        """The key secrets are sealed with: the configured one, else the state directory's
        (generated on first start); an in-memory database gets a fresh one per process."""
        if self.settings.secret_key:
            key = self.settings.secret_key.encode()
            try:
                Fernet(key)
            except ValueError:
                raise ValueError(
                    "the configured secret key (APOTHIC_SECRET_KEY) is not a Fernet key: "
                    "32 url-safe base64-encoded bytes, e.g. from Fernet.generate_key()"
                ) from None
            return key
        if self.settings.resolved_db_url().startswith("mem://"):
            return Fernet.generate_key()
        return load_key(self.settings.state_dir)

    async def start(self) -> None:
        """Opens the store, recovers unfinished jobs and starts serving."""
        self._lock_state_dir()
        self.secrets.set_key(self._secret_key())
        await self.store.open()
        await self.deployments.load()
        await self.volumes.load()
        await self.queues.load()
        await self.billing.load()
        self.queues.start()
        self.dicts.start()
        self.scheduler.start()
        self.billing.start()
        self.deployments.start_reaper()
        await self._recover_jobs()
        self.schedules.start()
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(self.accounts)],
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ],
        )
        functions = FunctionServicer(self.deployments, self.jobs)
        functions.billing = self.billing
        fn_grpc.add_FunctionServiceServicer_to_server(functions, server)
        await self.ingress.start()
        apps = AppServicer(self.deployments, self.jobs, self.schedules, self.secrets, self.images)
        apps.web_base_url = self.ingress.url
        app_grpc.add_AppServiceServicer_to_server(apps, server)
        image_grpc.add_ImageServiceServicer_to_server(ImageServicer(self.images), server)
        secret_grpc.add_SecretServiceServicer_to_server(SecretServicer(self.secrets), server)
        sandboxes = SandboxServicer(self.deployments, self.jobs, self.secrets, self.images)
        sandboxes.billing = self.billing
        sandbox_grpc.add_SandboxServiceServicer_to_server(sandboxes, server)
        billing_grpc.add_BillingServiceServicer_to_server(BillingServicer(self.billing), server)
        volume_grpc.add_VolumeServiceServicer_to_server(VolumeServicer(self.volumes), server)
        w_grpc.add_WorkerServiceServicer_to_server(self.worker_servicer, server)
        dicts, queues = DictServicer(self.dicts), QueueServicer(self.queues)
        dict_grpc.add_DictServiceServicer_to_server(dicts, server)
        queue_grpc.add_QueueServiceServicer_to_server(queues, server)
        self.calls = CallServicer(functions, queues, dicts)
        call_grpc.add_CallServiceServicer_to_server(self.calls, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        self.port = server.add_insecure_port(f"{self.settings.host}:{self.settings.grpc_port}")
        await server.start()
        self.server = server
        for name in ("", *SERVICE_NAMES):
            await self._set_health(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("control plane listening on %s (db %s)", self.address, self.store.url)

    async def _set_health(self, name: str, status: int) -> None:
        result = self.health.set(name, status)
        if asyncio.iscoroutine(result):
            await result

    async def _recover_jobs(self) -> None:
        for record in await self.store.unfinished_jobs():
            try:
                dep, spec = await self.deployments.resolve(
                    record.account, record.app_name, record.function_name, record.deployment_id
                )
            except Exception as exc:
                record.status = JOB_FAILED
                record.reason = f"the job could not be resumed after a restart: {exc}"
                await self.store.commit(self.store.update_job_statements(record))
                continue
            events = await self.store.job_events(record.job_id)
            self.jobs.adopt(record, dep, spec, events)

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING, in-flight RPCs get ``grace`` seconds, writes are flushed."""
        for name in ("", *SERVICE_NAMES):
            with contextlib.suppress(Exception):
                await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.schedules.stop()
        await self.jobs.close()
        await self.queues.close()
        await self.dicts.close()
        for worker in list(self.scheduler.workers.values()):
            worker.outbox.put_nowait(None)  # ends in-process sessions too
        if self.calls is not None:
            self.calls.close()
        await self.ingress.stop()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        await self.scheduler.stop()
        await self.billing.close()
        await self.deployments.close()
        await self.store.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def wait(self) -> None:
        """Waits until the gRPC server stops."""
        if self.server is not None:
            await self.server.wait_for_termination()


def create_server(settings: ServerSettings) -> ControlPlane:
    """Builds a control plane; ``await plane.start()`` runs it."""
    return ControlPlane(settings)
