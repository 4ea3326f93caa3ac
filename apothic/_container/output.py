"""Output capture inside a container: what each input prints becomes its log events.

Python-level writes go through :class:`OutputForwarder` (attributed with a context
variable, so threads and tasks running other inputs keep their own output apart).
Writes to the file descriptors themselves (C code, subprocesses) go through
:class:`FdForwarder` and are attributed to the input that started last.
"""

from __future__ import annotations

import codecs
import contextvars
import io
import os
import select
import threading
from collections.abc import Callable

from apothic._container import protocol

#: Output is sent to the worker in chunks of at most this many characters...
CHUNK_CHARS = 16 * 1024
#: ...and at least this often while inputs run.
FLUSH_INTERVAL_S = 0.1

Key = tuple[str, int]  # (job id, attempt)

#: The input the current thread or task is running.
current_input: contextvars.ContextVar[Key | None] = contextvars.ContextVar("apothic_input", default=None)


class Running:
    """Inputs running now, in start order (fd-level output goes to the latest)."""

    def __init__(self) -> None:
        self._keys: dict[Key, None] = {}
        self._lock = threading.Lock()

    def add(self, key: Key) -> None:
        with self._lock:
            self._keys[key] = None

    def remove(self, key: Key) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def latest(self) -> Key | None:
        with self._lock:
            return next(reversed(self._keys), None) if self._keys else None


class OutputForwarder(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr: buffers text per input and sends it as log frames."""

    def __init__(self, channel: protocol.BlockingChannel, stream: str) -> None:
        self._channel = channel
        self._stream = stream
        self._buf: list[tuple[Key | None, str]] = []
        self._size = 0
        #: Where output outside any input goes (a web service's own output); None drops it.
        self.default: Key | None = None
        #: Called with each key before its output is sent (a web request reports its start).
        self.before_send: Callable[[Key], None] | None = None
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._buf.append((current_input.get() or self.default, text))
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
        grouped: dict[Key, list[str]] = {}
        for key, text in self._buf:
            if key is not None:
                grouped.setdefault(key, []).append(text)
        self._buf.clear()
        self._size = 0
        for (job_id, attempt), parts in grouped.items():
            if self.before_send is not None:
                self.before_send((job_id, attempt))
            data = "".join(parts)
            for i in range(0, len(data), CHUNK_CHARS):
                self._channel.send((protocol.LOG, job_id, attempt, self._stream, data[i : i + CHUNK_CHARS]))


#: Written to a forwarded fd to mark "everything before this was sent"; see FdForwarder.
_SYNC_MARK = b"\x1e\x1fapothic-sync\x1f\x1e"


class FdForwarder:
    """Sends what C code and subprocesses write to ``fd`` as log frames.

    A thread reads the pipe that replaced ``fd``, so its output lags the writes; ``mark()``
    then ``wait()`` make sure everything written before was sent, so output printed just
    before a function returns is still attributed to its input.
    """

    def __init__(self, channel: protocol.BlockingChannel, fd: int, stream: str, running: Running) -> None:
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._channel = channel
        self._fd = fd
        self._stream = stream
        self._running = running
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._synced = threading.Semaphore(0)
        self._read_end = read_end
        #: Set by the pump from the moment it sees data until that data has been sent.
        self._busy = False
        threading.Thread(target=self._pump, args=(read_end,), name=f"apothic-fd{fd}", daemon=True).start()

    def quiet(self) -> bool:
        """True when everything written so far has been sent: nothing waits in the pipe
        and the pump holds nothing. (Data is always in one of those places until sent.)"""
        if self._busy:
            return False
        readable, _, _ = select.select([self._read_end], [], [], 0)
        return not readable and not self._busy

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
        key = self._running.latest()
        if text and key is not None:
            self._channel.send((protocol.LOG, key[0], key[1], self._stream, text))

    def _pump(self, read_end: int) -> None:
        held = b""  # a possible beginning of a mark, split across reads
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                select.select([read_end], [], [])
                self._busy = True
                chunk = pipe.read(65536)
                if not chunk:
                    return
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
                self._busy = False


def sync_fds(forwarders: tuple[FdForwarder, ...]) -> None:
    """Waits until fd-level output written so far has been sent (at once when there is none)."""
    for forwarder in [f for f in forwarders if not f.quiet() and f.mark()]:
        forwarder.wait()
