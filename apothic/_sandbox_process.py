"""A command running in a sandbox: its output streams and its exit (see :meth:`Sandbox.exec`)."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

from apothic._sandbox_models import ExecExit
from apothic._sync import iter_sync, run_sync

T = TypeVar("T", str, bytes)


class _Core:
    """Reads one exec stream on the loop that started it, splitting stdout from stderr."""

    def __init__(
        self,
        stream: AsyncIterator[tuple[str, bytes] | ExecExit],
        stdin: asyncio.Queue[tuple[bytes, bool]] | None = None,
    ) -> None:
        #: Where streamed stdin goes (None: the command's stdin is already closed).
        self.stdin = stdin
        self.queues: dict[str, asyncio.Queue[bytes | None]] = {"stdout": asyncio.Queue(), "stderr": asyncio.Queue()}
        self.exit: ExecExit | None = None
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self.task = asyncio.ensure_future(self._pump(stream))

    async def _pump(self, stream: AsyncIterator[tuple[str, bytes] | ExecExit]) -> None:
        try:
            async for item in stream:
                if isinstance(item, ExecExit):
                    self.exit = item
                else:
                    self.queues[item[0]].put_nowait(item[1])
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits or reads
            self.error = exc
        finally:
            for queue in self.queues.values():
                queue.put_nowait(None)
            self.done.set()

    async def chunks(self, name: str) -> AsyncIterator[bytes]:
        queue = self.queues[name]
        while (data := await queue.get()) is not None:
            yield data
        queue.put_nowait(None)  # a second reader ends at once too
        if self.error is not None:
            raise self.error

    async def wait(self) -> ExecExit:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.exit is not None
        return self.exit


class SandboxStream(Generic[T]):
    """One output stream of a sandbox command: iterate it (blocking or ``async for``) to get
    chunks as they come, or ``read()`` it whole. Text streams decode UTF-8.

    Each chunk is delivered once: read a stream from one place.
    """

    def __init__(self, core: _Core, name: str, text: bool) -> None:
        self._core = core
        self._name = name
        self._text = text
        self.aio: _StreamAio[T] = _StreamAio(self)

    async def _chunks(self) -> AsyncIterator[T]:
        decoder = codecs.getincrementaldecoder("utf-8")("replace") if self._text else None
        async for data in self._core.chunks(self._name):
            if decoder is None:
                yield data  # type: ignore[misc]
            elif piece := decoder.decode(data):
                yield piece  # type: ignore[misc]
        if decoder is not None and (rest := decoder.decode(b"", final=True)):
            yield rest  # type: ignore[misc]

    def __aiter__(self) -> AsyncIterator[T]:
        return self._chunks()

    def __iter__(self) -> Iterator[T]:
        return iter_sync(self._chunks(), f"process.{self._name}")

    def read(self) -> T:
        """Everything the stream has left, once the command has closed it (see ``aio.read``)."""
        return run_sync(self.aio.read(), f"process.{self._name}.read()")


class _StreamAio(Generic[T]):
    def __init__(self, stream: SandboxStream[T]) -> None:
        self._stream: SandboxStream[T] = stream

    async def read(self) -> T:
        """Everything the stream has left, once the command has closed it."""
        parts = [p async for p in self._stream._chunks()]
        empty: T = "" if self._stream._text else b""  # type: ignore[assignment]
        return empty.join(parts)


class SandboxStdin:
    """The standard input of a command started with ``open_stdin=True``: ``write`` sends
    bytes (or UTF-8 text) as they come, ``write_eof`` closes it. Async forms on ``.aio``."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._closed = False
        self.aio = _StdinAio(self)

    def _put(self, data: bytes, eof: bool) -> None:
        from apothic.exceptions import InvalidConfigError

        if self._closed:
            raise InvalidConfigError("this command's stdin is already closed")
        assert self._core.stdin is not None
        self._closed = eof
        self._core.stdin.put_nowait((data, eof))

    def write(self, data: bytes | str) -> None:
        """Sends ``data`` to the command's stdin."""
        run_sync(self.aio.write(data), "process.stdin.write()")

    def drain(self) -> None:
        """Returns once what was written is on its way (writes are queued in order)."""

    def write_eof(self) -> None:
        """Closes the command's stdin (it reads end of file after what was written)."""
        run_sync(self.aio.write_eof(), "process.stdin.write_eof()")

    close = write_eof


class _StdinAio:
    def __init__(self, stdin: SandboxStdin) -> None:
        self._stdin = stdin

    async def write(self, data: bytes | str) -> None:
        """Sends ``data`` to the command's stdin."""
        self._stdin._put(data.encode() if isinstance(data, str) else bytes(data), False)

    async def write_eof(self) -> None:
        """Closes the command's stdin."""
        self._stdin._put(b"", True)


class SandboxProcess(Generic[T]):
    """A command started by :meth:`Sandbox.exec`.

    Attributes:
        stdout: the command's standard output, as it comes.
        stderr: the command's standard error, as it comes.
        stdin: its standard input, when started with ``open_stdin=True``.

    Example:
        ```python
        proc = sb.exec("python", "-c", "print('hi')")
        for line in proc.stdout:
            print(line, end="")
        assert proc.wait() == 0
        ```
    """

    def __init__(self, core: _Core, text: bool) -> None:
        self._core = core
        self.stdout: SandboxStream[T] = SandboxStream(core, "stdout", text)
        self.stderr: SandboxStream[T] = SandboxStream(core, "stderr", text)
        #: The command's stdin when it was started with ``open_stdin=True``, else None.
        self.stdin: SandboxStdin | None = SandboxStdin(core) if core.stdin is not None else None
        self.aio: _ProcessAio[T] = _ProcessAio(self)

    @property
    def returncode(self) -> int | None:
        """The exit code once the command has ended, else None."""
        return self._core.exit.exit_code if self._core.exit is not None else None

    @property
    def timed_out(self) -> bool:
        """Whether the command was killed for running past its timeout."""
        return self._core.exit is not None and self._core.exit.timed_out

    @property
    def message(self) -> str:
        """The sandbox's note on how the command ended (not found, killed…); often empty."""
        return self._core.exit.message if self._core.exit is not None else ""

    def wait(self) -> int:
        """Waits for the command to end and returns its exit code (see ``aio.wait``).

        Raises:
            SandboxTerminatedError: the sandbox ended before or while the command ran.
        """
        return run_sync(self.aio.wait(), "process.wait()")


class _ProcessAio(Generic[T]):
    def __init__(self, process: SandboxProcess[T]) -> None:
        self._process: SandboxProcess[T] = process

    async def wait(self) -> int:
        """Waits for the command to end and returns its exit code."""
        return (await self._process._core.wait()).exit_code
