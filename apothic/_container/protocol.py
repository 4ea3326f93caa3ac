"""Frames between a worker and its container process: a 4-byte length, then a pickle of a
tuple. Both ends are this package's code, so plain pickle is safe here."""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from typing import Any

HEADER = struct.Struct("!I")

# Worker -> container
RUN = "run"
STOP = "stop"
# Container -> worker
READY = "ready"
INIT_FAILED = "init_failed"
LOG = "log"
RESULT = "result"


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class BlockingChannel:
    """The container's end: blocking reads, thread-safe writes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        with self._lock:
            self._sock.sendall(data)

    def recv(self) -> tuple[Any, ...] | None:
        header = self._file.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        (size,) = HEADER.unpack(header)
        body = self._file.read(size)
        if len(body) < size:
            return None
        return pickle.loads(body)  # type: ignore[no-any-return]
