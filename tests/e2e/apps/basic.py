"""Well-behaved functions: values, output on both streams, a process id for warm reuse."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import apothic

app = apothic.App("e2e-basic")


@app.function(timeout_s=30)
def square(x: int) -> int:
    return x * x


@app.function(timeout_s=30)
def chatty(n: int) -> int:
    print(f"to stdout {n}")
    print(f"to stderr {n}", file=sys.stderr)
    return n + 1


@app.function(timeout_s=30)
def container_pid() -> int:
    return os.getpid()


@app.function(timeout_s=30)
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@app.function(timeout_s=30)
def slow_chatty(n: int, delay_s: float) -> int:
    """Prints, pauses, prints: a job that is still running when a watcher subscribes."""
    print(f"before {n}")
    time.sleep(delay_s)
    print(f"after {n}", file=sys.stderr)
    return n


@app.function(timeout_s=30, max_containers=1)
def serial(delay_s: float) -> int:
    """One container at most: concurrent calls queue for it."""
    time.sleep(delay_s)
    return os.getpid()


@app.function(timeout_s=30)
def fd_output(n: int) -> int:
    """Writes below Python's sys.stdout, as C code and subprocesses do, right up to the return."""
    subprocess.run([sys.executable, "-c", f"print('from a subprocess {n}')"], check=True)
    os.write(2, f"raw stderr {n}\n".encode())
    os.write(1, ("€" * 30_000).encode())  # 90 kB in one write: pipe reads split characters
    return n
