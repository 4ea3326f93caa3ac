"""Containers on this worker: the process executor.

Each container is one Python process (``python -m apothic._container``) that imports one
function once and runs inputs sent over a socket pair. The manager enforces timeouts,
cancels by stopping the process, caps output, and reports every exit with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apothic._container import protocol
from apothic._container.request_trail import request_job_id
from apothic.worker.process import ContainerProcess, ExecLauncher, Launcher, LaunchOptions
from apothic.worker.recipe import BuiltImage

log = logging.getLogger("apothic.worker.containers")

#: Output forwarded per attempt; the control plane keeps the same amount.
LOG_LIMIT_BYTES = 1024 * 1024
STDERR_TAIL_BYTES = 4096
#: Chunks of a service container's own output kept for its startup error.
SERVICE_LOG_LINES = 50
#: A service container's request starts and ends are reported at most this long after
#: they happen, together.
REQUEST_REPORT_S = 0.05


@dataclass(frozen=True)
class ContainerSpec:
    container_id: str
    deployment_id: str
    function_name: str
    module: str
    qualname: str
    pickled_function: bytes
    archive: bytes
    archive_sha256: str
    startup_timeout_s: float
    #: Inputs the container runs at once; the worker queues the rest.
    max_inputs: int = 1
    #: Extra environment for the container process (its secrets, how it runs inputs).
    #: Kept out of the repr: it holds secret values.
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: Inputs can be cancelled inside the container (async functions); otherwise a
    #: cancelled or timed-out input stops the whole container.
    cancel_in_place: bool = False
    #: Extra inputs held by a serial container (see protocol.PREFETCH).
    prefetch: int = 0
    #: The function's image, built on this worker (None: the worker's own environment).
    image: BuiltImage | None = None
    #: Resource limits (0: none); the docker executor enforces them.
    cpu: float = 0.0
    memory_mb: int = 0
    #: ``(host directory, path in the container)``: vast_local volumes.
    mounts: tuple[tuple[str, str], ...] = ()


# Events reported to the control plane.
@dataclass(frozen=True)
class Ready:
    container_id: str


@dataclass(frozen=True)
class Exited:
    container_id: str
    exit_code: int
    reason: str
    startup_failed: bool


@dataclass(frozen=True)
class Log:
    job_id: str
    attempt: int
    stream: str
    data: str
    #: Set for the output of a web service's request (its job runs on no input slot).
    container_id: str = ""


@dataclass(frozen=True)
class Result:
    container_id: str
    job_id: str
    attempt: int
    status: str  # succeeded | failed | timed_out | returned (handed over, never started)
    value_format: str
    value: bytes
    error: tuple[str, str, str, bytes] | None
    reason: str


@dataclass(frozen=True)
class Yield:
    job_id: str
    attempt: int
    seq: int
    value_format: str
    value: bytes


@dataclass(frozen=True)
class ServiceLog:
    """Output a web service container printed outside any input."""

    container_id: str
    stream: str
    data: str


@dataclass(frozen=True)
class RequestStart:
    """A web service container began answering an HTTP request (see request_trail)."""

    number: int
    method: str
    path: str
    query: str
    #: Seconds since the epoch.
    started_at: float


@dataclass(frozen=True)
class RequestEnd:
    """A web service container finished answering request ``number``."""

    number: int
    status_code: int
    #: ``(type, message, traceback, pickled)`` of what the handler raised.
    error: tuple[str, str, str, bytes] | None
    duration_s: float


@dataclass(frozen=True)
class Requests:
    """Requests a service container began and ended since the last report (starts first)."""

    container_id: str
    started: tuple[RequestStart, ...]
    ended: tuple[RequestEnd, ...]


Report = Ready | Exited | Log | Result | Yield | ServiceLog | Requests


@dataclass
class _Request:
    """An HTTP request a service container is answering (its output so far)."""

    log_bytes: int = 0
    log_truncated: bool = False


@dataclass(eq=False)
class _Input:
    """An input this worker holds for a container: waiting, or running in it."""

    job_id: str
    attempt: int
    args_format: str
    args: bytes
    result_format: str
    timeout_s: float
    timer: asyncio.TimerHandle | None = None
    log_bytes: int = 0
    log_truncated: bool = False
    #: Cancelled after it was handed to a serial container that will still run it.
    skip: bool = False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the container process was killed by {name}{hint}"
    return f"the container process exited with code {code}"


class ProcessContainer:
    """One container process and the task that pumps its frames."""

    def __init__(
        self,
        spec: ContainerSpec,
        source_dir: Path,
        report: Callable[[Report], None],
        env: dict[str, str],
        *,
        launcher: Launcher | None = None,
    ) -> None:
        self.spec = spec
        self.source_dir = source_dir
        self._report = report
        self._env = env
        self._launcher = launcher or ExecLauncher()
        self.proc: ContainerProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.ready = False
        #: Inputs sent to the process (at most ``spec.max_inputs``) and inputs waiting here.
        self.inflight: dict[str, _Input] = {}
        self.waiting: deque[_Input] = deque()
        self._outgoing: list[bytes] = []
        self._exit_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        #: The loopback port a web service container serves on (None: not a service).
        self.port: int | None = None
        #: The end of what a service container printed outside any input.
        self.service_log: deque[str] = deque(maxlen=SERVICE_LOG_LINES)
        #: HTTP requests a service container is answering, by their job id.
        self.requests: dict[str, _Request] = {}
        #: Request starts and ends not reported yet, and the timer that reports them.
        self._request_starts: list[RequestStart] = []
        self._request_ends: list[RequestEnd] = []
        self._requests_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        env = dict(self._env)
        env.update(
            APOTHIC_SOURCE_DIR=str(self.source_dir),
            APOTHIC_CONTAINER_ID=self.spec.container_id,
            PYTHONUNBUFFERED="1",
        )
        image = self.spec.image
        if image is not None:
            # The image's variables, then the function's own (env=, secrets) over them.
            env.update(image.env)
            if image.workdir:
                env["APOTHIC_WORKDIR"] = image.workdir
            if image.python_path:
                env["APOTHIC_PYTHON_PATH"] = os.pathsep.join(image.python_path)
        env.update(self.spec.env)
        if self.spec.pickled_function:
            path = self.source_dir.parent / f"{self.spec.container_id.replace(':', '_')}.pkl"
            path.write_bytes(self.spec.pickled_function)
            env["APOTHIC_PICKLED_FUNCTION"] = str(path)
        else:
            env["APOTHIC_MODULE"] = self.spec.module
            env["APOTHIC_QUALNAME"] = self.spec.qualname
        options = LaunchOptions(image=image, cpu=self.spec.cpu, memory_mb=self.spec.memory_mb, mounts=self.spec.mounts)
        launched = await self._launcher.launch(env, options=options)
        self.proc = launched.process
        if self._exit_reason is not None:
            # Stopped while it was starting (a docker start takes a while): it must not linger.
            self.proc.kill()
        reader, self._writer = await asyncio.open_unix_connection(sock=launched.channel)
        self._task = asyncio.create_task(self._pump(reader), name=f"container-{self.spec.container_id}")
        loop = asyncio.get_running_loop()
        loop.call_later(self.spec.startup_timeout_s, self._startup_deadline)

    def _startup_deadline(self) -> None:
        if not self.ready and self._exit_reason is None:
            reason = f"the container did not become ready within {self.spec.startup_timeout_s:g}s"
            tail = "".join(self.service_log)[-STDERR_TAIL_BYTES:].strip()
            if tail:
                reason += f"; its last output:\n{tail}"
            self.kill(reason)

    def run(
        self, job_id: str, attempt: int, args_format: str, args: bytes, result_format: str, timeout_s: float
    ) -> None:
        """Runs an input now, or once the container has a free slot."""
        item = _Input(job_id, attempt, args_format, args, result_format, timeout_s)
        if len(self.inflight) < self.spec.max_inputs + self.spec.prefetch:
            self._send(item)
        else:
            self.waiting.append(item)

    def _send(self, item: _Input) -> None:
        self.inflight[item.job_id] = item
        frame = protocol.encode(
            (protocol.RUN, item.job_id, item.attempt, item.args_format, item.args, item.result_format)
        )
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._write_out)
        self._outgoing.append(frame)
        if not self.spec.prefetch:
            self._arm(item)
        elif len(self.inflight) == 1:
            self._arm(item)  # a serial container starts it now; later ones start in turn

    def _arm(self, item: _Input) -> None:
        if item.timeout_s > 0 and item.timer is None:
            item.timer = asyncio.get_running_loop().call_later(item.timeout_s, self._timed_out, item)

    def _arm_head(self) -> None:
        """In a serial container the oldest unfinished input is the one running now."""
        if self.spec.prefetch and self.inflight:
            self._arm(next(iter(self.inflight.values())))

    def _write_out(self) -> None:
        """Writes the frames queued this loop iteration in one go."""
        frames, self._outgoing = self._outgoing, []
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(frames))

    def _next(self) -> None:
        limit = self.spec.max_inputs + self.spec.prefetch
        while self.waiting and len(self.inflight) < limit and self._exit_reason is None:
            self._send(self.waiting.popleft())

    def _timed_out(self, item: _Input) -> None:
        if self.inflight.get(item.job_id) is not item:
            return
        reason = f"the attempt ran longer than its timeout of {item.timeout_s:g}s"
        self._report(Result(self.spec.container_id, item.job_id, item.attempt, "timed_out", "", b"", None, reason))
        self._drop(item, f"its input timed out after {item.timeout_s:g}s")

    def cancel(self, job_id: str) -> None:
        """Drops a waiting input, or stops a running one."""
        for waiting in self.waiting:
            if waiting.job_id == job_id:
                self.waiting.remove(waiting)
                return
        running = self.inflight.get(job_id)
        if running is None:
            return
        if self.spec.prefetch and next(iter(self.inflight.values())) is not running:
            running.skip = True  # not started yet; the serial container runs it in turn, unseen
            return
        self._drop(running, f"job {job_id} was cancelled")

    def _drop(self, item: _Input, reason: str) -> None:
        """Ends a running input without a result: cancelled in place, or the container is
        stopped (a sync function cannot be interrupted)."""
        self.inflight.pop(item.job_id, None)
        if item.timer is not None:
            item.timer.cancel()
        if self.spec.cancel_in_place and self._writer is not None and not self._writer.is_closing():
            self._writer.write(protocol.encode((protocol.CANCEL, item.job_id)))
            self._next()
            return
        # Inputs handed over but not started go back to the control plane to run elsewhere.
        cid = self.spec.container_id
        for other in list(self.inflight.values()):
            del self.inflight[other.job_id]
            if not other.skip:
                self._report(Result(cid, other.job_id, other.attempt, "returned", "", b"", None, reason))
        self.kill(reason)

    def kill(self, reason: str) -> None:
        """Stops the process at once."""
        if self._exit_reason is None:
            self._exit_reason = reason
        if self.proc is not None:
            self.proc.kill()

    async def stop(self, reason: str, grace_s: float) -> None:
        """Asks the process to exit, then kills it after ``grace_s``."""
        if self._exit_reason is None:
            self._exit_reason = reason
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(protocol.encode((protocol.STOP,)))
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                self.kill(reason)

    def _on_log(self, job_id: str, attempt: int, stream: str, data: str) -> None:
        if not job_id:  # a service container's own output
            self.service_log.append(data)
            self._report(ServiceLog(self.spec.container_id, stream, data))
            return
        item: _Input | _Request | None = self.inflight.get(job_id)
        container_id = ""
        if item is None:
            item, container_id = self.requests.get(job_id), self.spec.container_id
            if item is not None and self._request_starts:
                self._report_requests()  # its start reaches the control plane first
        elif isinstance(item, _Input) and item.attempt != attempt:
            return
        if item is None or item.log_truncated:
            return
        size = len(data.encode("utf-8", "replace"))
        if item.log_bytes + size > LOG_LIMIT_BYTES:
            item.log_truncated = True
            room = max(0, LOG_LIMIT_BYTES - item.log_bytes)
            if room:
                self._report(Log(job_id, attempt, stream, data[:room], container_id))
            notice = f"\n[output truncated: this job printed more than {LOG_LIMIT_BYTES:,} bytes]\n"
            self._report(Log(job_id, attempt, "system", notice, container_id))
            return
        item.log_bytes += size
        self._report(Log(job_id, attempt, stream, data, container_id))

    def _on_request(self, msg: tuple[Any, ...]) -> None:
        """A request began or ended: reported within REQUEST_REPORT_S, many per message
        (a busy service would otherwise cost two messages per request)."""
        cid = self.spec.container_id
        if msg[0] == protocol.REQUEST_START:
            _, number, method, path, query, started_at = msg
            start = RequestStart(number, method, path, query, started_at)
            self.requests[request_job_id(cid, number)] = _Request()
            self._request_starts.append(start)
        else:
            for end in msg[1]:
                self._on_request_end(*end)
        if self._requests_timer is None:
            self._requests_timer = asyncio.get_running_loop().call_later(REQUEST_REPORT_S, self._report_requests)

    def _on_request_end(
        self, number: int, status_code: int, error: Any, unsent: tuple[Any, ...] | None, duration: float
    ) -> None:
        request = self.requests.pop(request_job_id(self.spec.container_id, number), None)
        if unsent is not None:  # a quick request's end carries its start (never reported alone)
            self._request_starts.append(RequestStart(*unsent))
        elif request is None:
            return
        self._request_ends.append(RequestEnd(number, status_code, tuple(error) if error else None, duration))

    def _report_requests(self) -> None:
        if self._requests_timer is not None:
            self._requests_timer.cancel()
            self._requests_timer = None
        if self._request_starts or self._request_ends:
            starts, ends = tuple(self._request_starts), tuple(self._request_ends)
            self._request_starts.clear()
            self._request_ends.clear()
            self._report(Requests(self.spec.container_id, starts, ends))

    def _on_results(self, results: list[tuple[Any, ...]]) -> None:
        cid = self.spec.container_id
        for job_id, attempt, ok, fmt, payload in results:
            item = self.inflight.get(job_id)
            if item is None or item.attempt != attempt:
                continue  # cancelled or timed out meanwhile
            del self.inflight[job_id]
            if item.timer is not None:
                item.timer.cancel()
            if item.skip:
                continue
            if ok:
                self._report(Result(cid, job_id, attempt, "succeeded", fmt, payload, None, ""))
            else:
                reason = f"{payload[0]}: {payload[1]}"
                self._report(Result(cid, job_id, attempt, "failed", "", b"", tuple(payload), reason))
        self._arm_head()
        self._next()

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        startup_error = ""
        finalized = False
        buffer = bytearray()
        try:
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                buffer += chunk
                for msg in protocol.split_frames(buffer):
                    kind = msg[0]
                    if kind == protocol.RESULTS:
                        self._on_results(msg[1])
                    elif kind == protocol.LOG:
                        self._on_log(msg[1], msg[2], msg[3], msg[4])
                    elif kind in (protocol.REQUEST_START, protocol.REQUEST_ENDS):
                        self._on_request(msg)
                    elif kind == protocol.YIELD:
                        _, job_id, attempt, seq, fmt, data = msg
                        item = self.inflight.get(job_id)
                        if item is not None and item.attempt == attempt:
                            self._report(Yield(job_id, attempt, seq, fmt, data))
                    elif kind == protocol.READY:
                        self.ready = True
                        self.port = msg[1] if len(msg) > 1 else None
                        self._report(Ready(self.spec.container_id))
                    elif kind == protocol.INIT_FAILED:
                        startup_error = msg[1]
        except ConnectionError:
            pass
        except GeneratorExit:
            # Finalized by the garbage collector after its event loop closed (a runtime stopped
            # without draining): there is no loop left to report the exit on.
            finalized = True
            raise
        finally:
            if not finalized:
                await self._finish(startup_error)

    async def _finish(self, startup_error: str) -> None:
        assert self.proc is not None
        stderr = await self.proc.stderr_tail()
        code = await self.proc.wait()
        if self._writer is not None:
            self._writer.close()
        for item in self.inflight.values():
            if item.timer is not None:
                item.timer.cancel()
        self._report_requests()  # the control plane fails those still running with the exit
        if startup_error:
            reason = f"importing the function failed:\n{startup_error}"
        elif self._exit_reason is not None:
            reason = self._exit_reason
        else:
            reason = _describe_exit(code)
            tail = stderr[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
            if tail:
                reason += f"; its last output:\n{tail}"
        self._report(Exited(self.spec.container_id, code, reason, startup_failed=not self.ready))


class ContainerManager:
    """Starts, feeds and stops this worker's containers."""

    def __init__(
        self,
        state_dir: Path,
        report: Callable[[Report], None],
        env: dict[str, str],
        grace_s: float,
        *,
        launcher: Launcher | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.launcher = launcher or ExecLauncher()
        self._report = report
        self._env = env
        self._grace_s = grace_s
        self.containers: dict[str, ProcessContainer] = {}

    def _source_dir(self, sha: str, archive: bytes) -> Path:
        target = self.state_dir / "archives" / sha
        if not target.exists():
            tmp = target.with_name(f".{sha}.{os.getpid()}.tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                zf.extractall(tmp)
            with contextlib.suppress(OSError):
                tmp.rename(target)
        return target

    def _on_report(self, report: Report) -> None:
        if isinstance(report, Exited):
            self.containers.pop(report.container_id, None)
        self._report(report)

    async def start(self, spec: ContainerSpec) -> None:
        try:
            source = self._source_dir(spec.archive_sha256, spec.archive) if spec.archive else self.state_dir / "empty"
            source.mkdir(parents=True, exist_ok=True)
            container = ProcessContainer(spec, source, self._on_report, self._env, launcher=self.launcher)
            self.containers[spec.container_id] = container
            await container.start()
        except Exception as exc:
            log.exception("container %s failed to start", spec.container_id)
            self.containers.pop(spec.container_id, None)
            self._report(Exited(spec.container_id, -1, f"the worker could not start the container: {exc}", True))

    def run(
        self,
        container_id: str,
        job_id: str,
        attempt: int,
        args_format: str,
        args: bytes,
        result_format: str,
        timeout_s: float,
    ) -> None:
        container = self.containers.get(container_id)
        if container is None or not container.ready:
            self._report(
                Result(
                    container_id,
                    job_id,
                    attempt,
                    "failed",
                    "",
                    b"",
                    None,
                    f"container {container_id} is not running on this worker",
                )
            )
            return
        container.run(job_id, attempt, args_format, args, result_format, timeout_s)

    def cancel(self, container_id: str, job_id: str) -> None:
        container = self.containers.get(container_id)
        if container is not None:
            container.cancel(job_id)

    async def stop(self, container_id: str, reason: str) -> None:
        container = self.containers.get(container_id)
        if container is not None:
            await container.stop(reason, self._grace_s)

    async def stop_all(self, reason: str) -> None:
        """Stops every container (the session ended, or the worker is shutting down)."""
        containers = list(self.containers.values())
        for c in containers:
            c.kill(reason)
        for c in containers:
            if c._task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(c._task), 5)
        self.containers.clear()
