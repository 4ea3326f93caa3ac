"""Container entry point: ``python -m apothic._container``.

Environment (set by the worker): ``APOTHIC_CONTAINER_FD`` (the socket to the worker),
``APOTHIC_SOURCE_DIR``, ``APOTHIC_MODULE`` + ``APOTHIC_QUALNAME`` or
``APOTHIC_PICKLED_FUNCTION`` (a file).
"""

from __future__ import annotations

import asyncio
import codecs
import importlib
import inspect
import io
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from apothic import _serialization as ser
from apothic._container import protocol

#: Output is sent to the worker in chunks of at most this many characters...
CHUNK_CHARS = 16 * 1024
#: ...and at least this often while a job runs.
FLUSH_INTERVAL_S = 0.1


class _Current:
    """The input being run now, so output can be attributed to it."""

    job_id = ""
    attempt = 0


class _OutputForwarder(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr: buffers text and sends it as log frames."""

    def __init__(self, channel: protocol.BlockingChannel, stream: str) -> None:
        self._channel = channel
        self._stream = stream
        self._buf: list[str] = []
        self._size = 0
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._buf.append(text)
            self._size += len(text)
            if self._size >= CHUNK_CHARS:
                self._flush_locked()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf)
        self._buf.clear()
        self._size = 0
        if _Current.job_id:
            for i in range(0, len(data), CHUNK_CHARS):
                self._channel.send(
                    (protocol.LOG, _Current.job_id, _Current.attempt, self._stream, data[i : i + CHUNK_CHARS])
                )


#: Written to a forwarded fd to mark "everything before this was sent"; see _FdForwarder.
_SYNC_MARK = b"\x1e\x1fapothic-sync\x1f\x1e"


class _FdForwarder:
    """Sends what C code and subprocesses write to ``fd`` as log frames.

    A thread reads the pipe that replaced ``fd``, so its output lags the writes; ``mark()``
    then ``wait()`` make sure everything written before was sent, so output printed just
    before a function returns is still attributed to its job.
    """

    def __init__(self, channel: protocol.BlockingChannel, fd: int, stream: str) -> None:
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._channel = channel
        self._fd = fd
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._synced = threading.Semaphore(0)
        threading.Thread(target=self._pump, args=(read_end,), name=f"apothic-fd{fd}", daemon=True).start()

    def mark(self) -> bool:
        """Marks the current end of the output; False when the fd no longer takes writes."""
        try:
            os.write(self._fd, _SYNC_MARK)
        except OSError:  # the user's code closed or broke the fd
            return False
        return True

    def wait(self, timeout: float = 1.0) -> None:
        """Waits until everything written before :meth:`mark` was sent."""
        self._synced.acquire(timeout=timeout)

    def _send(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text and _Current.job_id:
            self._channel.send((protocol.LOG, _Current.job_id, _Current.attempt, self._stream, text))

    def _pump(self, read_end: int) -> None:
        held = b""  # a possible beginning of a mark, split across reads
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                data = held + chunk
                while (at := data.find(_SYNC_MARK)) >= 0:
                    self._send(data[:at])
                    data = data[at + len(_SYNC_MARK) :]
                    self._synced.release()
                keep = next(
                    (k for k in range(min(len(_SYNC_MARK) - 1, len(data)), 0, -1) if _SYNC_MARK.startswith(data[-k:])),
                    0,
                )
                held = data[len(data) - keep :]
                self._send(data[: len(data) - keep])


def _load_function() -> Callable[..., Any]:
    source_dir = os.environ.get("APOTHIC_SOURCE_DIR", "")
    if source_dir:
        sys.path.insert(0, source_dir)
        os.chdir(source_dir)
    pickled = os.environ.get("APOTHIC_PICKLED_FUNCTION")
    if pickled:
        import cloudpickle

        with open(pickled, "rb") as fh:
            return cloudpickle.load(fh)  # type: ignore[no-any-return]
    module = importlib.import_module(os.environ["APOTHIC_MODULE"])
    target: Any = module
    for part in os.environ["APOTHIC_QUALNAME"].split("."):
        target = getattr(target, part)
    return getattr(target, "raw_function", target)  # a Function handle wraps the user's function


def _run(func: Callable[..., Any], loop: asyncio.AbstractEventLoop, msg: tuple[Any, ...]) -> tuple[Any, ...]:
    _, job_id, attempt, args_format, args, result_format = msg
    try:
        a, kw = ser.loads_args(args_format, args)
        value = func(*a, **kw)
        if inspect.isawaitable(value):
            value = loop.run_until_complete(value)
        data = ser.dumps_value(value, result_format)
        if len(data) > ser.INLINE_LIMIT:
            raise ser.SerializationError(
                f"the return value is {len(data):,} bytes, over the {ser.INLINE_LIMIT:,}-byte inline limit"
            )
        return (protocol.RESULT, job_id, attempt, True, result_format, data)
    except BaseException as exc:  # noqa: BLE001 - everything the user's code raises goes back
        if isinstance(exc, KeyboardInterrupt):
            raise
        info = ser.capture_exception(exc)
        return (protocol.RESULT, job_id, attempt, False, "", (info.type, info.message, info.traceback, info.pickled))


def main() -> None:
    sock = socket.socket(fileno=int(os.environ["APOTHIC_CONTAINER_FD"]))
    channel = protocol.BlockingChannel(sock)
    try:
        func = _load_function()
    except BaseException:  # noqa: BLE001 - an import failure of any kind is reported
        channel.send((protocol.INIT_FAILED, traceback.format_exc()))
        sys.exit(1)
    stdout = _OutputForwarder(channel, "stdout")
    stderr = _OutputForwarder(channel, "stderr")
    sys.stdout.flush()
    sys.stderr.flush()
    fd_forwarders = (_FdForwarder(channel, 1, "stdout"), _FdForwarder(channel, 2, "stderr"))
    sys.stdout, sys.stderr = stdout, stderr  # type: ignore[assignment]

    def flusher() -> None:
        while True:
            threading.Event().wait(FLUSH_INTERVAL_S)
            stdout.flush()
            stderr.flush()

    threading.Thread(target=flusher, name="apothic-flusher", daemon=True).start()
    loop = asyncio.new_event_loop()
    channel.send((protocol.READY,))
    while True:
        msg = channel.recv()
        if msg is None or msg[0] == protocol.STOP:
            break
        if msg[0] == protocol.RUN:
            _Current.job_id, _Current.attempt = msg[1], msg[2]
            reply = _run(func, loop, msg)
            stdout.flush()
            stderr.flush()
            for forwarder in [f for f in fd_forwarders if f.mark()]:
                forwarder.wait()
            _Current.job_id = ""
            channel.send(reply)
    os._exit(0)


if __name__ == "__main__":
    main()
