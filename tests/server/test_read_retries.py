"""Reads ride out a control-plane restart: once the control plane has answered a client, a
read that finds it gone (killed, restarting) is retried until it is back, as writes with a
request id are; a read against an address that never answered fails at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import apothic
from apothic.config import ClientConfig
from apothic.exceptions import UnavailableError
from apothic.testing import unique_name
from tests.server.plane_process import PlaneProcess, free_port


def test_a_read_during_a_restart_waits_for_the_control_plane(tmp_path: Path) -> None:
    plane = PlaneProcess(tmp_path / "state", free_port(), tmp_path / "server.log")
    plane.start()
    try:
        d = apothic.Dict.from_name(unique_name("reads"), client=plane.config)
        q = apothic.Queue.from_name(unique_name("reads"), client=plane.config)
        d["k"] = "v"
        q.put(1)
        plane.kill()
        got: dict[str, object] = {}

        def read() -> None:
            try:
                got["value"] = d.get("k")
                got["len"] = q.len()
            except Exception as exc:  # the assertion below shows it
                got["error"] = exc

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(1.0)  # the reads meet a dead control plane and keep retrying
        assert reader.is_alive(), got
        plane.start()
        reader.join(30)
        assert got == {"value": "v", "len": 1}
    finally:
        plane.stop()


def test_a_read_against_an_address_that_never_answered_fails_at_once() -> None:
    config = ClientConfig(base_url=f"127.0.0.1:{free_port()}", api_key="ak-none.none")
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        apothic.Dict.from_name("nowhere", create_if_missing=False, client=config)  # it looks the dict up
    with pytest.raises(UnavailableError):
        apothic.Queue.from_name("nowhere", create_if_missing=False, client=config).len()
    assert time.monotonic() - started < 10  # not the 30 s retry window of a known control plane


def test_every_read_named_is_a_unary_call_of_the_api() -> None:
    import importlib
    import pkgutil

    import apothic._proto.v1 as v1
    from apothic._transport import _READS

    unary: set[str] = set()
    for module in pkgutil.iter_modules(v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"apothic._proto.v1.{module.name}").DESCRIPTOR
            for service in descriptor.services_by_name.values():
                unary |= {
                    m.input_type.full_name for m in service.methods if not m.client_streaming and not m.server_streaming
                }
    assert _READS <= unary, sorted(_READS - unary)
