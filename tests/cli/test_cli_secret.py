"""`apothic secret create|list|delete` through typer's CliRunner against the session runtime."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import apothic
from apothic.cli.main import app as cli
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name

runner = CliRunner()
VALUE = "cli-secret-value-91c3"


def invoke(*args: str) -> str:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_secret_create_list_delete(apothic_runtime: LocalRuntime) -> None:
    name = unique_name("clisec")
    created = invoke("secret", "create", name, f"TOKEN={VALUE}", "URL=a=b")
    assert name in created and "TOKEN" in created and VALUE not in created
    listed = invoke("secret", "list")
    assert name in listed and VALUE not in listed
    [entry] = [s for s in json.loads(invoke("secret", "list", "--json")) if s["name"] == name]
    assert entry["keys"] == ["TOKEN", "URL"]
    assert VALUE not in invoke("secret", "list", "--json")

    again = runner.invoke(cli, ["secret", "create", name, "TOKEN=x"])
    assert again.exit_code == 1 and "AlreadyExistsError" in again.output and "--overwrite" in again.output
    replaced = json.loads(invoke("secret", "create", name, "ONLY=1", "--overwrite", "--json"))
    assert replaced["keys"] == ["ONLY"]
    assert [s.keys for s in apothic.Secret.list(client=apothic_runtime.config) if s.name == name] == [("ONLY",)]

    assert name in invoke("secret", "delete", name)
    missing = runner.invoke(cli, ["secret", "delete", name])
    assert missing.exit_code == 1 and "NotFoundError" in missing.output


def test_secret_create_errors(apothic_runtime: LocalRuntime) -> None:
    no_equals = runner.invoke(cli, ["secret", "create", unique_name("s"), VALUE])
    assert no_equals.exit_code == 2 and "KEY=VALUE" in no_equals.output and VALUE not in no_equals.output
    bad_key = runner.invoke(cli, ["secret", "create", unique_name("s"), f"1X={VALUE}"])
    assert bad_key.exit_code == 1 and "'1X'" in bad_key.output and VALUE not in bad_key.output
    bad_name = runner.invoke(cli, ["secret", "create", "bad name", "K=v"])
    assert bad_name.exit_code == 1 and "secret name" in bad_name.output


def test_secret_help() -> None:
    for args in (["secret", "--help"], ["secret", "create", "--help"], ["secret", "list", "--help"]):
        assert "Usage" in invoke(*args)
    assert "Delete a secret" in invoke("secret", "delete", "--help")
