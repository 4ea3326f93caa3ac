"""vast_local volumes on the real runtime: files stay on the host that first mounts the
volume, later containers of functions that mount it are placed on that host, and what the
control plane cannot do for such a volume fails with a clear error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import apothic
from apothic.exceptions import FailedPreconditionError, InvalidArgumentError, InvalidConfigError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[LocalRuntime]:
    """A runtime whose two workers stand in for two machines."""
    runtime = LocalRuntime(workers=0).start()
    try:
        runtime._call(runtime.add_worker("workers:a", hostname="host-a"))
        runtime._call(runtime.add_worker("workers:b", hostname="host-b"))
        yield runtime
    finally:
        runtime.stop()


def test_files_stay_on_the_host_that_first_mounted_the_volume(two_hosts: LocalRuntime) -> None:
    config = two_hosts.config
    name = unique_name("vl")
    info = apothic.Volume.create(name, backend="vast_local", client=config)
    assert (info.backend, info.pinned_host) == ("vast_local", "")
    mount = f"/tmp/apothic-vl-{uuid.uuid4().hex[:8]}/data"
    vol = apothic.Volume.from_name(name, client=config)
    app = apothic.App(unique_name("vlapp"), client=config)

    @app.function(volumes={mount: vol}, max_containers=4)
    def append(line: str) -> tuple[str, str]:
        import os

        with open(os.path.join(mount, "log.txt"), "a") as fh:
            fh.write(line + "\n")
        vol.commit()  # nothing to upload: the files are on this host already
        return os.path.realpath(mount), open(os.path.join(mount, "log.txt")).read()

    app.deploy()
    try:
        first_dir, content = append.remote("one")
        assert content == "one\n"
        host = wait_for(
            lambda: apothic.Volume.create(name, exist_ok=True, backend="vast_local", client=config).pinned_host
        )
        assert host in ("host-a", "host-b")
        assert f"/hosts/{host}/vast_local/" in first_dir
        # Concurrent calls start more containers: every one of them lands on the same host.
        results = list(append.map([f"line{i}" for i in range(12)]))
        assert {d for d, _ in results} == {first_dir}
        final = append.remote("last")[1].splitlines()
        assert final[0] == "one" and final[-1] == "last" and len(final) == 14
    finally:
        app.stop()

    with pytest.raises(FailedPreconditionError, match="vast_local"):
        vol.listdir()
    with pytest.raises(FailedPreconditionError, match=f"host {host!r}"):
        vol.put_file(b"x", "x.txt")
    portable = unique_name("p")
    apothic.Volume.create(portable, client=config)
    with pytest.raises(FailedPreconditionError, match="portable volume, not vast_local"):
        apothic.Volume.create(portable, exist_ok=True, backend="vast_local", client=config)


def test_a_function_mounts_at_most_one_vast_local_volume(two_hosts: LocalRuntime) -> None:
    config = two_hosts.config
    names = [unique_name("vl") for _ in range(2)]
    for n in names:
        apothic.Volume.create(n, backend="vast_local", client=config)
    app = apothic.App(unique_name("vlbad"), client=config)

    @app.function(volumes={f"/mnt/{i}": apothic.Volume.from_name(n, client=config) for i, n in enumerate(names)})
    def f() -> int:
        return 1

    with pytest.raises(InvalidArgumentError, match="mounts 2 vast_local volumes"):
        app.deploy()


def test_bad_backends_are_refused() -> None:
    with pytest.raises(InvalidConfigError, match="backend"):
        apothic.Volume.create("x", backend="nfs")
