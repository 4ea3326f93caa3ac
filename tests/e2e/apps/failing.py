"""Functions that misbehave in every way the issue's "bad input" section lists."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import apothic

app = apothic.App("e2e-failing")


class CustomError(Exception):
    """A user-defined exception type; it must come back as itself."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


@app.function(timeout_s=30)
def raise_custom(message: str) -> None:
    raise CustomError(message, 42)


@app.function(timeout_s=1)
def overrun() -> None:
    time.sleep(60)


@app.function(timeout_s=60)
def print_ten_megabytes() -> str:
    line = "x" * 1023
    for _ in range(10 * 1024):
        print(line)
    print("the end", file=sys.stderr)
    return "done"


@app.function(timeout_s=30)
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.function(timeout_s=120)
def sleep_forever() -> None:
    print("started", flush=True)
    time.sleep(600)


@app.function(timeout_s=30)
def add(a: int, b: int) -> int:
    return a + b


@app.function(timeout_s=30)
def echo(value: object) -> object:
    return value


@app.function(timeout_s=30)
def big_result(size: int) -> bytes:
    return b"x" * size


class NeedsTwoArguments(Exception):
    """Pickles, but cannot be re-created from its pickle: it comes back as RemoteError."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} (code {code})")


@app.function(timeout_s=30)
def raise_unrebuildable() -> None:
    raise NeedsTwoArguments("odd failure", 7)


@app.function(timeout_s=30)
def return_lock() -> object:
    return threading.Lock()


@app.function(timeout_s=30)
def exit_early() -> None:
    import sys

    sys.exit(3)
