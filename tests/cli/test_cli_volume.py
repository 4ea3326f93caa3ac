"""`apothic volume create|ls|put|get|rm|delete` through typer's CliRunner against the
session runtime."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import apothic
from apothic.cli.main import app as cli
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name

runner = CliRunner()


def invoke(*args: str, input: bytes | None = None) -> str:
    result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_volume_round_trip(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    name = unique_name("clivol")
    assert name in invoke("volume", "create", name)
    again = runner.invoke(cli, ["volume", "create", name])
    assert again.exit_code == 1 and "AlreadyExistsError" in again.output
    assert name in invoke("volume", "create", name, "--exist-ok")

    local = tmp_path / "in.txt"
    local.write_text("hello volume")
    assert "docs/in.txt" in invoke("volume", "put", name, str(local), "docs/in.txt")
    invoke("volume", "put", name, "-", "stdin.bin", input=b"from stdin")

    listed = invoke("volume", "ls", name)
    assert "docs/" in listed and "stdin.bin" in listed
    entries = json.loads(invoke("volume", "ls", name, "docs", "--json"))
    assert [(e["path"], e["size"], e["is_dir"]) for e in entries] == [("docs/in.txt", 12, False)]
    recursive = json.loads(invoke("volume", "ls", name, "--recursive", "--json"))
    assert [e["path"] for e in recursive] == ["docs/in.txt", "stdin.bin"]
    [info] = [v for v in json.loads(invoke("volume", "ls", "--json")) if v["name"] == name]
    assert info["file_count"] == 2 and info["version"] == 2
    assert name in invoke("volume", "ls")

    out = tmp_path / "out.txt"
    assert str(out) in invoke("volume", "get", name, "docs/in.txt", str(out))
    assert out.read_text() == "hello volume"
    invoke("volume", "get", name, "stdin.bin", str(tmp_path))
    assert (tmp_path / "stdin.bin").read_bytes() == b"from stdin"
    assert invoke("volume", "get", name, "stdin.bin") == "from stdin"

    traversal = runner.invoke(cli, ["volume", "put", name, str(local), "../../etc/passwd"])
    assert traversal.exit_code == 1 and "InvalidArgumentError" in traversal.output and "'..'" in traversal.output
    directory = runner.invoke(cli, ["volume", "rm", name, "docs"])
    assert directory.exit_code == 1 and "--recursive" in directory.output
    assert "removed 1 file " in invoke("volume", "rm", name, "docs", "--recursive")
    assert apothic.Volume.from_name(name, client=apothic_runtime.config).info().file_count == 1

    assert name in invoke("volume", "delete", name)
    missing = runner.invoke(cli, ["volume", "ls", name])
    assert missing.exit_code == 1 and "NotFoundError" in missing.output and name in missing.output
    missing_get = runner.invoke(cli, ["volume", "get", name, "x"])
    assert missing_get.exit_code == 1 and "NotFoundError" in missing_get.output


def test_volume_errors(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    bad_name = runner.invoke(cli, ["volume", "create", "bad name"])
    assert bad_name.exit_code == 1 and "volume name" in bad_name.output
    no_file = runner.invoke(cli, ["volume", "put", unique_name("v"), str(tmp_path / "nope"), "x"])
    assert no_file.exit_code == 2 and "is not a file" in no_file.output


def test_volume_help() -> None:
    for args in (["volume", "--help"], *(["volume", c, "--help"] for c in ("create", "ls", "put", "get", "rm"))):
        assert "Usage" in invoke(*args)
    assert "Delete a volume" in invoke("volume", "delete", "--help")
