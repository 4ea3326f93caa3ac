"""Frames between a worker and its container process: a 4-byte length, then a pickle of a
tuple. Both ends are this package's code, so plain pickle is safe here.

Worker → container: ``(RUN, job_id, attempt, args_format, args, result_format)``,
``(CANCEL, job_id)``, ``(STOP,)``.

Container → worker: ``(READY,)`` (``(READY, port)`` from a web service), ``(INIT_FAILED, traceback)``,
``(LOG, job_id, attempt, stream, text)``, ``(YIELD, job_id, attempt, seq, format, data)``,
``(RESULTS, [(job_id, attempt, ok, format, payload), ...])`` where ``payload`` is the
encoded value when ``ok`` and ``(type, message, traceback, pickled)`` otherwise.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from typing import Any

HEADER = struct.Struct("!I")

#: Extra inputs a serial container may hold beyond the one it runs (map items only), so
#: short inputs flow without a round trip each. The worker times each one from when the
#: previous one's result arrived, since a serial container runs them in order.
PREFETCH = 32


def prefetch_for(*, max_inputs: int, batch_max_size: int, is_async: bool, is_generator: bool) -> int:
    """How many extra inputs a container of this kind may hold."""
    serial = max_inputs <= 1 and not batch_max_size and not is_async and not is_generator
    return PREFETCH if serial else 0


# Worker -> container
RUN = "run"
CANCEL = "cancel"
STOP = "stop"
# Container -> worker
READY = "ready"
INIT_FAILED = "init_failed"
LOG = "log"
YIELD = "yield"
RESULTS = "results"
#: A web service began / finished answering an HTTP request (see request_trail).
REQUEST_START = "request_start"
REQUEST_ENDS = "request_ends"


def encode(message: tuple[Any, ...]) -> bytes:
    """One frame."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def split_frames(buffer: bytearray) -> list[tuple[Any, ...]]:
    """Removes every complete frame from the front of ``buffer`` and decodes it."""
    frames = []
    offset = 0
    size_of_header = HEADER.size
    while len(buffer) - offset >= size_of_header:
        (size,) = HEADER.unpack_from(buffer, offset)
        end = offset + size_of_header + size
        if end > len(buffer):
            break
        frames.append(pickle.loads(memoryview(buffer)[offset + size_of_header : end]))
        offset = end
    del buffer[:offset]
    return frames


class BlockingChannel:
    """The container's end: blocking reads of whole batches of frames, thread-safe writes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        with self._lock:
            self._sock.sendall(data)

    def recv_batch(self) -> list[tuple[Any, ...]] | None:
        """Blocks until at least one frame arrived; returns all complete frames, or None
        when the worker closed the socket."""
        while True:
            frames = split_frames(self._buffer)
            if frames:
                return frames
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
