"""Deploys the apps in ``tests/e2e/apps`` once per session against the real runtime."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from apothic.runtime import LocalRuntime
from apothic.testing import deployed
from tests.e2e.apps import basic, broken, calls, failing, nested
from tests.e2e.fake_clock import FakeClock


def _deployed(module: ModuleType, runtime: LocalRuntime) -> Iterator[ModuleType]:
    with deployed(module.app, runtime):
        yield module


@pytest.fixture(scope="session")
def basic_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    """``tests.e2e.apps.basic``, deployed."""
    yield from _deployed(basic, apothic_runtime)


@pytest.fixture(scope="session")
def failing_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    """``tests.e2e.apps.failing``, deployed."""
    yield from _deployed(failing, apothic_runtime)


@pytest.fixture(scope="session")
def broken_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    """``tests.e2e.apps.broken``, deployed (it fails to import in its container)."""
    yield from _deployed(broken, apothic_runtime)


@pytest.fixture(scope="module")
def calls_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    """``tests.e2e.apps.calls``, deployed afresh for each test module that uses it."""
    yield from _deployed(calls, apothic_runtime)


@pytest.fixture(scope="module")
def nested_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    """``tests.e2e.apps.nested``, deployed."""
    yield from _deployed(nested, apothic_runtime)


@pytest.fixture
def clock(apothic_runtime: LocalRuntime) -> Iterator[FakeClock]:
    assert apothic_runtime.plane is not None
    fake = FakeClock()
    apothic_runtime.plane.dicts.set_clock(fake)
    yield fake
    apothic_runtime.plane.dicts.set_clock(None)
