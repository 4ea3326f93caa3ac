"""`apothic queue len|put|clear` through typer's CliRunner against the session runtime."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import apothic
from apothic.cli.main import app as cli
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_queue_put_len_clear(apothic_runtime: LocalRuntime) -> None:
    name = unique_name("cliq")
    invoke("queue", "put", name, '{"n": 1}')
    invoke("queue", "put", name, "[2, 3]", "--partition", "b")
    assert json.loads(invoke("queue", "len", name, "--json"))["length"] == 2
    assert json.loads(invoke("queue", "len", name, "--partition", "b", "--json"))["length"] == 1
    assert invoke("queue", "len", name).strip() == "2"
    q = apothic.Queue.from_name(name, client=apothic_runtime.config)
    assert q.get() == {"n": 1}, "the SDK decodes what the CLI put as JSON"
    assert json.loads(invoke("queue", "clear", name, "--json"))["removed"] == 1
    assert q.len() == 0


def test_queue_errors(apothic_runtime: LocalRuntime) -> None:
    missing = runner.invoke(cli, ["queue", "len", unique_name("nope")])
    assert missing.exit_code == 1
    assert "NotFoundError" in missing.output
    bad = runner.invoke(cli, ["queue", "put", unique_name("q"), "{not json"])
    assert bad.exit_code == 2
    assert "not valid JSON" in bad.output
