"""Test against a real local runtime: a control plane (``mem://``) and a real worker.

Registered as a pytest plugin, so in any project that installs apothic::

    def test_square(apothic_runtime):
        app = apothic.App("t", client=apothic_runtime.config)
        ...

Fixtures:
    apothic_runtime: one :class:`~apothic.runtime.LocalRuntime` per test session, on free
        ports, with its client configuration exported in ``APOTHIC_BASE_URL`` /
        ``APOTHIC_API_KEY`` for code that uses the default configuration.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from apothic.app import App
from apothic.runtime import LocalRuntime

T = TypeVar("T")

__all__ = ["LocalRuntime", "apothic_runtime", "deployed", "unique_name", "wait_for"]


def unique_name(prefix: str = "t") -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Polls ``condition`` until it returns something truthy and returns that.

    Raises:
        TimeoutError: the condition stayed falsy for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@contextlib.contextmanager
def deployed(app: App, runtime: LocalRuntime) -> Iterator[App]:
    """Deploys ``app`` to ``runtime`` for the ``with`` block, then stops it.

    Example::

        @pytest.fixture(scope="module")
        def my_app(apothic_runtime):
            with deployed(myapp.app, apothic_runtime):
                yield myapp
    """
    previous = app._client
    app._client = runtime.config
    app.deploy()
    try:
        yield app
    finally:
        app.stop()
        app._client = previous


@pytest.fixture(scope="session")
def apothic_runtime() -> Iterator[LocalRuntime]:
    """A real control plane and worker for the whole test session."""
    runtime = LocalRuntime(db_url="mem://", workers=1).start()
    saved = {k: os.environ.get(k) for k in ("APOTHIC_BASE_URL", "APOTHIC_API_KEY")}
    os.environ["APOTHIC_BASE_URL"] = runtime.address
    os.environ["APOTHIC_API_KEY"] = runtime.api_key
    try:
        yield runtime
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        runtime.stop()
