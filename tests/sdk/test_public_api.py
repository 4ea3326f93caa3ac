"""The SDK's public surface: exports, import weight, decorators and option validation."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from typing import Any

import pytest

import apothic
from apothic import exceptions
from apothic.exceptions import InvalidConfigError, UsageError

EXPECTED_ALL = [
    "App",
    "AppInfo",
    "Claim",
    "ClientConfig",
    "Cls",
    "CloudBucketMount",
    "Cron",
    "DeploymentInfo",
    "DeploymentStatus",
    "Dict",
    "DictChange",
    "DictEntry",
    "DictEvent",
    "Election",
    "ElectionLeader",
    "Function",
    "Image",
    "ImageBuildLine",
    "ImageBuildResult",
    "Job",
    "JobEndEvent",
    "JobEvent",
    "JobInfo",
    "JobLogEvent",
    "JobQueuedEvent",
    "JobResultEvent",
    "JobRunningEvent",
    "JobSnapshotEvent",
    "JobStatus",
    "Leadership",
    "Period",
    "Queue",
    "QueueChange",
    "QueueEvent",
    "QueueItemState",
    "RemoteFunction",
    "Retries",
    "Sandbox",
    "SandboxFileInfo",
    "SandboxInfo",
    "SandboxProcess",
    "SandboxStatus",
    "ScheduleInfo",
    "Secret",
    "SecretInfo",
    "Volume",
    "VolumeInfo",
    "batched",
    "concurrent",
    "config",
    "enter",
    "exceptions",
    "exit",
    "gather",
    "method",
    "__version__",
]


def test_all_is_pinned() -> None:
    assert sorted(apothic.__all__) == sorted(EXPECTED_ALL)
    for name in apothic.__all__:
        assert hasattr(apothic, name), name


def test_exceptions_all_is_complete() -> None:
    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), Exception), name
    assert issubclass(exceptions.ApothicError, Exception)
    for cls in (exceptions.InvalidConfigError, exceptions.SerializationError, exceptions.BlockingInAsyncContextError):
        assert issubclass(cls, exceptions.UsageError)
    for cls in (exceptions.NotFoundError, exceptions.AuthError, exceptions.FailedPreconditionError):
        assert issubclass(cls, exceptions.ServiceError)
        assert not issubclass(cls, exceptions.JobError)
    for cls in (exceptions.RemoteError, exceptions.FunctionTimeoutError, exceptions.JobCancelledError):
        assert issubclass(cls, exceptions.JobError)
        assert not issubclass(cls, exceptions.ServiceError)


def test_import_apothic_stays_light() -> None:
    heavy = ["apothic.server", "apothic.worker", "apothic.runtime", "surrealdb", "anthropic"]
    code = (
        "import json, sys, apothic\n"
        "app = apothic.App('light')\n"
        "@app.function\n"
        "def f(x): return x\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


def test_decorator_with_and_without_parentheses() -> None:
    app = apothic.App("decorators")

    @app.function
    def bare(x: int, *, scale: int = 2) -> int:
        """Scales x."""
        return x * scale

    @app.function()
    def called(x: int) -> int:
        return x + 1

    @app.function(name="renamed", timeout_s=5)
    def original(x: int) -> int:
        return x

    for handle in (bare, called, original):
        assert isinstance(handle, apothic.Function)
    assert set(app.functions) == {"bare", "called", "renamed"}
    assert app.functions["renamed"] is original
    # The handle keeps the user's function: name, docstring, signature, local calls.
    assert bare.__name__ == "bare" and bare.__doc__ == "Scales x."
    assert inspect.signature(bare) == inspect.signature(bare.raw_function)
    assert list(inspect.signature(bare).parameters) == ["x", "scale"]
    assert bare(3) == 6 and bare.local(3, scale=3) == 9 and called(1) == 2
    assert bare.options.timeout_s == 300.0 and original.options.timeout_s == 5

    @app.local_entrypoint
    def main() -> str:
        return "bare"

    @app.local_entrypoint()
    def other() -> str:
        return "called"

    assert main() == "bare" and other() == "called"
    assert set(app.local_entrypoints) == {"main", "other"}


def test_every_option_is_kept_in_the_spec() -> None:
    app = apothic.App("spec")
    options: dict[str, Any] = {
        "timeout_s": 12.5,
        "retries": 2,
        "max_containers": 3,
        "min_containers": 1,
        "concurrent_requests": 4,
        "cpu": 0.5,
        "memory_mb": 256,
        "gpu": "A100",
        "region": "eu-west",
        "arch": "x86_64",
        "max_cost_per_hour": 1.25,
        "verified": True,
        "labels": {"team": "ml"},
        "offer_filters": [("cpu_cores", "gte", 2)],
        "env": {"MODE": "test"},
    }

    @app.function(**options)
    def configured() -> None:
        return None

    (spec,) = app._definitions()
    assert spec.timeout_s == 12.5 and spec.max_containers == 3
    kept = json.loads(spec.options_json)
    for key, value in options.items():
        expected = [list(f) for f in value] if key == "offer_filters" else value
        assert kept[key] == expected, key


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"timeout_s": "10"}, "timeout_s"),
        ({"timeout_s": True}, "timeout_s"),
        ({"max_containers": 0}, "max_containers"),
        ({"max_containers": 1.5}, "max_containers"),
        ({"concurrent_requests": 0}, "concurrent_requests"),
        ({"retries": -1}, "retries"),
        ({"startup_timeout_s": 0}, "startup_timeout_s"),
        ({"scaledown_window_s": -5}, "scaledown_window_s"),
        ({"cpu": 0}, "cpu"),
        ({"memory_mb": -128}, "memory_mb"),
        ({"gpu": ""}, "gpu"),
        ({"labels": {"team": 1}}, "labels"),
        ({"env": ["A=1"]}, "env"),
        ({"offer_filters": [("cpu_cores", "about", 2)]}, "offer filter"),
        ({"min_containers": 3, "max_containers": 2}, "min_containers"),
        ({"name": "not an identifier"}, "name"),
        ({"timeot_s": 5}, "timeot_s"),
    ],
)
def test_invalid_options_name_the_option(options: dict[str, Any], named: str) -> None:
    app = apothic.App("invalid")
    with pytest.raises(InvalidConfigError, match=named):
        app.function(**options)
    assert not app.functions


def test_misuse_is_reported_before_anything_is_sent() -> None:
    with pytest.raises(InvalidConfigError, match="app name"):
        apothic.App("no spaces allowed")
    app = apothic.App("misuse")

    @app.function
    def once() -> None:
        return None

    with pytest.raises(InvalidConfigError, match="once"):

        @app.function(name="once")
        def twice() -> None:
            return None

    with pytest.raises(InvalidConfigError, match="already"):
        app.function(once)
    with pytest.raises(UsageError, match="no functions"):
        apothic.App("empty").deploy()
