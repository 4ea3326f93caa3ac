"""The worker agent: one session to the control plane, reconnecting with backoff."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import grpc.aio

from apothic._container.protocol import prefetch_for
from apothic._proto.v1 import types_pb2 as pb
from apothic._proto.v1 import worker_service_pb2 as w_pb
from apothic.worker import offer as offer_mod
from apothic.worker.containers import (
    ContainerManager,
    ContainerSpec,
    Exited,
    Log,
    Ready,
    Report,
    Requests,
    Result,
    ServiceLog,
    Yield,
)
from apothic.worker.images import Images
from apothic.worker.process import ExecLauncher, Launcher
from apothic.worker.recipe import BuildFailed, BuiltImage, ImageBuilder, Recipe, recipe_from_pb
from apothic.worker.settings import WorkerSettings
from apothic.worker.transport import GrpcTransport, SessionTransport
from apothic.worker.tunnel import serve_tunnel
from apothic.worker.zygote_pool import ZygotePool

log = logging.getLogger("apothic.worker")

_FORMATS = {pb.PAYLOAD_FORMAT_CLOUDPICKLE: "cloudpickle", pb.PAYLOAD_FORMAT_JSON: "json"}
_FORMAT_CODES = {v: k for k, v in _FORMATS.items()}
_STATUS_CODES = {
    "succeeded": pb.JOB_STATUS_SUCCEEDED,
    "failed": pb.JOB_STATUS_FAILED,
    "timed_out": pb.JOB_STATUS_TIMED_OUT,
    "cancelled": pb.JOB_STATUS_CANCELLED,
    "returned": pb.JOB_STATUS_QUEUED,  # handed over but never started: run it elsewhere
}
_STREAM_CODES = {"stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR, "system": pb.LOG_STREAM_SYSTEM}


def _result_pb(report: Result) -> w_pb.InputResult:
    if report.error is not None:
        etype, emsg, etb, epk = report.error
        result = pb.JobResult(error=pb.RemoteError(type=etype, message=emsg, traceback=etb, pickled=epk))
    elif report.status == "succeeded":
        result = pb.JobResult(value=pb.Payload(format=_FORMAT_CODES[report.value_format], data=report.value))
    else:
        result = pb.JobResult()
    return w_pb.InputResult(
        job_id=report.job_id,
        attempt=report.attempt,
        container_id=report.container_id,
        status=_STATUS_CODES[report.status],
        result=result,
        reason=report.reason,
    )


def _requests_pb(report: Requests) -> w_pb.ServiceRequests:
    ended = []
    for end in report.ended:
        error = None
        if end.error is not None:
            etype, message, tb, pickled = end.error
            error = pb.RemoteError(type=etype, message=message, traceback=tb, pickled=pickled)
        ended.append(
            w_pb.ServiceRequestEnd(
                number=end.number, status_code=end.status_code, error=error, duration_s=end.duration_s
            )
        )
    started = [
        w_pb.ServiceRequestStart(number=s.number, method=s.method, path=s.path, query=s.query, started_at=s.started_at)
        for s in report.started
    ]
    return w_pb.ServiceRequests(container_id=report.container_id, started=started, ended=ended)


def _to_message(report: Report) -> w_pb.SessionRequest:
    if isinstance(report, Log):
        return w_pb.SessionRequest(
            input_log=w_pb.InputLog(
                job_id=report.job_id,
                attempt=report.attempt,
                stream=_STREAM_CODES[report.stream],
                data=report.data,
                container_id=report.container_id,
            )
        )
    if isinstance(report, Result):
        return w_pb.SessionRequest(input_result=_result_pb(report))
    if isinstance(report, Yield):
        return w_pb.SessionRequest(
            input_yield=w_pb.InputYield(
                job_id=report.job_id,
                attempt=report.attempt,
                seq=report.seq,
                item=pb.Payload(format=_FORMAT_CODES[report.value_format], data=report.value),
            )
        )
    if isinstance(report, ServiceLog):
        return w_pb.SessionRequest(
            input_log=w_pb.InputLog(
                container_id=report.container_id, stream=_STREAM_CODES[report.stream], data=report.data
            )
        )
    if isinstance(report, Requests):
        return w_pb.SessionRequest(service_requests=_requests_pb(report))
    if isinstance(report, Ready):
        return w_pb.SessionRequest(container_ready=w_pb.ContainerReady(container_id=report.container_id))
    assert isinstance(report, Exited)
    return w_pb.SessionRequest(
        container_exited=w_pb.ContainerExited(
            container_id=report.container_id,
            exit_code=report.exit_code,
            reason=report.reason,
            startup_failed=report.startup_failed,
        )
    )


def _execution(spec: pb.FunctionSpec) -> dict[str, object]:
    """How a container runs inputs, from the function's spec."""
    max_inputs = max(1, spec.max_concurrent_inputs)
    env = {"APOTHIC_MAX_INPUTS": str(max_inputs)}
    if spec.batch_max_size > 0:
        env["APOTHIC_BATCH_MAX_SIZE"] = str(spec.batch_max_size)
        env["APOTHIC_BATCH_WAIT_MS"] = repr(spec.batch_wait_ms)
        max_inputs = spec.batch_max_size  # the container needs a whole batch in hand
    prefetch = prefetch_for(
        max_inputs=max_inputs,
        batch_max_size=spec.batch_max_size,
        is_async=spec.is_async,
        is_generator=spec.is_generator,
    )
    try:
        options = json.loads(spec.options_json or "{}")
    except ValueError:
        options = {}
    if isinstance(options.get("web"), dict):
        env["APOTHIC_WEB"] = json.dumps(options["web"])  # a web service: see apothic._container.web
    return {
        "max_inputs": max_inputs,
        "env": tuple(env.items()),
        "cancel_in_place": spec.is_async,
        "prefetch": prefetch,
        "cpu": float(options.get("cpu") or 0.0),
        "memory_mb": int(options.get("memory_mb") or 0),
    }


class Worker:
    """Runs containers for one control plane. ``await worker.run()`` until ``stop()``."""

    def __init__(self, settings: WorkerSettings, *, transport: SessionTransport | None = None) -> None:
        self.settings = settings
        self.transport = transport or GrpcTransport(settings.base_url, settings.api_key)
        env = {
            k: v for k, v in __import__("os").environ.items() if not k.startswith("APOTHIC_") or k in ("APOTHIC_HOME",)
        }
        env["APOTHIC_BASE_URL"] = settings.base_url
        env["APOTHIC_API_KEY"] = settings.api_key
        self.images = Images(self._builder())
        self.launcher: Launcher = self._launcher(env)
        self.containers = ContainerManager(
            settings.state_dir, self._report, env, settings.stop_grace_s, launcher=self.launcher
        )
        #: What the session sends next: reports (converted as they leave) or ready messages.
        self._outbox: asyncio.Queue[Report | w_pb.SessionRequest | None] | None = None
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()
        self.sessions = 0

    def _builder(self) -> ImageBuilder:
        s = self.settings
        if s.executor == "docker":
            from apothic.worker.docker_executor import DockerBuilder

            return DockerBuilder(s.state_dir)
        from apothic.worker.venv_builder import VenvBuilder

        return VenvBuilder(s.state_dir)

    def _launcher(self, env: dict[str, str]) -> Launcher:
        s = self.settings
        if s.executor == "docker":
            from apothic.worker.docker_executor import DockerLauncher

            return DockerLauncher(env=env, state_dir=s.state_dir, worker_id=s.worker_id)
        return ZygotePool(env=env) if s.zygote else ExecLauncher()

    def _report(self, report: Report) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(report)

    def _send(self, message: w_pb.SessionRequest) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    async def _image(self, spec: pb.FunctionSpec, contexts: dict[str, bytes]) -> BuiltImage | None:
        """The function's image, built here if it is not yet; None for the worker's own
        environment (the process executor's default).

        Raises:
            BuildFailed: the build failed.
        """
        if spec.HasField("image"):
            recipe = recipe_from_pb(spec.image)
        elif self.settings.executor == "docker":
            recipe = Recipe(image_id="im-default")  # Debian slim with the worker's Python
        else:
            return None
        built, _ = await self.images.ensure(recipe, contexts)
        return built

    async def _start_container(
        self, spec: ContainerSpec, function: pb.FunctionSpec, contexts: dict[str, bytes]
    ) -> None:
        try:
            image = await self._image(function, contexts)
            spec = self._local_volumes(replace(spec, image=image))
        except BuildFailed as exc:
            self._report(Exited(spec.container_id, -1, f"the image build failed: {exc}", True))
            return
        except Exception as exc:
            log.exception("container %s could not be prepared", spec.container_id)
            self._report(Exited(spec.container_id, -1, f"the worker could not prepare the container: {exc}", True))
            return
        await self.containers.start(spec)

    def _local_volumes(self, spec: ContainerSpec) -> ContainerSpec:
        """Points a container's vast_local volumes at their directories on this host."""
        env = dict(spec.env)
        wanted = env.get("APOTHIC_LOCAL_VOLUMES")
        if not wanted:
            return spec
        root = self.settings.local_volumes_dir or self.settings.state_dir / "vast_local"
        dirs: dict[str, str] = {}
        for path, key in json.loads(wanted).items():
            parts = [p for p in key.split("/") if p]
            if not parts or any(p in (".", "..") for p in parts):
                raise ValueError(f"bad vast_local volume key {key!r}")
            folder = root.joinpath(*parts)
            folder.mkdir(parents=True, exist_ok=True)
            dirs[path] = str(folder)
        env["APOTHIC_LOCAL_VOLUMES"] = json.dumps(dirs)
        return replace(spec, env=tuple(env.items()), mounts=tuple((d, p) for p, d in dirs.items()))

    async def _build(self, build: w_pb.BuildImage) -> None:
        """Builds an image the control plane asked for, streaming its log; ends with ImageBuilt."""
        recipe = recipe_from_pb(build.image)
        executor = self.images.executor
        tail: collections.deque[str] = collections.deque(maxlen=40)

        def on_log(step: int, line: str) -> None:
            tail.append(line)
            self._send(
                w_pb.SessionRequest(
                    image_build_log=pb.ImageBuildLog(image_id=recipe.image_id, executor=executor, step=step, line=line)
                )
            )

        started = time.monotonic()
        result = pb.ImageBuildResult(image_id=recipe.image_id, executor=executor)
        try:
            _, cached = await self.images.ensure(recipe, {c.sha256: c.data for c in build.contexts}, on_log)
            result.ok, result.cached = True, cached
        except BuildFailed as exc:
            result.failed_step, result.error, result.log_tail = exc.step, str(exc), exc.log_tail or "\n".join(tail)
        except Exception as exc:
            log.exception("image %s: the build failed", recipe.image_id)
            result.failed_step, result.error = -1, f"the worker could not build the image: {exc}"
            result.log_tail = "\n".join(tail)
        result.seconds = time.monotonic() - started
        self._send(w_pb.SessionRequest(image_built=w_pb.ImageBuilt(result=result)))

    async def run(self) -> None:
        """Holds a session, reconnecting with backoff, until :meth:`stop`."""
        backoff = 0.1
        offer = offer_mod.detect(
            self.settings.state_dir,
            self.settings.labels,
            hostname=self.settings.hostname,
            region=self.settings.region,
            cost_per_hour=self.settings.cost_per_hour,
        )
        self.launcher.warm()  # the zygote preloads while the session opens
        while not self._stopping.is_set():
            try:
                await self._session(offer)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("worker: the control plane rejected the API key: %s", err.details())
                else:
                    log.info("worker: session ended (%s); reconnecting", err.code().name)
            except Exception:
                log.exception("worker: session failed; reconnecting")
            finally:
                self.connected.clear()
                self._outbox = None
                await self.containers.stop_all("the worker lost its control-plane session")
            if self._stopping.is_set():
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff * (1 + random.random() / 2))
            backoff = min(backoff * 2, self.settings.max_backoff_s)
        await self.launcher.close()

    async def stop(self) -> None:
        """Ends the session and stops every container."""
        self._stopping.set()
        if self._outbox is not None:
            self._outbox.put_nowait(None)

    async def _outgoing(self, hello: w_pb.SessionRequest) -> AsyncIterator[w_pb.SessionRequest]:
        assert self._outbox is not None
        outbox = self._outbox
        yield hello
        while True:
            item = await outbox.get()
            if item is None:
                return
            if not isinstance(item, Result):
                yield item if isinstance(item, w_pb.SessionRequest) else _to_message(item)
                continue
            # Results that piled up travel in one message; everything keeps its order.
            batch = [_result_pb(item)]
            tail: Report | w_pb.SessionRequest | None | bool = False
            while not outbox.empty():
                nxt = outbox.get_nowait()
                if isinstance(nxt, Result):
                    batch.append(_result_pb(nxt))
                    continue
                tail = nxt
                break
            yield w_pb.SessionRequest(input_results=w_pb.InputResults(results=batch))
            if tail is None:
                return
            if tail is not False:
                yield tail if isinstance(tail, w_pb.SessionRequest) else _to_message(tail)  # type: ignore[arg-type]

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._outbox is not None:
                self._outbox.put_nowait(
                    w_pb.SessionRequest(
                        heartbeat=w_pb.WorkerHeartbeat(running_containers=len(self.containers.containers))
                    )
                )

    def _run(self, r: w_pb.RunInput) -> None:
        self.containers.run(
            r.container_id,
            r.job_id,
            r.attempt,
            _FORMATS.get(r.args.format, "cloudpickle"),
            r.args.data,
            _FORMATS.get(r.result_format, "cloudpickle"),
            r.timeout_s,
        )

    async def _session(self, offer: offer_mod.Offer) -> None:
        s = self.settings
        hello = w_pb.SessionRequest(
            hello=w_pb.WorkerHello(
                worker_id=s.worker_id,
                version="0.1.0",
                executor=s.executor,
                offer=pb.Offer(
                    cpu_cores=offer.cpu_cores,
                    memory_mb=offer.memory_mb,
                    disk_mb=offer.disk_mb,
                    gpus=[pb.Gpu(name=g.name, count=g.count, vram_mb=g.vram_mb) for g in offer.gpus],
                    arch=offer.arch,
                    hostname=offer.hostname,
                    labels=offer.labels,
                    region=offer.region,
                    cost_per_hour=offer.cost_per_hour,
                ),
            )
        )
        self._outbox = asyncio.Queue()
        async with self.transport.open(self._outgoing(hello)) as call:
            heartbeat: asyncio.Task[None] | None = None
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for msg in call:
                    which = msg.WhichOneof("message")
                    if which == "run_inputs":
                        for r in msg.run_inputs.inputs:
                            self._run(r)
                    elif which == "run_input":
                        self._run(msg.run_input)
                    elif which == "start_container":
                        sc = msg.start_container
                        execution = _execution(sc.function)
                        # Secrets first: the runtime's own variables win over them.
                        execution["env"] = (*sc.env.items(), *execution["env"])  # type: ignore[misc]
                        spec = ContainerSpec(
                            container_id=sc.container_id,
                            deployment_id=sc.deployment_id,
                            function_name=sc.function.name,
                            module=sc.function.module,
                            qualname=sc.function.qualname,
                            pickled_function=sc.function.pickled_function,
                            archive=sc.source_archive,
                            archive_sha256=sc.archive_sha256,
                            startup_timeout_s=sc.function.startup_timeout_s or 60.0,
                            **execution,
                        )
                        contexts = {c.sha256: c.data for c in sc.image_contexts}
                        task = asyncio.create_task(self._start_container(spec, sc.function, contexts))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif which == "stop_container":
                        task = asyncio.create_task(
                            self.containers.stop(msg.stop_container.container_id, msg.stop_container.reason)
                        )
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif which == "build_image":
                        task = asyncio.create_task(self._build(msg.build_image))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif which == "open_tunnel":
                        ot = msg.open_tunnel
                        container = self.containers.containers.get(ot.container_id)
                        port = container.port if container is not None and container.ready else None
                        task = asyncio.create_task(serve_tunnel(self.transport, ot.tunnel_id, port, ot.container_id))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif which == "cancel_input":
                        self.containers.cancel(msg.cancel_input.container_id, msg.cancel_input.job_id)
                    elif which == "welcome":
                        self.sessions += 1
                        self.connected.set()
                        log.info("worker %s: session open to %s", s.worker_id, self.transport.base_url)
                        heartbeat = asyncio.create_task(self._heartbeat(msg.welcome.heartbeat_interval_s or 5.0))
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                for task in tasks:
                    task.cancel()
