"""The event loop a control plane serves on: uvloop's by default, the standard one on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

import apothic
from apothic.exceptions import InvalidConfigError
from apothic.runtime import LocalRuntime, new_serving_loop, run_serving
from apothic.testing import unique_name


def test_a_runtime_serves_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APOTHIC_EVENT_LOOP", raising=False)
    with LocalRuntime(db_url="mem://", workers=0) as runtime:
        assert isinstance(runtime._loop, uvloop.Loop)
        d = apothic.Dict.from_name(unique_name("loop"), client=runtime.config)
        d.put("k", 1)
        entry = d.get_entry("k")
        assert entry is not None and entry.value == 1
        assert d.put("k", 2, if_version=entry.version)
        assert d.get("k") == 2


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APOTHIC_EVENT_LOOP", "asyncio")
    loop = new_serving_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()

    async def which() -> type:
        return type(asyncio.get_running_loop())

    assert not issubclass(run_serving(which()), uvloop.Loop)
    monkeypatch.setenv("APOTHIC_EVENT_LOOP", " UVLoop ")  # case and spaces do not matter
    assert issubclass(run_serving(which()), uvloop.Loop)


def test_an_unknown_loop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APOTHIC_EVENT_LOOP", "trio")
    with pytest.raises(InvalidConfigError, match="APOTHIC_EVENT_LOOP must be one of uvloop, asyncio, got 'trio'"):
        new_serving_loop()
