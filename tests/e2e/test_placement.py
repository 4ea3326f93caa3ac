"""Placement on the real runtime: a function runs only on workers whose offer meets its
placement options, and fails at once, naming the unmet filter, when no connected worker can."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import apothic
from apothic.exceptions import JobFailedError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name


@pytest.fixture(scope="module")
def zones() -> Iterator[LocalRuntime]:
    runtime = LocalRuntime(workers=0).start()
    try:
        runtime._call(runtime.add_worker("workers:za", labels={"zone": "a"}))
        runtime._call(runtime.add_worker("workers:zb", labels={"zone": "b"}))
        yield runtime
    finally:
        runtime.stop()


def test_a_function_runs_only_where_its_filters_are_met(zones: LocalRuntime) -> None:
    app = apothic.App(unique_name("place"), client=zones.config)

    @app.function(labels={"zone": "b"}, max_containers=3)
    def where(_: int) -> str:
        import os

        return os.environ["APOTHIC_SOURCE_DIR"]

    @app.function(offer_filters=[("labels.zone", "in", ["a"])])
    def where_a() -> str:
        import os

        return os.environ["APOTHIC_SOURCE_DIR"]

    app.deploy()
    try:
        assert all("workers_zb" in d for d in where.map(range(8)))
        assert "workers_za" in where_a.remote()
    finally:
        app.stop()


def test_no_worker_can_run_it_fails_at_once_naming_the_filter(zones: LocalRuntime) -> None:
    app = apothic.App(unique_name("noplace"), client=zones.config)

    @app.function(memory_mb=10**9)
    def huge() -> int:
        return 1

    @app.function(labels={"zone": "c"})
    def nowhere() -> int:
        return 1

    app.deploy()
    try:
        with pytest.raises(JobFailedError, match=r"needs memory_mb >= 1000000000 \(workers:z. offers \d+"):
            huge.remote()
        with pytest.raises(JobFailedError, match="needs labels.zone == 'c'"):
            nowhere.remote()
    finally:
        app.stop()
