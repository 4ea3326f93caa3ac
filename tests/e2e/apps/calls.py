"""Functions for every way of calling: maps, generators, retries, concurrency and batching.

Functions that must see state across attempts or calls (retries, gates) get a path under
the test's ``tmp_path``: containers run on this machine.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import apothic

app = apothic.App("e2e-calls")


class CallError(Exception):
    """A user-defined exception; it must come back as itself."""


def _count(path: str) -> int:
    """Appends one line to ``path`` and returns how many lines it now has (the attempt)."""
    with open(path, "a") as f:
        f.write("x\n")
    return len(Path(path).read_text().splitlines())


def _wait_for_file(path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s}s")
        time.sleep(0.01)


# -- maps ------------------------------------------------------------------------------


@app.function(timeout_s=30, max_containers=2)
def square(x: int) -> int:
    return x * x


@app.function(timeout_s=30, max_containers=2)
def add(a: int, b: int) -> int:
    return a + b


@app.function(timeout_s=30, max_containers=2)
def scaled(x: int, factor: int = 1, offset: int = 0) -> int:
    return x * factor + offset


@app.function(timeout_s=30, max_containers=2)
def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise CallError(f"input {x} is bad")
    return x


@app.function(timeout_s=30, max_containers=2)
def touch(directory: str, name: str) -> None:
    Path(directory, name).write_text(name)


@app.function(timeout_s=30, max_containers=1)
def nap(x: int, delay_s: float) -> int:
    time.sleep(delay_s)
    return x


@app.function(timeout_s=30, max_containers=1)
def listed(x: int) -> int:
    """Mapped only by the listing test, so its jobs are that test's alone."""
    if x < 0:
        raise CallError("negative")
    return x


# -- generators ------------------------------------------------------------------------


@app.function(timeout_s=30)
def count_up(n: int) -> Iterator[int]:
    yield from range(n)


@app.function(timeout_s=30)
def gated(gate: str) -> Iterator[str]:
    """Yields one item, then waits for the caller to create ``gate`` before the rest."""
    yield "first"
    _wait_for_file(gate, 20)
    yield "second"
    yield "third"


@app.function(timeout_s=30)
async def async_count_up(n: int, delay_s: float) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(delay_s)
        yield i


@app.function(timeout_s=30)
async def async_gated(gate: str) -> AsyncIterator[str]:
    yield "first"
    while not os.path.exists(gate):
        await asyncio.sleep(0.01)
    yield "second"


@app.function(timeout_s=30)
def breaks_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise CallError(f"broke after {n} items")


@app.function(timeout_s=30)
async def async_breaks_after(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i
    raise CallError(f"async broke after {n} items")


# -- retries ---------------------------------------------------------------------------


@app.function(timeout_s=30, retries=apothic.Retries(max_retries=3, initial_delay=0.2, backoff_coefficient=2.0))
def flaky(counter: str, failures: int) -> int:
    """Fails its first ``failures`` attempts, then returns the attempt number."""
    attempt = _count(counter)
    print(f"attempt {attempt}")
    if attempt <= failures:
        raise CallError(f"attempt {attempt} failed")
    return attempt


@app.function(timeout_s=30, retries=2)
def flaky_int_retries(counter: str) -> int:
    """``retries=2``: the default backoff (1 s, then 2 s); succeeds on the second attempt."""
    attempt = _count(counter)
    if attempt == 1:
        raise CallError("first attempt fails")
    return attempt


@app.function(timeout_s=30, retries=apothic.Retries(max_retries=2, initial_delay=0.05))
def always_fails(counter: str) -> None:
    attempt = _count(counter)
    raise CallError(f"attempt {attempt} failed")


@app.function(timeout_s=1, retries=apothic.Retries(max_retries=1, initial_delay=0.05))
def slow_first_attempt(counter: str) -> int:
    """The first attempt runs past the timeout; the retry is quick."""
    attempt = _count(counter)
    if attempt == 1:
        time.sleep(20)
    return attempt


@app.function(timeout_s=1, retries=apothic.Retries(max_retries=1, initial_delay=0.05))
def always_slow(counter: str) -> None:
    _count(counter)
    time.sleep(20)


@app.function(timeout_s=60, retries=apothic.Retries(max_retries=2, initial_delay=0.05))
def hangs_first_attempt(counter: str) -> tuple[int, int]:
    """The first attempt blocks (until its worker is killed); later ones return at once."""
    attempt = _count(counter)
    if attempt == 1:
        time.sleep(50)
    return attempt, os.getpid()


# -- concurrency and batching ----------------------------------------------------------


@app.function(timeout_s=30)
@apothic.concurrent(max_inputs=8)
async def async_nap(delay_s: float) -> int:
    await asyncio.sleep(delay_s)
    return os.getpid()


@app.function(timeout_s=30)
@apothic.concurrent(max_inputs=4)
def thread_nap(delay_s: float) -> tuple[int, int, float, float]:
    """Returns where it ran (process, thread) and when (wall clock: the same machine's)."""
    started = time.time()
    time.sleep(delay_s)
    return os.getpid(), threading.get_ident(), started, time.time()


@app.function(timeout_s=30, concurrent_requests=3)
def requests_nap(delay_s: float) -> tuple[int, int, float, float]:
    started = time.time()
    time.sleep(delay_s)
    return os.getpid(), threading.get_ident(), started, time.time()


@app.function(timeout_s=30)
@apothic.concurrent(max_inputs=8)
async def async_chatter(marker: str, gate: str) -> str:
    """Prints its marker while the others print theirs (all wait on one gate)."""
    print(f"{marker} begins")
    while not os.path.exists(gate):
        await asyncio.sleep(0.01)
    for i in range(3):
        print(f"{marker} line {i}")
        await asyncio.sleep(0.01)
    return marker


@app.function(timeout_s=30)
@apothic.concurrent(max_inputs=4)
def thread_chatter(marker: str, gate: str) -> str:
    print(f"{marker} begins")
    _wait_for_file(gate, 20)
    for i in range(3):
        print(f"{marker} line {i}")
        time.sleep(0.01)
    return marker


@app.function(timeout_s=30)
@apothic.batched(max_batch_size=4, wait_ms=300)
def batch_sizes(xs: list[int]) -> list[tuple[int, int]]:
    """Each caller gets its own input times ten, and the size of the batch it came in."""
    return [(x * 10, len(xs)) for x in xs]


@app.function(timeout_s=30)
@apothic.batched(max_batch_size=4, wait_ms=100)
async def async_batch_sizes(xs: list[int], ys: list[int]) -> list[tuple[int, int]]:
    await asyncio.sleep(0)
    return [(x + y, len(xs)) for x, y in zip(xs, ys, strict=True)]


@app.function(timeout_s=30)
@apothic.batched(max_batch_size=4, wait_ms=100)
def batch_drops_one(xs: list[int]) -> list[int]:
    return xs[:-1]


@app.function(timeout_s=1)
@apothic.concurrent(max_inputs=4)
async def async_nap_or_overrun(delay_s: float) -> int:
    """Inputs that run past the timeout are cancelled inside the container; the others go on."""
    await asyncio.sleep(delay_s)
    return os.getpid()


@app.function(timeout_s=1, max_containers=1)
def nap_within_timeout(delay_s: float) -> float:
    """Each input finishes within the timeout; a map queues several on one container."""
    time.sleep(delay_s)
    return delay_s


@app.function(timeout_s=30, retries=apothic.Retries(max_retries=2, initial_delay=0.05))
def gen_fails_before_yielding(counter: str) -> Iterator[int]:
    """Attempt 1 fails before its first item (so it is retried); attempt 2 yields."""
    attempt = _count(counter)
    if attempt == 1:
        raise CallError("attempt 1 failed before yielding")
    yield attempt
    yield attempt * 10


@app.function(timeout_s=30, retries=apothic.Retries(max_retries=2, initial_delay=0.05))
def gen_fails_after_yielding(counter: str) -> Iterator[int]:
    """Fails after an item: the caller already has it, so it is not retried."""
    yield _count(counter)
    raise CallError("failed after yielding")


@app.function(timeout_s=30, max_containers=1)
def crash_on(x: int, bad: int) -> int:
    """Kills its own container on the bad input (after a moment's work: the results of
    the inputs before it have left by then)."""
    if x == bad:
        time.sleep(0.05)
        os._exit(3)
    return x
