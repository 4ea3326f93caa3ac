"""The zygote: a fork server that has already imported what containers need.

A fresh ``python -m apothic._container`` spends most of a cold start starting the
interpreter and importing ``apothic`` (gRPC, protobuf stubs, cloudpickle). The zygote pays
that once per worker: the worker execs ``python -m apothic.worker.zygote FD`` with the
environment its containers share, the zygote imports what a container imports, freezes
the heap (``gc.freeze``) and then forks one child per container start.

Fork safety: gRPC is imported but never used in the zygote, so no gRPC channel, server or
thread exists when it forks (the condition gRPC's fork support document gives for using
gRPC in a child); after preloading, the zygote checks it is still single-threaded and
refuses to serve otherwise. The worker itself never forks: it may run a control plane.

Protocol, over a ``SOCK_SEQPACKET`` socket pair (one JSON object per message):

* zygote -> worker ``{"op": "ready", "pid": P}`` once preloaded;
* worker -> zygote ``{"id": N, "env": {...}, "cwd": D, "module": M}`` with two fds, the
  container's end of its socket pair and the write end of its stderr pipe;
* zygote -> worker ``{"op": "forked", "id": N, "pid": P}`` with a pidfd of the child, or
  ``{"op": "error", "id": N, "message": ...}``;
* zygote -> worker ``{"op": "exited", "pid": P, "code": C}`` when it reaps a child
  (``C`` as :attr:`subprocess.Popen.returncode`: ``-N`` for signal N).

The child starts a new session, dup2s the pipe onto stderr, replaces ``os.environ`` with
exactly the environment asked for (plus ``APOTHIC_CONTAINER_FD``), closes the zygote's
descriptors, restores default signal handling and runs the module as ``__main__`` (as
``python -m`` would), leaving with ``os._exit``.

A variable that Python, gRPC or the dynamic loader read at interpreter start (``PYTHON*``,
``GRPC_*``, ``LD_*``, locale...) cannot be changed in a forked child; a container whose
environment differs from the zygote's in one of them is started with exec instead, as is
one for another interpreter. If the zygote dies, the worker starts a new one; a start
that was in flight falls back to exec, so no container start is lost.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import gc
import importlib
import importlib.util
import itertools
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable, Mapping
from importlib.machinery import ModuleSpec
from types import CodeType
from typing import Any, NoReturn

from apothic.worker.process import (
    CONTAINER_MODULE,
    ExecLauncher,
    Launched,
    Launcher,
    LaunchOptions,
    StderrTail,
    container_pipes,
    kill_group,
)

log = logging.getLogger("apothic.worker.zygote")

#: Imported by the zygote before it forks: what ``python -m apothic._container`` imports,
#: and what a container usually needs next (cloudpickle for functions shipped by value,
#: ``grpc.aio`` for calls to other functions).
PRELOAD = (
    "apothic",
    f"{CONTAINER_MODULE}.__main__",
    "apothic._serialization",
    "apothic._client",
    "cloudpickle",
    "grpc",
    "grpc.aio",
    "asyncio",
    "concurrent.futures",
)
#: Largest message either side accepts (a seqpacket socket caps it near 208 KiB anyway).
MAX_MESSAGE_BYTES = 1 << 20
#: How long a launch waits for a starting zygote to finish preloading.
START_TIMEOUT_S = 10.0
#: How long a launch waits for the zygote to answer a fork request.
FORK_TIMEOUT_S = 10.0
#: Zygotes in a row that die before they are ready before the launcher gives up on them.
MAX_START_FAILURES = 3
#: Exit code reported for a container whose zygote died before it: its status is lost.
UNKNOWN_EXIT_CODE = 255

_STARTUP_PREFIXES = ("PYTHON", "GRPC_", "LD_", "MALLOC_", "PROTOCOL_BUFFERS_", "LC_")
_STARTUP_NAMES = frozenset({"LANG", "LANGUAGE", "HOME"})


def is_startup_variable(key: str) -> bool:
    """Whether the interpreter, gRPC or the loader read ``key`` when a process starts."""
    return key.startswith(_STARTUP_PREFIXES) or key in _STARTUP_NAMES


def startup_difference(wanted: Mapping[str, str], zygote_env: Mapping[str, str]) -> str | None:
    """The first variable read at interpreter start whose value differs, or None.

    Such a variable (``PYTHONPATH``, ``GRPC_ENABLE_FORK_SUPPORT``, ``LD_PRELOAD``, ``LANG``,
    ``HOME`` for the user site directory...) already took effect in the zygote, so a child
    forked from it would not honour a different value.
    """
    for key in sorted(wanted.keys() | zygote_env.keys()):
        if is_startup_variable(key) and wanted.get(key) != zygote_env.get(key):
            return key
    return None


# -- the zygote process -----------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], fds or [])


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    """Imports ``modules``; one that fails is reported on stderr and skipped."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the container reports its own import errors
            print(f"apothic zygote: preloading {name} failed:\n{traceback.format_exc()}", file=sys.stderr)  # noqa: T201
    # Children run the container's __main__ afresh, as `python -m` does.
    sys.modules.pop(f"{CONTAINER_MODULE}.__main__", None)
    # Objects that exist now are never collected in children: their pages stay shared.
    gc.collect()
    gc.freeze()


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)  # noqa: T201 - what the interpreter does with sys.exit("text")
    return 1


class _Zygote:
    """The serving loop of the zygote process."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.start_cwd = os.getcwd()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()
        self._main: dict[str, tuple[ModuleSpec, CodeType]] = {}
        with contextlib.suppress(ImportError):
            self._main_code(CONTAINER_MODULE)

    def serve(self) -> None:
        """Forks children on request and reports their exits until the worker hangs up."""
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the selector via the wakeup fd
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        _send(self.sock, {"op": "ready", "pid": os.getpid()})
        while True:
            for key, _ in self.selector.select():
                if key.fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 4096):
                            pass
                elif not self._request():
                    return
            self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            _send(self.sock, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def _request(self) -> bool:
        msg, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE_BYTES, 4)
        try:
            if not msg:
                return False
            req = json.loads(msg)
            try:
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 2:
                    raise ValueError(f"a fork request needs 2 descriptors, got {len(fds)} (flags {flags:#x})")
                pid = self._fork(req, fds[0], fds[1])
            except Exception as exc:  # noqa: BLE001 - reported to the worker, which execs instead
                _send(self.sock, {"op": "error", "id": req.get("id"), "message": str(exc)})
                return True
        finally:
            for fd in fds:
                os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)  # before any reaping, so it names this child
        except (AttributeError, OSError):
            pidfd = -1
        try:
            _send(self.sock, {"op": "forked", "id": req["id"], "pid": pid}, [pidfd] if pidfd >= 0 else [])
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        return True

    def _main_code(self, module: str) -> tuple[ModuleSpec, CodeType]:
        """The spec and compiled code of ``module``'s ``__main__``, compiled once (the
        worker's environment may not let Python write bytecode caches)."""
        if module not in self._main:
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.submodule_search_locations is not None:
                spec = importlib.util.find_spec(f"{module}.__main__")
            if spec is None or spec.loader is None or not hasattr(spec.loader, "get_code"):
                raise ImportError(f"no module named {module!r} to run")
            main_code = spec.loader.get_code(spec.name)
            if main_code is None:
                raise ImportError(f"{module!r} has no code to run")
            self._main[module] = (spec, main_code)
        return self._main[module]

    def _fork(self, req: dict[str, Any], conn_fd: int, err_fd: int) -> int:
        self._main_code(req["module"])  # compiled here, before the fork, for later children too
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(req, conn_fd, err_fd)
        return pid

    def _child(self, req: dict[str, Any], conn_fd: int, err_fd: int) -> NoReturn:
        code = 1
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.selector.close()
            self.sock.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            os.dup2(err_fd, 2)
            os.close(err_fd)
            env = dict(req["env"])
            for key, value in os.environ.items():
                # The launcher matched these with the zygote's, so one only the zygote has was
                # set by its interpreter (LC_CTYPE by PEP 538 locale coercion), as it would be here.
                if is_startup_variable(key) and key not in env:
                    env[key] = value
            env["APOTHIC_CONTAINER_FD"] = str(conn_fd)
            os.environ.clear()
            os.environ.update(env)
            time.tzset()
            if (tempfile := sys.modules.get("tempfile")) is not None:
                tempfile.tempdir = None  # type: ignore[attr-defined]  # recomputed from this TMPDIR
            cwd = req["cwd"]
            if cwd is not None:
                os.chdir(cwd)
                if sys.path and sys.path[0] == self.start_cwd:
                    sys.path[0] = cwd  # `python -m` puts the working directory first
            spec, main_code = self._main_code(req["module"])
            main = types.ModuleType("__main__")  # what `python -m` runs the module as
            main.__dict__.update(
                __file__=spec.origin,
                __cached__=spec.cached,
                __loader__=spec.loader,
                __package__=spec.parent,
                __spec__=spec,
                __builtins__=builtins,
            )
            sys.modules["__main__"] = main
            sys.argv = [spec.origin or ""]
            exec(main_code, main.__dict__)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 - a crash of any kind ends the child with code 1
            traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m apothic.worker.zygote FD`` (FD: its end of the socket pair)."""
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    preload()
    threads = _threads()
    if threads != 1:
        print(f"apothic zygote: {threads} threads after preloading; forking would not be safe", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    try:
        _Zygote(sock).serve()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the worker went away


# -- the worker's side ------------------------------------------------------------------


class ZygoteError(Exception):
    """The zygote could not start a container (the launcher execs it instead)."""


class ZygoteProcess:
    """A container forked by the zygote: the worker is not its parent, so the zygote
    reports its exit; if the zygote dies first, its end is seen through a pidfd."""

    def __init__(self, pid: int, pidfd: int | None, stderr: StderrTail) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._stderr = stderr
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._killed = False
        self._orphaned = False

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def kill(self) -> None:
        if not self._exit.done():
            self._killed = True
            kill_group(self._pid)

    async def stderr_tail(self) -> bytes:
        tail = await self._stderr.read()
        if self._orphaned and not self._killed:
            tail += b"\n[apothic: the zygote that started this container died first; its exit status is unknown]"
        return tail

    def exited(self, code: int) -> None:
        """Records the exit status the zygote reported."""
        if not self._exit.done():
            self._exit.set_result(code)
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def orphan(self) -> None:
        """The zygote is gone: learns of the exit from the pidfd (or by polling), without status."""
        self._orphaned = True
        if self._pidfd is not None:
            self._loop.add_reader(self._pidfd, self._orphan_exited)
        else:
            self._poll()

    def _orphan_exited(self) -> None:
        self.exited(-signal.SIGKILL if self._killed else UNKNOWN_EXIT_CODE)

    def _poll(self) -> None:
        if self._exit.done():
            return
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            self._orphan_exited()
            return
        except PermissionError:
            pass
        self._loop.call_later(0.2, self._poll)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _ZygoteClient:
    """The worker's connection to one zygote process."""

    #: Arguments to the interpreter that start the zygote (its socket's fd follows).
    COMMAND: tuple[str, ...] = ("-m", "apothic.worker.zygote")

    def __init__(
        self, env: Mapping[str, str], on_lost: Callable[[_ZygoteClient], None], executable: str = sys.executable
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_lost = on_lost
        self.ready: asyncio.Future[int] = self._loop.create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if unawaited
        self.dead = False
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[ZygoteProcess], int]] = {}
        self._children: dict[int, ZygoteProcess] = {}
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                [executable, *self.COMMAND, str(theirs.fileno())],
                env=dict(env),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the worker's terminal does not reach it
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    @property
    def pid(self) -> int:
        return self.popen.pid

    async def fork(self, env: Mapping[str, str], module: str) -> Launched:
        """Asks the zygote for a child running ``module`` with ``env``.

        Raises:
            ZygoteError: the zygote refused, died or did not answer.
        """
        if self.dead:
            raise ZygoteError("the zygote is not running")
        parent, child, read_end, write_end = container_pipes()
        rid = next(self._ids)
        forked: asyncio.Future[ZygoteProcess] = self._loop.create_future()
        self._pending[rid] = (forked, read_end)
        try:
            cwd: str | None = os.getcwd()
        except OSError:  # the worker's directory was removed; the child keeps the zygote's
            cwd = None
        request = {"id": rid, "env": dict(env), "cwd": cwd, "module": module}
        try:
            try:
                await self._send(json.dumps(request).encode(), [child.fileno(), write_end])
            finally:
                child.close()
                os.close(write_end)
            process = await asyncio.wait_for(asyncio.shield(forked), FORK_TIMEOUT_S)
        except BaseException as exc:
            entry = self._pending.pop(rid, None)
            if entry is not None:
                os.close(entry[1])
            parent.close()
            if isinstance(exc, TimeoutError):
                raise ZygoteError(f"the zygote did not answer within {FORK_TIMEOUT_S:g}s") from exc
            raise
        return Launched(process, parent)

    async def _send(self, payload: bytes, fds: list[int]) -> None:
        while True:
            try:
                socket.send_fds(self.sock, [payload], fds)
                return
            except BlockingIOError:
                writable: asyncio.Future[None] = self._loop.create_future()
                self._loop.add_writer(self.sock.fileno(), _resolve, writable)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self.sock.fileno())
            except OSError as exc:
                raise ZygoteError(f"could not send to the zygote: {exc}") from exc

    def _on_readable(self) -> None:
        while not self.dead:
            try:
                msg, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE_BYTES, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            if not msg:
                self._lost()
                return
            self._handle(json.loads(msg), fds[0] if fds else None)

    def _handle(self, m: dict[str, Any], pidfd: int | None) -> None:
        op = m.get("op")
        if op == "ready":
            if not self.ready.done():
                self.ready.set_result(m["pid"])
        elif op == "forked":
            entry = self._pending.pop(m["id"], None)
            if entry is None or entry[0].done():  # the launch gave up meanwhile
                kill_group(m["pid"])
                if entry is not None:
                    os.close(entry[1])
                if pidfd is not None:
                    os.close(pidfd)
                return
            forked, read_end = entry
            process = ZygoteProcess(m["pid"], pidfd, StderrTail(read_end))
            self._children[m["pid"]] = process
            forked.set_result(process)
        elif op == "exited":
            child = self._children.pop(m["pid"], None)
            if child is not None:
                child.exited(m["code"])
        elif op == "error":
            entry = self._pending.pop(m.get("id", 0), None)
            if entry is not None:
                os.close(entry[1])
                if not entry[0].done():
                    entry[0].set_exception(ZygoteError(m.get("message", "the zygote could not fork")))
        if pidfd is not None and op != "forked":
            os.close(pidfd)

    def _lost(self) -> None:
        """The zygote hung up (it died, or we closed it)."""
        if self.dead:
            return
        self.dead = True
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        error = ZygoteError(f"the zygote (pid {self.pid}) exited")
        if not self.ready.done():
            self.ready.set_exception(error)
        for forked, read_end in self._pending.values():
            os.close(read_end)
            if not forked.done():
                forked.set_exception(error)
        self._pending.clear()
        for child in self._children.values():
            child.orphan()
        self._children.clear()
        self.popen.poll()
        self._on_lost(self)

    async def close(self) -> None:
        """Hangs up (the zygote exits; its children keep running) and reaps it."""
        self._lost()
        for _ in range(100):
            if self.popen.poll() is not None:
                return
            await asyncio.sleep(0.02)
        self.popen.kill()
        self.popen.wait()


class ZygoteLauncher:
    """Starts containers by forking a zygote; execs them when it cannot.

    Args:
        env: the environment the containers share; the zygote starts with it (plus
            ``PYTHONUNBUFFERED=1``, as containers run unbuffered).
        fallback: how to start a container the zygote cannot (default: exec).
        executable: the interpreter the zygote runs; launches asking for another one exec.
    """

    def __init__(
        self, *, env: Mapping[str, str], fallback: Launcher | None = None, executable: str = sys.executable
    ) -> None:
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        #: The interpreter the zygote runs (an image's venv, or the worker's own).
        self.executable = executable
        self._fallback = fallback or ExecLauncher()
        self._current: _ZygoteClient | None = None
        self._failures = 0
        self._closed = False

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the zygote that serves launches now (None when none is ready)."""
        z = self._current
        if z is None or z.dead or not z.ready.done() or z.ready.exception() is not None:
            return None
        return z.pid

    @property
    def enabled(self) -> bool:
        """False once zygotes failed to start :data:`MAX_START_FAILURES` times in a row."""
        return not self._closed and self._failures < MAX_START_FAILURES

    def warm(self) -> None:
        """Starts the zygote in the background (call on a running event loop)."""
        if self._current is None and self.enabled:
            self._start()

    def _start(self) -> None:
        try:
            self._current = _ZygoteClient(self.env, self._lost, self.executable)
        except OSError:
            log.exception("could not start the zygote; containers start with exec")
            self._current = None
            self._failures += 1

    def _lost(self, zygote: _ZygoteClient) -> None:
        if zygote is not self._current or self._closed:
            return
        self._current = None
        if zygote.ready.done() and zygote.ready.exception() is None:
            log.warning("the zygote (pid %d) exited with %s; starting a new one", zygote.pid, zygote.popen.returncode)
            self._start()
        else:
            self._failures += 1
            log.warning(
                "the zygote (pid %d) exited with %s before it was ready%s",
                zygote.pid,
                zygote.popen.returncode,
                "" if self.enabled else "; containers start with exec from now on",
            )

    async def _ready(self) -> _ZygoteClient | None:
        if self._current is None and self.enabled:
            self._start()
        zygote = self._current
        if zygote is None:
            return None
        try:
            await asyncio.wait_for(asyncio.shield(zygote.ready), START_TIMEOUT_S)
        except ZygoteError:
            return None  # counted in _lost
        except TimeoutError:
            if self._current is zygote:  # not already given up by a launch waiting beside this one
                log.warning("the zygote (pid %d) was not ready within %gs; replacing it", zygote.pid, START_TIMEOUT_S)
                self._failures += 1
                self._current = None
            zygote.popen.kill()
            await zygote.close()
            return None
        self._failures = 0
        return zygote if not zygote.dead else None

    async def launch(
        self,
        env: Mapping[str, str],
        *,
        executable: str = sys.executable,
        module: str = CONTAINER_MODULE,
        options: LaunchOptions | None = None,
    ) -> Launched:
        """Forks a container from the zygote, or execs it (see the module docstring for when).

        Raises:
            OSError: the exec fallback could not start the process either.
        """
        in_image = options is not None and options.image is not None
        if executable == self.executable and not in_image and not self._closed:
            different = startup_difference(env, self.env)
            if different is None:
                zygote = await self._ready()
                if zygote is not None:
                    try:
                        return await zygote.fork(env, module)
                    except ZygoteError as exc:
                        log.warning("the zygote could not start a container (%s); using exec", exc)
            else:
                log.debug("%s differs from the zygote's environment; using exec", different)
        return await self._fallback.launch(env, executable=executable, module=module, options=options)

    async def close(self) -> None:
        """Stops the zygote; containers it started keep running."""
        self._closed = True
        zygote, self._current = self._current, None
        if zygote is not None:
            await zygote.close()
        await self._fallback.close()


if __name__ == "__main__":
    main()
