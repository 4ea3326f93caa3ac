"""WorkerService: one bidirectional session per worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable

import grpc.aio

from apothic._proto.v1 import types_pb2 as pb
from apothic._proto.v1 import worker_service_pb2 as w_pb
from apothic._proto.v1 import worker_service_pb2_grpc as w_grpc
from apothic.server import buckets, ids
from apothic.server.auth import Accounts
from apothic.server.deployments import DeploymentManager
from apothic.server.errors import DomainError, InvalidArgument, NotFound
from apothic.server.images import ImageManager
from apothic.server.scheduler import (
    BuildImage,
    CancelInput,
    Command,
    OpenTunnel,
    RunInput,
    Scheduler,
    StartContainer,
    StopContainer,
    WorkerHandle,
)
from apothic.server.secrets import SecretManager
from apothic.server.servicers import convert, image_specs
from apothic.server.servicers.images import outcome_from_pb
from apothic.server.tunnels import Tunnel, TunnelBroker, TunnelClosed
from apothic.server.volumes import VolumeManager, split_mount_ref

log = logging.getLogger("apothic.server.workers")

HEARTBEAT_INTERVAL_S = 5.0


def _offer_dict(offer: pb.Offer, executor: str) -> dict[str, object]:
    return {
        "cpu_cores": offer.cpu_cores,
        "memory_mb": offer.memory_mb,
        "disk_mb": offer.disk_mb,
        "gpus": [{"name": g.name, "count": g.count, "vram_mb": g.vram_mb} for g in offer.gpus],
        "arch": offer.arch,
        "region": offer.region,
        "cost_per_hour": offer.cost_per_hour,
        "verified": offer.verified,
        "labels": dict(offer.labels),
        "hostname": offer.hostname,
        "executor": executor or "process",
    }


def _run_input(cmd: RunInput) -> w_pb.RunInput:
    return w_pb.RunInput(
        container_id=cmd.container_id,
        job_id=cmd.job_id,
        attempt=cmd.attempt,
        args=pb.Payload(format=convert.FORMAT_CODES[cmd.args_format], data=cmd.args),
        result_format=convert.FORMAT_CODES[cmd.result_format],
        timeout_s=cmd.timeout_s,
    )


def _option_env(options_json: str) -> dict[str, str]:
    """The ``env=`` option of a function, from the options it was deployed with."""
    try:
        env = json.loads(options_json or "{}").get("env") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}


class WorkerServicer(w_grpc.WorkerServiceServicer):
    def __init__(
        self,
        scheduler: Scheduler,
        deployments: DeploymentManager,
        secrets: SecretManager | None = None,
        images: ImageManager | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.deployments = deployments
        self.secrets = secrets
        self.images = images
        #: Tells vast_local volumes apart (set by the control plane).
        self.volumes: VolumeManager | None = None
        #: Tunnels the HTTP ingress waits for (see apothic.server.tunnels).
        self.tunnels = TunnelBroker()
        #: Mints each container's own credential (set by the control plane); without it,
        #: containers use the worker's API key.
        self.accounts: Accounts | None = None

    async def _contexts(self, shas: Iterable[str]) -> list[pb.ImageContext]:
        out = []
        for sha in shas:
            data = await self.deployments.archive(sha)
            out.append(pb.ImageContext(sha256=sha, data=data))
        return out

    async def _message(self, cmd: Command, worker: WorkerHandle) -> w_pb.SessionResponse | None:
        """The message for a command; None when a container cannot start (its secrets)."""
        if isinstance(cmd, BuildImage):
            spec = pb.ImageSpec.FromString(cmd.spec)
            build = w_pb.BuildImage(image=spec, contexts=await self._contexts(cmd.contexts))
            return w_pb.SessionResponse(build_image=build)
        if isinstance(cmd, RunInput):
            return w_pb.SessionResponse(run_input=_run_input(cmd))
        if isinstance(cmd, OpenTunnel):
            return w_pb.SessionResponse(
                open_tunnel=w_pb.OpenTunnel(tunnel_id=cmd.tunnel_id, container_id=cmd.container_id)
            )
        if isinstance(cmd, StartContainer):
            # The function's plain ``env=`` option first; its secrets override it.
            env: dict[str, str] = _option_env(cmd.spec.options_json)
            if cmd.spec.secrets and self.secrets is not None:
                try:
                    env.update(await self.secrets.environment(cmd.account, cmd.spec.name, cmd.spec.secrets))
                except DomainError as exc:
                    # The message names the secret, never a value.
                    self.scheduler.container_exited(cmd.container_id, str(exc), startup_failed=True)
                    return None
            if cmd.spec.bucket_mounts:
                # Buckets with their credentials: in the container's environment only.
                try:
                    env.update(
                        await buckets.container_env(cmd.account, cmd.spec.name, cmd.spec.bucket_mounts, self.secrets)
                    )
                except DomainError as exc:
                    self.scheduler.container_exited(cmd.container_id, str(exc), startup_failed=True)
                    return None
            if cmd.spec.volumes:
                # Where the container mounts its volumes: {mount path: volume name} for portable
                # ones; {mount path: "<account>/<name>"} for vast_local ones, whose files the
                # worker keeps on its host's disk.
                local = self.volumes.local_volume(cmd.account, cmd.spec.volumes) if self.volumes else None
                mounts = dict(map(split_mount_ref, cmd.spec.volumes))
                portable = {p: n for n, p in mounts.items() if n != local}
                if portable:
                    env["APOTHIC_VOLUMES"] = json.dumps(portable)
                if local is not None:
                    key = f"{cmd.account.replace(':', '_')}/{local}"
                    env["APOTHIC_LOCAL_VOLUMES"] = json.dumps({mounts[local]: key})
            if self.accounts is not None:
                # The container's own credential, last: nothing the user set replaces it.
                env["APOTHIC_API_KEY"] = self.accounts.mint_container_token(cmd.account, cmd.container_id)
            function = convert.spec_to_pb(cmd.spec)
            contexts: list[pb.ImageContext] = []
            if cmd.spec.image_id and cmd.spec.image_id not in worker.images:
                # A worker that has not built the image builds it before the container starts.
                contexts = await self._contexts(image_specs.named_contexts(function.image))
            return w_pb.SessionResponse(
                start_container=w_pb.StartContainer(
                    container_id=cmd.container_id,
                    deployment_id=cmd.deployment_id,
                    app_name=cmd.app_name,
                    function=function,
                    source_archive=await self.deployments.archive(cmd.archive_sha256),
                    archive_sha256=cmd.archive_sha256,
                    env=env,
                    image_contexts=contexts,
                )
            )
        if isinstance(cmd, StopContainer):
            return w_pb.SessionResponse(
                stop_container=w_pb.StopContainer(container_id=cmd.container_id, reason=cmd.reason)
            )
        if isinstance(cmd, CancelInput):
            return w_pb.SessionResponse(cancel_input=w_pb.CancelInput(job_id=cmd.job_id, container_id=cmd.container_id))
        raise TypeError(f"unknown command {cmd!r}")

    def _handle(self, msg: w_pb.SessionRequest, worker: WorkerHandle) -> None:
        which = msg.WhichOneof("message")
        sched = self.scheduler
        if which == "image_build_log" and self.images is not None:
            build_log = msg.image_build_log
            self.images.on_log(worker, build_log.image_id, build_log.step, build_log.line)
            return
        if which == "image_built" and self.images is not None:
            self.images.on_built(worker, outcome_from_pb(msg.image_built.result))
            return
        if which == "input_results":
            for r in msg.input_results.results:
                self._result(r)
        elif which == "input_result":
            self._result(msg.input_result)
        elif which == "input_log" and not msg.input_log.job_id:
            lg = msg.input_log
            sched.service_log(lg.container_id, convert.LOG_STREAM_NAMES.get(lg.stream, "stdout"), lg.data)
        elif which == "input_log":
            lg = msg.input_log
            stream = convert.LOG_STREAM_NAMES.get(lg.stream, "stdout")
            sched.input_log(lg.container_id, lg.job_id, lg.attempt, stream, lg.data)
        elif which == "service_requests":
            self._requests(msg.service_requests, worker)
        elif which == "input_yield":
            y = msg.input_yield
            fmt = convert.FORMAT_NAMES.get(y.item.format, "cloudpickle")
            sched.input_yield("", y.job_id, y.attempt, y.seq, fmt, y.item.data)
        elif which == "container_ready":
            sched.container_ready(msg.container_ready.container_id)
        elif which == "container_exited":
            ex = msg.container_exited
            if self.accounts is not None:
                self.accounts.revoke_container_token(ex.container_id)
            sched.container_exited(ex.container_id, ex.reason, startup_failed=ex.startup_failed)

    def _requests(self, msg: w_pb.ServiceRequests, worker: WorkerHandle) -> None:
        """Starts and ends the jobs of a service container's HTTP requests."""
        for st in msg.started:
            request = {"method": st.method, "path": st.path, "query": st.query}
            self.scheduler.request_started(worker, msg.container_id, st.number, request, st.started_at)
        for end in msg.ended:
            error = convert.error_from_pb(end.error) if end.HasField("error") else None
            self.scheduler.request_ended(worker, msg.container_id, end.number, end.status_code, error, end.duration_s)

    def _result(self, r: w_pb.InputResult) -> None:
        self.scheduler.input_finished(
            r.container_id,
            r.job_id,
            r.attempt,
            convert.JOB_STATUS_NAMES.get(r.status, "failed"),
            convert.result_from_pb(r.result),
            r.reason,
        )

    async def _read(self, requests: AsyncIterator[w_pb.SessionRequest], worker: WorkerHandle) -> None:
        try:
            async for msg in requests:
                self._handle(msg, worker)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:
            log.exception("worker %s: session reader failed", worker.worker_id)
        finally:
            worker.outbox.put_nowait(None)

    async def Session(
        self, request_iterator: AsyncIterator[w_pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[w_pb.SessionResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "hello":
            raise InvalidArgument("a worker session must start with a hello message")
        hello = first.hello
        if not hello.worker_id:
            raise InvalidArgument("the worker hello must carry a worker_id")
        worker = self.scheduler.worker_connected(hello.worker_id, _offer_dict(hello.offer, hello.executor))
        log.info("worker %s connected (%s cores)", hello.worker_id, hello.offer.cpu_cores)
        yield w_pb.SessionResponse(
            welcome=w_pb.SessionWelcome(session_id=ids.new_id("sessions"), heartbeat_interval_s=HEARTBEAT_INTERVAL_S)
        )
        reader = asyncio.create_task(self._read(request_iterator, worker))
        try:
            outbox = worker.outbox
            while True:
                cmd = await outbox.get()
                if cmd is None:
                    break
                if not isinstance(cmd, RunInput) or outbox.empty():
                    message = await self._message(cmd, worker)
                    if message is not None:
                        yield message
                    continue
                # Inputs that piled up travel in one message; order is kept.
                batch = [cmd]
                tail: Command | None | bool = False
                while not outbox.empty():
                    nxt = outbox.get_nowait()
                    if isinstance(nxt, RunInput):
                        batch.append(nxt)
                        continue
                    tail = nxt
                    break
                inputs = [_run_input(c) for c in batch]
                yield w_pb.SessionResponse(run_inputs=w_pb.RunInputs(inputs=inputs))
                if tail is None:
                    break
                if tail is not False:
                    message = await self._message(tail, worker)  # type: ignore[arg-type]
                    if message is not None:
                        yield message
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            log.info("worker %s disconnected", worker.worker_id)
            if self.accounts is not None:
                for container_id in worker.containers:
                    self.accounts.revoke_container_token(container_id)
            self.scheduler.worker_lost(worker, "its session ended")
            if self.images is not None:
                self.images.worker_lost(worker)

    async def _tunnel_read(self, requests: AsyncIterator[w_pb.TunnelRequest], tunnel: Tunnel) -> None:
        """The service's bytes, from the worker to the ingress."""
        end = TunnelClosed("the worker's tunnel stream ended without a close")
        try:
            async for msg in requests:
                which = msg.WhichOneof("message")
                if which == "data":
                    if not tunnel.closed:
                        await tunnel.from_worker.put(msg.data.data)
                elif which == "close":
                    end = TunnelClosed(msg.close.error)
                    break
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            end = TunnelClosed("the worker's tunnel stream broke")
        finally:
            if not tunnel.closed:
                with contextlib.suppress(asyncio.QueueFull):
                    tunnel.from_worker.put_nowait(end)

    async def Tunnel(
        self, request_iterator: AsyncIterator[w_pb.TunnelRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[w_pb.TunnelResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "open":
            raise InvalidArgument("a tunnel must start with an open message")
        tunnel = self.tunnels.attach(first.open.tunnel_id)
        if tunnel is None:
            raise NotFound(f"tunnel {first.open.tunnel_id!r} is not awaited; the ingress gave up on it")
        reader = asyncio.create_task(self._tunnel_read(request_iterator, tunnel))
        try:
            while True:
                chunk = await tunnel.to_worker.get()
                if isinstance(chunk, TunnelClosed):
                    yield w_pb.TunnelResponse(close=w_pb.TunnelClose(error=chunk.error))
                    if not chunk.error:
                        # A half-close: the service may still answer, until the worker's side
                        # ends or the ingress aborts the tunnel.
                        abort = asyncio.ensure_future(tunnel.to_worker.get())
                        await asyncio.wait((reader, abort), return_when=asyncio.FIRST_COMPLETED)
                        if abort.done() and isinstance(late := abort.result(), TunnelClosed) and late.error:
                            yield w_pb.TunnelResponse(close=w_pb.TunnelClose(error=late.error))
                        abort.cancel()
                    break
                yield w_pb.TunnelResponse(data=w_pb.TunnelData(data=chunk))
        finally:
            tunnel.detach()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
