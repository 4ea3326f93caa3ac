"""Container processes, however they were made.

A :class:`Launcher` starts ``python -m apothic._container`` with a given environment and
returns a :class:`Launched`: the :class:`ContainerProcess` and the worker's end of the
socket pair the container talks over. :class:`ExecLauncher` starts a fresh interpreter
(fork + exec); :class:`~apothic.worker.zygote.ZygoteLauncher` forks a process that has
already imported what containers need. The container manager only sees the protocol, so
it does not care which one made the process.

Either way the container gets exactly the environment asked for plus
``APOTHIC_CONTAINER_FD`` (its end of the socket pair), runs in a session of its own (so
:meth:`ContainerProcess.kill` stops everything it started), has stdin and stdout on
``/dev/null``, and its stderr on a pipe whose tail the worker keeps for the exit reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from apothic.worker.recipe import BuiltImage

#: The module a container process runs (``python -m``).
CONTAINER_MODULE = "apothic._container"
#: Bytes of stderr kept per process; the exit reason quotes the end of it.
STDERR_KEEP_BYTES = 64 * 1024
#: How long :meth:`ContainerProcess.stderr_tail` waits for the last writer to close stderr.
STDERR_WAIT_S = 5.0


class ContainerProcess(Protocol):
    """A running container process, whoever its parent is."""

    @property
    def pid(self) -> int:
        """The process id; also its process group and session id."""
        ...

    @property
    def returncode(self) -> int | None:
        """None while it runs; then its exit code, or ``-N`` when signal N ended it."""
        ...

    async def wait(self) -> int:
        """Waits for the process to end and returns :attr:`returncode`."""
        ...

    def kill(self) -> None:
        """Sends SIGKILL to the process and everything in its process group."""
        ...

    async def stderr_tail(self) -> bytes:
        """The last bytes the process wrote to stderr, once nothing holds it open any more.

        Waits at most :data:`STDERR_WAIT_S` (a subprocess of the container may keep stderr
        open), then stops reading. Call it once, after the process has ended.
        """
        ...


@dataclass(frozen=True)
class LaunchOptions:
    """What a container runs in, beyond its environment.

    Attributes:
        image: the built image (None: the worker's own Python environment).
        cpu: CPU cores it may use (0: no limit); enforced by the docker executor.
        memory_mb: memory it may use (0: no limit); enforced by the docker executor.
        mounts: ``(host directory, path in the container)`` pairs (vast_local volumes); the
            docker executor bind-mounts them, a process container links them itself.
    """

    image: BuiltImage | None = None
    cpu: float = 0.0
    memory_mb: int = 0
    mounts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Launched:
    """A started container: its process and the worker's end of its socket pair."""

    process: ContainerProcess
    channel: socket.socket


class Launcher(Protocol):
    """Starts container processes."""

    def warm(self) -> None:
        """Gets ready for the first launch in the background (a no-op where nothing to do)."""
        ...

    async def launch(
        self,
        env: Mapping[str, str],
        *,
        executable: str = sys.executable,
        module: str = CONTAINER_MODULE,
        options: LaunchOptions | None = None,
    ) -> Launched:
        """Starts ``executable -m module`` with exactly ``env`` plus ``APOTHIC_CONTAINER_FD``,
        in ``options.image`` when one is given (its interpreter replaces ``executable``).

        Raises:
            OSError: the process could not be started.
        """
        ...

    async def close(self) -> None:
        """Releases what the launcher holds; processes it started keep running."""
        ...


class StderrTail:
    """Reads a process's stderr pipe as it is written, keeping only the end of it.

    Reading all along means a chatty process never blocks on a full pipe, and memory stays
    bounded by ``keep`` bytes.
    """

    def __init__(self, fd: int, *, keep: int = STDERR_KEEP_BYTES) -> None:
        self._fd = fd
        self._keep = keep
        self._data = bytearray()
        self._loop = asyncio.get_running_loop()
        self._eof: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        self._data += chunk
        if len(self._data) > self._keep:
            del self._data[: len(self._data) - self._keep]

    async def read(self, wait_s: float = STDERR_WAIT_S) -> bytes:
        """Waits up to ``wait_s`` for end of file, stops reading, and returns what it kept."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._eof), wait_s)
        self.close()
        return bytes(self._data)

    def close(self) -> None:
        """Stops reading and closes the pipe."""
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        if not self._eof.done():
            self._eof.set_result(None)


def kill_group(pid: int) -> None:
    """SIGKILLs process group ``pid``; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ExecProcess:
    """A container this worker started with fork + exec (it is the parent)."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: StderrTail) -> None:
        self._proc = proc
        self._stderr = stderr

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def kill(self) -> None:
        if self._proc.returncode is None:
            kill_group(self._proc.pid)

    async def stderr_tail(self) -> bytes:
        return await self._stderr.read()


def container_pipes() -> tuple[socket.socket, socket.socket, int, int]:
    """The worker's and the container's ends of a socket pair, and a stderr pipe (read, write)."""
    parent, child = socket.socketpair()
    read_end, write_end = os.pipe()
    return parent, child, read_end, write_end


class ExecLauncher:
    """Starts each container as a fresh interpreter: ``python -m apothic._container``."""

    def warm(self) -> None:
        """Nothing to prepare."""

    async def launch(
        self,
        env: Mapping[str, str],
        *,
        executable: str = sys.executable,
        module: str = CONTAINER_MODULE,
        options: LaunchOptions | None = None,
    ) -> Launched:
        """Forks and execs ``executable -m module`` (the container by default) with ``env``;
        an image's interpreter replaces ``executable``.

        Raises:
            OSError: the process could not be started.
        """
        if options is not None and options.image is not None:
            executable = options.image.python
        parent, child, read_end, write_end = container_pipes()
        try:
            proc = await asyncio.create_subprocess_exec(
                executable,
                "-m",
                module,
                env={**env, "APOTHIC_CONTAINER_FD": str(child.fileno())},
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=write_end,
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            os.close(read_end)
            raise
        finally:
            child.close()
            os.close(write_end)
        return Launched(ExecProcess(proc, StderrTail(read_end)), parent)

    async def close(self) -> None:
        """Nothing to release."""
