"""`apothic app schedules` and `apothic job list --status`, through typer's CliRunner
against the session runtime."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apothic.cli.main import app as cli
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def scheduled(apothic_runtime: LocalRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A deployed app with a one-second schedule and an hourly cron."""
    name = unique_name("clisched")
    source = tmp_path_factory.mktemp("apps") / "scheduled_app.py"
    source.write_text(
        "import apothic\n"
        f"app = apothic.App({name!r})\n\n"
        "@app.function(schedule=apothic.Period(seconds=1))\n"
        "def beat():\n"
        "    return 'beat'\n\n"
        "@app.function(schedule=apothic.Cron('0 * * * *', timezone='Asia/Kolkata'))\n"
        "def hourly():\n"
        "    return None\n"
    )
    deployed = json.loads(invoke("deploy", str(source), "--json"))
    try:
        yield deployed
    finally:
        invoke("deployment", "stop", deployed["deployment_id"])


def test_app_schedules_json(scheduled: dict) -> None:
    app_name = scheduled["app_name"]
    rows = {r["function_name"]: r for r in json.loads(invoke("app", "schedules", app_name, "--json"))}
    assert set(rows) == {"beat", "hourly"}
    beat, hourly = rows["beat"], rows["hourly"]
    assert beat["app_name"] == app_name and beat["deployment_id"] == scheduled["deployment_id"]
    assert beat["schedule"] == "every 1s" and beat["period_s"] == 1.0
    assert hourly["cron"] == "0 * * * *" and hourly["timezone"] == "Asia/Kolkata"
    assert hourly["schedule"] == "cron '0 * * * *' (Asia/Kolkata)"
    next_hourly = datetime.fromisoformat(hourly["next_run_at"])
    now = datetime.now(UTC)
    # India is UTC+05:30, so its whole hours fall on the half hour in UTC.
    assert now < next_hourly <= now + timedelta(hours=1) and next_hourly.minute == 30


def test_app_schedules_table_lists_every_app(scheduled: dict) -> None:
    every_app = json.loads(invoke("app", "schedules", "--json"))
    assert {"beat", "hourly"} <= {r["function_name"] for r in every_app if r["app_name"] == scheduled["app_name"]}
    table = invoke("app", "schedules", scheduled["app_name"])
    assert "Schedules" in table and "beat" in table and "every 1s" in table and "Asia/Kolkata" in table


def test_app_schedules_of_an_unknown_app() -> None:
    result = runner.invoke(cli, ["app", "schedules", unique_name("nope")])
    assert result.exit_code == 1
    assert "NotFoundError" in result.output and "not found" in result.output


def test_job_list_filters_by_status(scheduled: dict) -> None:
    app_name = scheduled["app_name"]

    def succeeded() -> list[dict]:
        return json.loads(invoke("job", "list", "--app", app_name, "--status", "succeeded", "--json"))

    jobs = wait_for(succeeded, timeout=15, what="a scheduled run to succeed")
    assert {j["status"] for j in jobs} == {"succeeded"} and {j["function_name"] for j in jobs} == {"beat"}
    # Case does not matter; a status that no job has yields an empty list.
    assert json.loads(invoke("job", "list", "--app", app_name, "--status", "CANCELLED", "--json")) == []
    assert "succeeded" in invoke("job", "list", "--app", app_name, "--status", "succeeded")


def test_job_list_rejects_an_unknown_status(apothic_runtime: LocalRuntime) -> None:
    result = runner.invoke(cli, ["job", "list", "--status", "done"])
    assert result.exit_code == 2
    flat = " ".join(result.output.replace("│", " ").split())
    assert "unknown job status 'done'" in flat
    assert "queued, running, succeeded, failed, cancelled, timed_out" in flat


def test_scheduled_function_with_required_arguments_fails_to_deploy(
    apothic_runtime: LocalRuntime, tmp_path: Path
) -> None:
    source = tmp_path / "bad_schedule.py"
    source.write_text(
        "import apothic\n"
        "app = apothic.App('badschedule')\n\n"
        "@app.function(schedule=apothic.Period(minutes=5))\n"
        "def needs(x):\n"
        "    return x\n"
    )
    result = runner.invoke(cli, ["deploy", str(source)])
    assert result.exit_code != 0
    assert "requires 'x'" in (result.output + repr(result.exception))
