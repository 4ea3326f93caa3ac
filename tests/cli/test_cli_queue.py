"""`apothic queue info|len|put|clear|watch` through typer's CliRunner against the session runtime."""

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


def test_queue_info_shows_maxsize(apothic_runtime: LocalRuntime) -> None:
    name = unique_name("cliq")
    apothic.Queue.from_name(name, maxsize=3, max_attempts=2, client=apothic_runtime.config).put("x")
    info = json.loads(invoke("queue", "info", name, "--json"))
    assert info["maxsize"] == 3 and info["max_attempts"] == 2 and info["length"] == 1
    assert info["dead_letter_queue"] == f"{name}.dlq" and info["ephemeral"] is False
    text = invoke("queue", "info", name)
    assert "maxsize" in text and "3" in text


def test_queue_watch(apothic_runtime: LocalRuntime) -> None:
    name = unique_name("cliq")
    q = apothic.Queue.from_name(name, client=apothic_runtime.config)
    q.put({"n": 1})
    q.put("p", partition="b")
    start = q.info().rev
    (claim,) = q.claim()
    q.ack(claim)
    # A snapshot of every item and its end, then changes (here resumed after a rev), as JSON lines.
    out = invoke("queue", "watch", name, "--snapshot", "--timeout", "0.5", "--json")
    item, end = (json.loads(line) for line in out.splitlines())
    assert (item["type"], item["value"], item["partition"], item["state"]) == ("item", "p", "b", "visible")
    assert end == {"type": "snapshot_end", "rev": start + 2}
    out = invoke("queue", "watch", name, "--after-rev", str(start), "--count", "2", "--json")
    claimed, acked = (json.loads(line) for line in out.splitlines())
    assert claimed["type"] == "change" and claimed["rev"] == start + 1
    assert [(e["kind"], e["seq"], e["attempt"]) for e in claimed["events"]] == [("claimed", 1, 1)]
    assert [e["kind"] for e in acked["events"]] == ["acked"] and acked["rev"] == start + 2
    human = invoke("queue", "watch", name, "--after-rev", str(start), "--count", "1")
    assert f"rev {start + 1} claimed seq 1" in human
    # --timeout ends a quiet watch; --partition narrows it.
    assert invoke("queue", "watch", name, "--partition", "a", "--timeout", "0.3") == ""
    assert "--after-rev" in invoke("queue", "watch", "--help")


def test_queue_watch_errors(apothic_runtime: LocalRuntime) -> None:
    missing = runner.invoke(cli, ["queue", "watch", unique_name("nope"), "--timeout", "1"])
    assert missing.exit_code == 1 and "NotFoundError" in missing.output
    name = unique_name("cliq")
    apothic.Queue.from_name(name, client=apothic_runtime.config).put(1)
    ahead = runner.invoke(cli, ["queue", "watch", name, "--after-rev", "99", "--timeout", "1"])
    assert ahead.exit_code == 1 and "InvalidArgumentError" in ahead.output
