"""Volumes on the real runtime: the VolumeService through the SDK, path and name validation,
versions, limits and content-addressed blobs under the control plane's state directory."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from pathlib import Path

import pytest

import apothic
from apothic.exceptions import (
    AlreadyExistsError,
    BlockingInAsyncContextError,
    FailedPreconditionError,
    InvalidArgumentError,
    InvalidConfigError,
    NotFoundError,
    ResourceExhaustedError,
    UsageError,
)
from apothic.runtime import LocalRuntime
from apothic.server.volumes import MAX_FILE_BYTES
from apothic.testing import unique_name, wait_for
from apothic.volume import FileEntry


def _blobs(runtime: LocalRuntime) -> Path:
    return runtime.state_dir / "volumes" / "blobs"


def test_put_read_list_remove(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    config = apothic_runtime.config
    vol = apothic.Volume.from_name(unique_name("vol"), client=config)
    assert vol.info().version == 0 and vol.info().file_count == 0
    local = tmp_path / "local.txt"
    local.write_bytes(b"from disk")
    entry = vol.put_file(local, "docs/a.txt")
    assert entry == FileEntry(
        path="docs/a.txt",
        is_dir=False,
        size=9,
        sha256=hashlib.sha256(b"from disk").hexdigest(),
        mtime=entry.mtime,
    )
    vol.put_file(b"bee", "docs/sub/b.txt")
    vol.put_file(bytearray(b"top"), "top.txt")
    assert vol.read_file("docs/a.txt") == b"from disk"
    assert vol.read_file("docs/sub/b.txt") == b"bee"

    assert [(e.path, e.is_dir) for e in vol.listdir()] == [("docs", True), ("top.txt", False)]
    assert [(e.path, e.is_dir) for e in vol.listdir("docs/")] == [("docs/a.txt", False), ("docs/sub", True)]
    assert [e.path for e in vol.listdir(recursive=True)] == ["docs/a.txt", "docs/sub/b.txt", "top.txt"]
    assert [e.path for e in vol.listdir("docs/a.txt")] == ["docs/a.txt"]
    info = vol.info()
    assert (info.version, info.file_count, info.total_bytes) == (3, 3, 15)

    # Replacing a file keeps one row and bumps the version.
    vol.put_file(b"new", "top.txt")
    assert vol.read_file("top.txt") == b"new" and vol.info().version == 4 and vol.info().file_count == 3

    with pytest.raises(FailedPreconditionError, match="recursive"):
        vol.remove_file("docs")
    assert vol.remove_file("docs/a.txt") == 1
    with pytest.raises(NotFoundError, match="docs/a.txt"):
        vol.read_file("docs/a.txt")
    assert vol.remove_file("docs", recursive=True) == 1
    assert [e.path for e in vol.listdir()] == ["top.txt"]
    assert vol.info().version == 6
    with pytest.raises(NotFoundError, match="nothing-here"):
        vol.listdir("nothing-here")

    assert vol.name in [v.name for v in apothic.Volume.list(client=config)]
    apothic.Volume.delete(vol.name, client=config)
    assert vol.name not in [v.name for v in apothic.Volume.list(client=config)]
    with pytest.raises(NotFoundError, match=vol.name):
        apothic.Volume.delete(vol.name, client=config)


def test_paths_are_validated(apothic_runtime: LocalRuntime) -> None:
    vol = apothic.Volume.from_name(unique_name("vol"), client=apothic_runtime.config)
    for bad, why in [
        ("../../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a//b", "not normalized"),
        ("./a", "not normalized"),
        ("", "empty"),
        ("a\\b", "backslash"),
    ]:
        with pytest.raises(InvalidArgumentError, match=why) as err:
            vol.put_file(b"x", bad)
        assert repr(bad) in str(err.value)
    with pytest.raises(InvalidArgumentError, match="'/etc/passwd'"):
        vol.read_file("/etc/passwd")
    with pytest.raises(InvalidArgumentError, match=r"\.\."):
        vol.listdir("../x")
    with pytest.raises(InvalidArgumentError, match=r"\.\."):
        vol.remove_file("../x", recursive=True)

    vol.put_file(b"x", "dir/file")
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        vol.put_file(b"y", "dir")
    with pytest.raises(InvalidArgumentError, match="under 'dir/file'"):
        vol.put_file(b"y", "dir/file/deeper")
    assert vol.info().version == 1, "refused writes change nothing"


def test_names_and_missing_volumes(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    for bad in ("", "has space", "-leading", "x" * 64, "../x"):
        with pytest.raises(InvalidConfigError, match="volume name"):
            apothic.Volume.from_name(bad, client=config)
    with pytest.raises(InvalidConfigError, match="mount path"):
        apothic.Volume.from_name("ok", mount_path_default="relative", client=config)
    assert apothic.Volume.from_name("ok", mount_path_default="/data").mount_path_default == "/data"

    name = unique_name("missing")
    missing = apothic.Volume.from_name(name, create_if_missing=False, client=config)
    for call in (missing.info, lambda: missing.read_file("a"), missing.listdir, lambda: missing.put_file(b"", "a")):
        with pytest.raises(NotFoundError, match=name):
            call()
    assert name not in [v.name for v in apothic.Volume.list(client=config)]


def test_create_exist_ok(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("vol")
    info = apothic.Volume.create(name, client=config)
    assert info.name == name and info.version == 0 and info.file_count == 0
    with pytest.raises(AlreadyExistsError, match=name):
        apothic.Volume.create(name, client=config)
    apothic.Volume.from_name(name, client=config).put_file(b"x", "f")
    assert apothic.Volume.create(name, exist_ok=True, client=config).version == 1


def test_too_large_file_is_refused(apothic_runtime: LocalRuntime) -> None:
    vol = apothic.Volume.from_name(unique_name("vol"), client=apothic_runtime.config)
    with pytest.raises(ResourceExhaustedError, match="big.bin"):
        vol.put_file(b"\0" * (MAX_FILE_BYTES + 1), "big.bin")
    assert vol.info().file_count == 0
    vol.put_file(b"\0" * MAX_FILE_BYTES, "max.bin")
    assert vol.info().total_bytes == MAX_FILE_BYTES


def test_blobs_are_deduplicated_and_collected(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    content = unique_name("shared-content").encode()
    sha = hashlib.sha256(content).hexdigest()
    one = apothic.Volume.from_name(unique_name("vol"), client=config)
    two = apothic.Volume.from_name(unique_name("vol"), client=config)
    one.put_file(content, "a")
    one.put_file(content, "b/c")
    two.put_file(content, "copy")
    blob = _blobs(apothic_runtime) / sha
    assert blob.read_bytes() == content
    assert [p.name for p in _blobs(apothic_runtime).iterdir() if p.name == sha] == [sha], "stored once"

    one.remove_file("a")
    apothic.Volume.delete(one.name, client=config)
    assert blob.exists(), "another volume still names it"
    two.put_file(b"other", "copy")  # replacing the last file that names it
    assert not blob.exists()
    assert not [p for p in _blobs(apothic_runtime).iterdir() if p.name.endswith(".tmp")]


def test_volume_pickles_without_its_client(apothic_runtime: LocalRuntime) -> None:
    vol = apothic.Volume.from_name(unique_name("vol"), mount_path_default="/data", client=apothic_runtime.config)
    copy = pickle.loads(pickle.dumps(vol))
    assert copy.name == vol.name and copy.mount_path_default == "/data" and copy._config is None
    assert apothic_runtime.api_key.encode() not in pickle.dumps(vol)


async def test_aio_forms(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    vol = apothic.Volume.from_name(unique_name("vol"), client=config)
    entry = await vol.aio.put_file(b"async", "x/y")
    assert entry.size == 5
    assert await vol.aio.read_file("x/y") == b"async"
    assert [e.path for e in await vol.aio.listdir("x")] == ["x/y"]
    assert (await vol.aio.info()).version == 1
    assert await vol.aio.remove_file("x", recursive=True) == 1
    assert vol.name in [v.name for v in await apothic.Volume.list.aio(client=config)]
    with pytest.raises(BlockingInAsyncContextError, match=r"vol.aio.read_file|volume.aio.read_file"):
        vol.read_file("x/y")
    await apothic.Volume.delete.aio(vol.name, client=config)
    await asyncio.sleep(0)


def test_functions_use_volumes_through_the_api(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("fnvol")
    app = apothic.App(unique_name("volumes"), client=config)
    handle = apothic.Volume.from_name(name, client=config)

    @app.function(timeout_s=30)
    def write(path: str, text: str) -> int:
        # Captured by value: the copy lands without the caller's client configuration and
        # uses the container's (its APOTHIC_BASE_URL and job credential).
        return handle.put_file(text.encode(), path).size

    @app.function(timeout_s=30)
    def read(path: str) -> str:
        return apothic.Volume.from_name(name, create_if_missing=False).read_file(path).decode()

    app.deploy()
    try:
        assert write.remote("from/fn.txt", "written in a container") == 22
        assert handle.read_file("from/fn.txt") == b"written in a container"
        handle.put_file(b"written by the caller", "from/caller.txt")
        assert read.remote("from/caller.txt") == "written by the caller"
        assert handle.info().version == 2
    finally:
        app.stop()
        apothic.Volume.delete(name, client=config)


def test_mounted_volume_commit_reload_and_commit_on_exit(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    config = apothic_runtime.config
    name = unique_name("mnt")
    vol = apothic.Volume.from_name(name, client=config)
    vol.put_file(b"seeded", "seed.txt")
    writer_dir, reader_dir, exit_dir = (str(tmp_path / d) for d in ("writer", "reader", "exit"))
    app = apothic.App(unique_name("mounts"), client=config)

    @app.function(timeout_s=30, volumes={writer_dir: vol})
    def write(text: str) -> tuple[str, int]:
        seed = (Path(writer_dir) / "seed.txt").read_text()
        (Path(writer_dir) / "out").mkdir(exist_ok=True)
        (Path(writer_dir) / "out" / "result.txt").write_text(text)
        (Path(writer_dir) / "seed.txt").unlink()
        return seed, vol.commit()

    @app.function(timeout_s=30, volumes=[vol.mounted_at(reader_dir)])
    def read(path: str, reload: bool) -> str:
        if reload:
            vol.reload()
        file = Path(reader_dir) / path
        return file.read_text() if file.exists() else "<missing>"

    @app.function(timeout_s=30, volumes={exit_dir: vol})
    def write_without_commit() -> None:
        (Path(exit_dir) / "on-exit.txt").write_text("committed when the container stopped")

    with pytest.raises(UsageError, match="not mounted"):
        vol.commit()

    app.deploy()
    try:
        assert write.remote("hello from a container") == ("seeded", 2)
        assert vol.read_file("out/result.txt") == b"hello from a container"
        assert [e.path for e in vol.listdir(recursive=True)] == ["out/result.txt"]

        # The reader's container mounted the volume when it started (after the commit).
        assert read.remote("out/result.txt", False) == "hello from a container"
        vol.put_file(b"changed by the caller", "out/result.txt")
        assert read.remote("out/result.txt", False) == "hello from a container", "no reload yet"
        assert read.remote("out/result.txt", True) == "changed by the caller"

        write_without_commit.remote()
    finally:
        app.stop()
    wait_for(lambda: "on-exit.txt" in [e.path for e in vol.listdir()], timeout=20, what="the commit on container exit")
    assert vol.read_file("on-exit.txt") == b"committed when the container stopped"
    apothic.Volume.delete(name, client=config)


def test_mount_options_are_validated(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    vol = apothic.Volume.from_name(unique_name("vol"), client=config)
    app = apothic.App(unique_name("badmount"), client=config)
    for volumes, match in [
        ({"relative": vol}, "mount path"),
        ({"/a/../b": vol}, "mount path"),
        ([vol], "need a mount path"),
        ({"/a": "not-a-volume"}, "not an apothic.Volume"),
        ({"/a": vol, "/b": vol}, "mounted twice"),
        ("/a", "dict of mount paths"),
    ]:
        with pytest.raises(InvalidConfigError, match=match):
            app.function(volumes=volumes)(lambda: None)

    missing = apothic.Volume.from_name(unique_name("absent"), create_if_missing=False, client=config)

    @app.function(volumes={"/tmp/never-mounted": missing})
    def uses_missing() -> None:
        return None

    with pytest.raises(NotFoundError, match=missing.name):
        app.deploy()
