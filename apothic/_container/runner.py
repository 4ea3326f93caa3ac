"""Running inputs inside a container: one at a time, concurrently, or in batches.

- serial (the default): each input runs in the main thread, in arrival order;
- threads: a sync function with ``max_inputs > 1`` runs inputs in a thread pool;
- async: an async function runs every input as a task on one event-loop thread (so a
  cancelled or timed-out input is cancelled without touching the others);
- batched: inputs are grouped up to ``max_batch_size`` or ``wait_ms`` and the function is
  called once per group with a list per parameter.

Generators stream their items back as ``YIELD`` frames as they are produced.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from apothic import _serialization as ser
from apothic._container import buckets, protocol
from apothic._container.output import FdForwarder, Key, OutputForwarder, Running, current_input, sync_fds

#: A result is held back at most this long to share a frame with the next ones.
RESULT_HOLD_S = 0.002

ResultTuple = tuple[str, int, bool, str, Any]


@dataclass(frozen=True)
class RunnerConfig:
    """How this container runs inputs (from the function's spec, via the environment)."""

    max_inputs: int = 1
    batch_max_size: int = 0
    batch_wait_ms: float = 0.0


class InputCancelled(BaseException):  # noqa: N818 - mirrors asyncio.CancelledError
    """Raised into nothing: marks an input cancelled before it started."""


def _error(exc: BaseException) -> tuple[str, str, str, bytes]:
    info = ser.capture_exception(exc)
    return (info.type, info.message, info.traceback, info.pickled)


def _encode(job_id: str, attempt: int, value: Any, result_format: str) -> ResultTuple:
    data = ser.dumps_value(value, result_format)
    if len(data) > ser.INLINE_LIMIT:
        raise ser.SerializationError(
            f"the return value is {len(data):,} bytes, over the {ser.INLINE_LIMIT:,}-byte inline limit"
        )
    return (job_id, attempt, True, result_format, data)


class Runner:
    """Owns the function and the channel; ``handle(frames)`` is called by the main loop."""

    def __init__(
        self,
        func: Callable[..., Any],
        channel: protocol.BlockingChannel,
        outputs: tuple[OutputForwarder, OutputForwarder],
        fds: tuple[FdForwarder, ...],
        running: Running,
        config: RunnerConfig,
    ) -> None:
        self.func = func
        self.channel = channel
        self.outputs = outputs
        self.fds = fds
        self.running = running
        self.config = config
        self.is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[str, asyncio.Future[Any] | Future[Any]] = {}
        self._cancelled: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._batches: queue.Queue[tuple[Any, ...] | None] | None = None
        self._lock = threading.Lock()
        self._held: _HeldResults | None = None
        self._signature: inspect.Signature | None = None
        if self.is_async:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="apothic-loop", daemon=True).start()
        if config.batch_max_size > 0:
            self._batches = queue.Queue()
            threading.Thread(target=self._batch_loop, name="apothic-batcher", daemon=True).start()
        elif not self.is_async and config.max_inputs > 1:
            self._pool = ThreadPoolExecutor(config.max_inputs, thread_name_prefix="apothic-input")
        elif not self.is_async:
            self._held = _HeldResults(self._send_results)

    # -- the main loop's entry ----------------------------------------------------------

    def handle(self, frames: list[tuple[Any, ...]]) -> bool:
        """Dispatches a batch of frames; returns False when the container must stop."""
        last = len(frames) - 1
        for i, msg in enumerate(frames):
            kind = msg[0]
            if kind == protocol.RUN:
                if self._batches is not None:
                    self._batches.put(msg)
                elif self._loop is not None:
                    self._start_async(msg)
                elif self._pool is not None:
                    self._start_thread(msg)
                else:
                    assert self._held is not None
                    # The last frame's result is sent right below; only earlier ones wait.
                    self._held.add(self._run_inline(msg), arm=i < last)
            elif kind == protocol.CANCEL:
                self._cancel(msg[1])
            elif kind == protocol.STOP:
                if self._held is not None:
                    self._held.flush()
                return False
        if self._held is not None:
            self._held.flush()
        return True

    def _send_results(self, results: list[ResultTuple]) -> None:
        if results and buckets.active():
            results = _synced(results)  # bucket mounts: uploaded before the caller sees a result
        if results:
            self.channel.send((protocol.RESULTS, results))

    # -- one input ----------------------------------------------------------------------

    def _begin(self, key: Key) -> contextvars.Token[Key | None]:
        self.running.add(key)
        return current_input.set(key)

    def _end(self, key: Key, token: contextvars.Token[Key | None]) -> None:
        for out in self.outputs:
            out.flush()
        if self.running.latest() == key:
            sync_fds(self.fds)
        self.running.remove(key)
        current_input.reset(token)

    def _yield(self, job_id: str, attempt: int, seq: int, value: Any, result_format: str) -> None:
        for out in self.outputs:
            out.flush()
        self.channel.send((protocol.YIELD, job_id, attempt, seq, result_format, ser.dumps_value(value, result_format)))

    def _run_inline(self, msg: tuple[Any, ...]) -> ResultTuple:
        _, job_id, attempt, args_format, args, result_format = msg
        token = self._begin((job_id, attempt))
        try:
            a, kw = ser.loads_args(args_format, args)
            value = self.func(*a, **kw)
            if inspect.isgenerator(value):
                seq = 0
                for item in value:
                    seq += 1
                    self._yield(job_id, attempt, seq, item, result_format)
                value = None
            return _encode(job_id, attempt, value, result_format)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - everything the user's code raises goes back
            return (job_id, attempt, False, "", _error(exc))
        finally:
            self._end((job_id, attempt), token)

    def _start_thread(self, msg: tuple[Any, ...]) -> None:
        assert self._pool is not None
        job_id = msg[1]
        future = self._pool.submit(contextvars.copy_context().run, self._thread_input, msg)
        with self._lock:
            self._tasks[job_id] = future
        future.add_done_callback(lambda _f: self._forget(job_id))

    def _thread_input(self, msg: tuple[Any, ...]) -> None:
        result = self._run_inline(msg)
        with self._lock:
            dropped = result[0] in self._cancelled
            self._cancelled.discard(result[0])
        if not dropped:
            self._send_results([result])

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._tasks.pop(job_id, None)

    def _start_async(self, msg: tuple[Any, ...]) -> None:
        assert self._loop is not None
        job_id = msg[1]
        future = asyncio.run_coroutine_threadsafe(self._async_input(msg), self._loop)
        with self._lock:
            self._tasks[job_id] = future
        future.add_done_callback(lambda _f: self._forget(job_id))

    async def _async_input(self, msg: tuple[Any, ...]) -> None:
        _, job_id, attempt, args_format, args, result_format = msg
        token = self._begin((job_id, attempt))
        try:
            a, kw = ser.loads_args(args_format, args)
            value = self.func(*a, **kw)
            if inspect.isasyncgen(value):
                seq = 0
                async for item in value:
                    seq += 1
                    self._yield(job_id, attempt, seq, item, result_format)
                value = None
            elif inspect.isawaitable(value):
                value = await value
            result = _encode(job_id, attempt, value, result_format)
        except asyncio.CancelledError:
            return  # the worker already reported the input as cancelled or timed out
        except BaseException as exc:  # noqa: BLE001
            result = (job_id, attempt, False, "", _error(exc))
        finally:
            self._end((job_id, attempt), token)
        self._send_results([result])

    def _cancel(self, job_id: str) -> None:
        with self._lock:
            task = self._tasks.get(job_id)
            if task is not None and self._pool is not None:
                self._cancelled.add(job_id)  # a thread cannot be interrupted: drop its result
        if task is not None:
            task.cancel()

    # -- batches ------------------------------------------------------------------------

    def _batch_loop(self) -> None:
        assert self._batches is not None
        wait_s = self.config.batch_wait_ms / 1000
        while True:
            first = self._batches.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + wait_s
            while len(batch) < self.config.batch_max_size:
                left = deadline - time.monotonic()
                try:
                    item = self._batches.get(timeout=left) if left > 0 else self._batches.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._batches.put(None)
                    break
                batch.append(item)
            self._send_results(self._run_batch(batch))

    def _run_batch(self, batch: list[tuple[Any, ...]]) -> list[ResultTuple]:
        keys = [(msg[1], msg[2]) for msg in batch]
        results: list[ResultTuple | None] = [None] * len(batch)
        decoded: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = []
        for i, msg in enumerate(batch):
            try:
                decoded.append((i, *self._by_name(*ser.loads_args(msg[3], msg[4]))))
            except BaseException as exc:  # noqa: BLE001
                results[i] = (msg[1], msg[2], False, "", _error(exc))
        if decoded:
            shape = (len(decoded[0][1]), tuple(sorted(decoded[0][2])))
            for i, a, kw in decoded[1:]:
                if (len(a), tuple(sorted(kw))) != shape:
                    err = TypeError(
                        f"a @batched call must pass the same arguments as the others in its batch: got "
                        f"{len(a)} positional and {sorted(kw)} keyword, expected {shape[0]} and {list(shape[1])}"
                    )
                    results[i] = (batch[i][1], batch[i][2], False, "", _error(err))
            group = [(i, a, kw) for i, a, kw in decoded if results[i] is None]
            if group:
                self._call_batch(batch, keys, group, results)
        return [r for r in results if r is not None]

    def _by_name(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A batched call's arguments keyed by parameter name, so that callers passing the
        same parameters positionally or by keyword share a batch.

        Raises:
            TypeError: the arguments do not fit the function's signature.
        """
        if self._signature is None:
            try:
                self._signature = inspect.signature(self.func)
            except (TypeError, ValueError):
                return args, kwargs
        kinds = {p.kind for p in self._signature.parameters.values()}
        if not kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}:
            return args, kwargs  # *args, **kwargs or positional-only: keep the call's own shape
        return (), dict(self._signature.bind(*args, **kwargs).arguments)

    def _call_batch(
        self,
        batch: list[tuple[Any, ...]],
        keys: list[Key],
        group: list[tuple[int, tuple[Any, ...], dict[str, Any]]],
        results: list[ResultTuple | None],
    ) -> None:
        columns = [list(col) for col in zip(*(a for _, a, _ in group), strict=True)] if group[0][1] else []
        kwargs = {name: [kw[name] for _, _, kw in group] for name in group[0][2]}
        first_key = keys[group[0][0]]
        token = self._begin(first_key)
        try:
            values = self.func(*columns, **kwargs)
            if inspect.isawaitable(values):
                assert self._loop is not None
                values = asyncio.run_coroutine_threadsafe(_await(values), self._loop).result()
            values = list(values)
            if len(values) != len(group):
                raise ValueError(
                    f"@batched function {getattr(self.func, '__name__', '?')} returned {len(values)} results "
                    f"for a batch of {len(group)} inputs; it must return one result per input, in order"
                )
            for (i, _, _), value in zip(group, values, strict=True):
                msg = batch[i]
                try:
                    results[i] = _encode(msg[1], msg[2], value, msg[5])
                except BaseException as exc:  # noqa: BLE001
                    results[i] = (msg[1], msg[2], False, "", _error(exc))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            error = _error(exc)
            for i, _, _ in group:
                results[i] = (batch[i][1], batch[i][2], False, "", error)
        finally:
            self._end(first_key, token)


class _HeldResults:
    """Results of a serial container's inputs, held back at most :data:`RESULT_HOLD_S` so
    quick ones share a frame.

    A thread sends them once the oldest has waited that long: a result must never wait for
    the next input to finish, since the worker times that input from this result's arrival.
    """

    def __init__(self, send: Callable[[list[ResultTuple]], None]) -> None:
        self._send = send
        self._items: list[ResultTuple] = []
        self._lock = threading.Lock()
        self._held = threading.Event()
        threading.Thread(target=self._flush_held, name="apothic-results", daemon=True).start()

    def add(self, result: ResultTuple, *, arm: bool = True) -> None:
        """Holds a result; ``arm`` starts the clock that sends it (off when the caller
        flushes right away)."""
        with self._lock:
            self._items.append(result)
            first = len(self._items) == 1
        if first and arm:
            self._held.set()

    def flush(self) -> None:
        """Sends what is held now (in order: sends happen under the lock)."""
        with self._lock:
            items, self._items = self._items, []
            if items:
                self._send(items)

    def _flush_held(self) -> None:
        while True:
            self._held.wait()
            time.sleep(RESULT_HOLD_S)
            self._held.clear()
            self.flush()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _synced(results: list[ResultTuple]) -> list[ResultTuple]:
    """Syncs the container's bucket mounts; a failed sync fails the calls that succeeded."""
    error = buckets.sync_all()
    if error is None:
        return results
    info = _error(error)
    return [r if not r[2] else (r[0], r[1], False, "", info) for r in results]
