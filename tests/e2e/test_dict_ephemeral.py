"""Ephemeral dicts against the real runtime: deleted when the block exits, kept alive by
heartbeats, and deleted by the control plane once heartbeats stop, even across a restart.
Expiry runs on the control plane's clock, which these tests replace with a fake one."""

from __future__ import annotations

from pathlib import Path

import pytest

import apothic
from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import BlockingInAsyncContextError, FailedPreconditionError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.server.dicts import EPHEMERAL_LEASE_S
from apothic.testing import unique_name, wait_for
from apothic.watch import SnapshotEnd
from tests.e2e.fake_clock import FakeClock


def _exists(name: str, config: ClientConfig) -> bool:
    try:
        apothic.Dict.from_name(name, create_if_missing=False, client=config)
    except NotFoundError:
        return False
    return True


def _create_ephemeral(name: str, config: ClientConfig) -> float:
    """An ephemeral dict that nobody heartbeats (its client 'crashed')."""

    async def create() -> float:
        return await get_client(config).create_ephemeral_dict(name)

    return run_sync(create(), "create")


def _heartbeat(name: str, config: ClientConfig) -> float:
    async def beat() -> float:
        return await get_client(config).heartbeat_dict(name)

    return run_sync(beat(), "heartbeat")


def test_deleted_when_the_block_exits(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    with apothic.Dict.ephemeral(client=config) as d, apothic.Dict.ephemeral(client=config) as other:
        assert d.name != other.name and d.name.startswith("ephemeral-")
        d["k"] = 1
        assert d["k"] == 1 and _exists(d.name, config)
    assert not _exists(d.name, config) and not _exists(other.name, config)
    # Deleting it inside the block is fine too.
    with apothic.Dict.ephemeral(client=config) as d:
        apothic.Dict.delete(d.name, client=config)
    assert not _exists(d.name, config)


async def test_async_form(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    async with apothic.Dict.ephemeral.aio(client=config) as d:
        await d.aio.put("k", 1)
        assert await d.aio.get("k") == 1
    with pytest.raises(NotFoundError):
        await d.aio.len()
    with pytest.raises(BlockingInAsyncContextError, match=r"Dict\.ephemeral\.aio\(\)"):
        with apothic.Dict.ephemeral(client=config):
            pass


def test_swept_once_heartbeats_stop(apothic_runtime: LocalRuntime, clock: FakeClock) -> None:
    config = apothic_runtime.config
    name = unique_name("eph")
    assert _create_ephemeral(name, config) == EPHEMERAL_LEASE_S
    stream = apothic.Dict(name, client=config).watch(snapshot=True)
    assert next(stream) == SnapshotEnd(0)
    clock.advance(EPHEMERAL_LEASE_S - 1)
    assert _heartbeat(name, config) == EPHEMERAL_LEASE_S
    clock.advance(EPHEMERAL_LEASE_S - 1)
    assert _exists(name, config), "the heartbeat extended its lease"
    clock.advance(2)
    wait_for(lambda: not _exists(name, config), timeout=5, what="the sweep to delete the dict")
    with pytest.raises(NotFoundError, match="was deleted"):
        next(stream)
    with pytest.raises(NotFoundError):
        _heartbeat(name, config)
    # Plain dicts take no heartbeats and are never swept.
    plain = apothic.Dict.from_name(unique_name("plain"), client=config)
    with pytest.raises(FailedPreconditionError, match="not ephemeral"):
        _heartbeat(plain.name, config)
    clock.advance(EPHEMERAL_LEASE_S * 10)
    assert _exists(plain.name, config)


def test_the_deadline_survives_a_restart(tmp_path: Path) -> None:
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=0).start()
    name = unique_name("eph")
    try:
        _create_ephemeral(name, first.config)
    finally:
        first.stop()
    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=0, api_key=first.api_key).start()
    try:
        assert _exists(name, second.config)
        assert second.plane is not None
        fake = FakeClock()
        fake.advance(EPHEMERAL_LEASE_S + 1)
        second.plane.dicts.set_clock(fake)
        wait_for(lambda: not _exists(name, second.config), timeout=5, what="the sweep to delete the dict")
    finally:
        second.stop()
