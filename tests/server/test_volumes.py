"""Volumes across a control-plane restart on the embedded ``surrealkv://`` store, and the
path rules on their own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import apothic
from apothic.runtime import LocalRuntime
from apothic.server.errors import InvalidArgument
from apothic.server.volumes import VolumeManager, normalize_path
from apothic.testing import unique_name


def test_files_and_versions_survive_a_restart(tmp_path: Path) -> None:
    name = unique_name("durable")
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=0).start()
    try:
        vol = apothic.Volume.from_name(name, client=first.config)
        vol.put_file(b"kept", "a/kept.txt")
        vol.put_file(b"gone", "gone.txt")
        vol.remove_file("gone.txt")
        version = vol.info().version
    finally:
        first.stop()

    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=0, api_key=first.api_key).start()
    try:
        again = apothic.Volume.from_name(name, create_if_missing=False, client=second.config)
        assert again.read_file("a/kept.txt") == b"kept"
        assert [e.path for e in again.listdir(recursive=True)] == ["a/kept.txt"]
        info = again.info()
        assert (info.version, info.file_count, info.total_bytes) == (version, 1, 4)
        again.put_file(b"more", "more.txt")
        assert again.info().version == version + 1
    finally:
        second.stop()


def test_a_vast_local_volume_stays_pinned_across_a_restart(tmp_path: Path) -> None:
    name = unique_name("pinned")
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=0).start()
    try:
        apothic.Volume.create(name, backend="vast_local", client=first.config)
        assert first.plane is not None
        volumes = first.plane.volumes
        account = next(iter(volumes._local))[0]
        first._call(_pin(volumes, account, name, "host-z"))
    finally:
        first.stop()

    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=0, api_key=first.api_key).start()
    try:
        info = apothic.Volume.create(name, exist_ok=True, client=second.config)
        assert (info.backend, info.pinned_host) == ("vast_local", "host-z")
        assert second.plane is not None and second.plane.volumes.pinned_host(account, name) == "host-z"
        # A pin is never moved: the files are on that host.
        second.plane.volumes.pin(account, name, "host-y")
        assert second.plane.volumes.pinned_host(account, name) == "host-z"
    finally:
        second.stop()


async def _pin(volumes: VolumeManager, account: str, name: str, host: str) -> None:
    volumes.pin(account, name, host)
    await asyncio.gather(*volumes._tasks)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a", "a"), ("a/b.txt", "a/b.txt"), ("dir/", "dir"), ("..a/b..", "..a/b.."), ("a b/ü", "a b/ü")],
)
def test_normalize_accepts(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize("path", ["/abs", "..", "a/..", "../../etc/passwd", "a//b", "a/./b", "./a", "", "a\x00b"])
def test_normalize_refuses(path: str) -> None:
    with pytest.raises(InvalidArgument, match="volume path"):
        normalize_path(path)


def test_root_only_where_allowed() -> None:
    assert normalize_path("", allow_root=True) == ""
    with pytest.raises(InvalidArgument, match="absolute"):
        normalize_path("/", allow_root=True)
