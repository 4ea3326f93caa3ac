"""The job trail of a web service's HTTP requests.

Each HTTP request an ASGI service (``@app.asgi``, ``@app.wsgi_app``, ``@app.endpoint``,
``@app.fastapi_endpoint``) answers becomes a job of the service's function: the container
tells the worker when a request starts (``REQUEST_START``) and ends (``REQUEST_ENDS``, with
the response status and what the handler raised), and what the handler prints in between
is that job's output; the response carries the job's id in an ``x-apothic-job-id`` header.
The worker reports starts and ends in batches and the control plane writes the jobs behind
the responses, so a request waits for none of it. A ``web_server`` serves its port itself
and leaves no trail.

The job id is derived from the container id and the request's number
(:func:`request_job_id`), so output can be attributed before the control plane has seen
the start. A quick request that prints nothing costs one frame (its end carries its
start); one that prints, or runs past ``START_AFTER_S``, reports its start first. Ends
travel in batches (``END_BATCH_S``), so a busy service sends one frame per batch.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from apothic import _serialization as ser
from apothic._container import protocol
from apothic._container.output import Key, OutputForwarder, Running, current_input

#: A request still running after this many seconds is reported as started (a quicker one
#: only with its end, in one frame).
START_AFTER_S = 0.05
#: Request ends are reported together, at most this long after the first of them.
END_BATCH_S = 0.05
#: The response header that names a request's job.
JOB_HEADER = b"x-apothic-job-id"
#: Longest path and query string a request's job records.
MAX_TARGET_CHARS = 2048

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_job_id(container_id: str, number: int) -> str:
    """The job id of a container's ``number``-th request: ``jobs:<container key>r<number>``."""
    return f"jobs:{container_id.partition(':')[2]}r{number}"


def is_request_job_id(job_id: str) -> bool:
    """Whether ``job_id`` names a web request's job (other job ids are hex after ``jobs:``)."""
    return "r" in job_id.partition(":")[2]


class RequestTrail:
    """Wraps an ASGI app so each HTTP request it answers is reported as a job."""

    def __init__(
        self,
        channel: protocol.BlockingChannel,
        outputs: tuple[OutputForwarder, OutputForwarder],
        running: Running,
        container_id: str,
    ) -> None:
        self._channel = channel
        self._outputs = outputs
        self._running = running
        self._container_id = container_id
        self._numbers = itertools.count(1)
        #: Starts not reported yet: job id -> (number, method, path, query, started at).
        self._unsent: dict[str, tuple[int, str, str, str, float]] = {}
        #: Ends not reported yet: (number, status, error, its start when never reported, seconds).
        self._ends: list[tuple[int, int, tuple[str, str, str, bytes] | None, tuple[Any, ...] | None, float]] = []
        self._lock = threading.Lock()
        for out in outputs:
            out.before_send = self.send_start

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app``, reporting its HTTP requests (websockets and lifespan pass untouched)."""

        async def trail(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            await self._answer(app, scope, receive, send)

        return trail

    async def _answer(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        number = next(self._numbers)
        job_id = request_job_id(self._container_id, number)
        key = (job_id, 1)
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        start = (
            number,
            str(scope.get("method", "")),
            str(scope.get("path", ""))[:MAX_TARGET_CHARS],
            query[:MAX_TARGET_CHARS],
            time.time(),
        )
        self._unsent[job_id] = start
        began = time.monotonic()
        timer = asyncio.get_running_loop().call_later(START_AFTER_S, self.send_start, key)
        status = 0
        job_header = (JOB_HEADER, job_id.encode())

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), job_header]}
            await send(message)

        token = current_input.set(key)
        self._running.add(key)
        error: tuple[str, str, str, bytes] | None = None
        try:
            await app(scope, receive, send_status)
        except Exception as exc:
            info = ser.capture_exception(exc)
            error = (info.type, info.message, info.traceback, info.pickled)
            sys.stderr.write(info.traceback)
            if not status:
                raise  # the server answers 500 for it
            # Answered already (an error handler sent the 500): the traceback is in the
            # request's output and its job; nothing is left for the server to log.
        finally:
            timer.cancel()
            current_input.reset(token)
            self._running.remove(key)
            for out in self._outputs:
                out.flush()  # the request's output (after its start) reaches the worker first
            with self._lock:
                unsent = self._unsent.pop(job_id, None)
                self._ends.append((number, status, error, unsent, time.monotonic() - began))
                first = len(self._ends) == 1
            if first:  # ends travel together, one frame per END_BATCH_S
                asyncio.get_running_loop().call_later(END_BATCH_S, self.send_ends)

    def send_ends(self) -> None:
        """Reports the ends of requests answered since the last call, in one frame."""
        with self._lock:
            ends, self._ends = self._ends, []
            if ends:
                self._channel.send((protocol.REQUEST_ENDS, ends))

    def send_start(self, key: Key) -> None:
        """Reports the start of request ``key`` now, unless it was reported already (a
        request that prints, or runs longer than START_AFTER_S, is reported as it runs;
        a quick quiet one only with its end)."""
        with self._lock:
            start = self._unsent.pop(key[0], None)
            if start is not None:
                self._channel.send((protocol.REQUEST_START, *start))
