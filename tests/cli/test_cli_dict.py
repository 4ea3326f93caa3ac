"""`apothic dict get|put|items` through typer's CliRunner against the session runtime."""

from __future__ import annotations

import json

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
