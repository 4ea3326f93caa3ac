"""`apothic dict get|put|items|watch` through typer's CliRunner (and ``watch`` in a subprocess, to
interrupt it) against the session runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import apothic
from apothic.cli.main import app as cli
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name

runner = CliRunner()


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def name(apothic_runtime: LocalRuntime) -> str:
    return unique_name("clidict")


def test_put_get_items(name: str) -> None:
    assert "version 1" in invoke("dict", "put", name, "config", '{"retries": 3, "tags": ["a"]}')
    assert "version 2" in invoke("dict", "put", name, "config", '{"retries": 4}')
    invoke("dict", "put", name, "count", "7")
    assert json.loads(invoke("dict", "get", name, "config")) == {"retries": 4}
    assert json.loads(invoke("dict", "get", name, "count")) == 7
    rows = json.loads(invoke("dict", "items", name, "--json"))
    assert rows == [
        {"key": "config", "value": {"retries": 4}, "version": 2, "mod_rev": 2},
        {"key": "count", "value": 7, "version": 1, "mod_rev": 3},
    ]
    text = invoke("dict", "items", name)
    assert "config" in text and "count" in text and "retries" in text
    # What the CLI wrote is what the SDK reads.
    assert apothic.Dict.from_name(name)["config"] == {"retries": 4}


def test_values_json_cannot_hold_print_their_repr(name: str) -> None:
    apothic.Dict.from_name(name)["s"] = {1, 2}
    assert json.loads(invoke("dict", "get", name, "s")) == "{1, 2}"


def test_errors(name: str) -> None:
    assert "not found" in invoke("dict", "get", name, "k", code=1)
    assert "not found" in invoke("dict", "items", name, code=1)
    invoke("dict", "put", name, "k", "1")
    assert "'missing' not found" in invoke("dict", "get", name, "missing", code=1)
    assert "not valid JSON" in invoke("dict", "put", name, "k", "{nope", code=2)


def test_watch(name: str) -> None:
    invoke("dict", "put", name, "a", "1")
    invoke("dict", "put", name, "b", '{"x": 2}')
    apothic.Dict.from_name(name).delete("a")
    out = invoke("dict", "watch", name, "--after-rev", "0", "--count", "3", "--json")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "change", "rev": 1, "events": [{"type": "put", "key": "a", "value": 1, "version": 1, "mod_rev": 1}]},
        {
            "type": "change",
            "rev": 2,
            "events": [{"type": "put", "key": "b", "value": {"x": 2}, "version": 1, "mod_rev": 2}],
        },
        {"type": "change", "rev": 3, "events": [{"type": "delete", "key": "a"}]},
    ]
    text = invoke("dict", "watch", name, "--snapshot", "--timeout", "0.2")
    assert 'b = {"x": 2}' in text and "snapshot as of rev 3" in text
    text = invoke("dict", "watch", name, "--after-rev", "1", "--count", "2")
    assert "rev 2  put b" in text and "rev 3  delete a" in text
    out = invoke("dict", "watch", name, "--snapshot", "--prefix", "a", "--timeout", "0.2", "--json")
    assert [json.loads(line) for line in out.splitlines()] == [{"type": "snapshot_end", "rev": 3}]
    assert "current rev is 3" in invoke("dict", "watch", name, "--after-rev", "9", code=1)
    assert "not found" in invoke("dict", "watch", unique_name("nope"), "--timeout", "5", code=1)


def test_watch_runs_until_interrupted(name: str, apothic_runtime: LocalRuntime) -> None:
    d = apothic.Dict.from_name(name)
    d["a"] = 1
    env = {**os.environ, "APOTHIC_BASE_URL": apothic_runtime.address, "APOTHIC_API_KEY": apothic_runtime.api_key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "apothic.cli.main", "dict", "watch", name, "--snapshot", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["key"] == "a"
        assert json.loads(proc.stdout.readline()) == {"type": "snapshot_end", "rev": 1}
        d["b"] = 2
        assert json.loads(proc.stdout.readline())["rev"] == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        proc.kill()
        proc.wait()
