"""Every CLI command, through typer's CliRunner against the session runtime, and the
runtime commands (`up`, `server`, `worker`, `run FILE`) as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apothic.cli.main import app as cli
from apothic.testing import wait_for

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"
runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APOTHIC_")}
    env["APOTHIC_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


COMMANDS = [
    [],
    ["up"],
    ["server"],
    ["worker"],
    ["deploy"],
    ["run"],
    ["job"],
    ["job", "status"],
    ["job", "logs"],
    ["job", "watch"],
    ["job", "cancel"],
    ["job", "list"],
    ["deployment"],
    ["deployment", "list"],
    ["deployment", "stop"],
    ["app"],
    ["app", "list"],
    ["app", "schedules"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "apothic")
def test_every_command_has_help(command: list[str]) -> None:
    output = invoke(*command, "--help")
    assert "Usage:" in output


@pytest.fixture(scope="module")
def deployed(apothic_runtime) -> dict:
    out = invoke("deploy", str(QUICKSTART), "--json")
    return json.loads(out)


def test_deploy_prints_the_deployment(deployed: dict) -> None:
    assert deployed["app_name"] == "quickstart"
    assert deployed["deployment_id"].startswith("deployments:")
    assert set(deployed["function_names"]) == {"square", "slow_sum"}


def test_run_function_by_name_with_json_payload(deployed: dict) -> None:
    assert invoke("run", "square", "--app-name", "quickstart", "--payload", "[7]").strip() == "49"
    out = invoke("run", "slow_sum", "--app-name", "quickstart", "--payload", '{"args": [[1, 2, 3]]}', "--watch")
    assert "running total 6" in out
    assert "succeeded" in out
    assert out.strip().splitlines()[-1] == "6"


def test_run_unknown_function_fails_with_a_clear_error(deployed: dict) -> None:
    result = runner.invoke(cli, ["run", "nope", "--app-name", "quickstart"])
    assert result.exit_code == 1
    assert "NotFoundError" in result.output and "nope" in result.output


def test_run_rejects_bad_json_payload(deployed: dict) -> None:
    result = runner.invoke(cli, ["run", "square", "--app-name", "quickstart", "--payload", "{nope"])
    assert result.exit_code != 0
    assert "not valid JSON" in result.output


def test_job_commands(deployed: dict) -> None:
    jobs = json.loads(invoke("job", "list", "--app", "quickstart", "--json"))
    assert jobs, "the calls above left jobs"
    slow = next(j for j in jobs if j["function_name"] == "slow_sum")
    job_id = slow["job_id"]
    status = json.loads(invoke("job", "status", job_id, "--json"))
    assert status["status"] == "succeeded"
    assert "running total 6" in invoke("job", "logs", job_id)
    watched = invoke("job", "watch", job_id, "--snapshot", "--json")
    kinds = [json.loads(line)["kind"] for line in watched.splitlines()]
    assert kinds == ["job.snapshot"]
    replay = [json.loads(line) for line in invoke("job", "watch", job_id, "--json").splitlines()]
    assert [e["seq"] for e in replay] == list(range(1, len(replay) + 1))
    assert replay[-1]["kind"] == "job.end"
    assert "succeeded" in invoke("job", "cancel", job_id)
    table = invoke("job", "list")
    assert job_id[:20] in table.replace("\n", "") or "quickstart" in table


def test_job_status_of_unknown_job(apothic_runtime) -> None:
    result = runner.invoke(cli, ["job", "status", "jobs:ffffffffffffffff00000000"])
    assert result.exit_code == 1
    assert "NotFoundError" in result.output


def test_listing_commands(deployed: dict) -> None:
    apps = json.loads(invoke("app", "list", "--json"))
    assert any(a["name"] == "quickstart" and a["status"] == "live" for a in apps)
    deps = json.loads(invoke("deployment", "list", "--app", "quickstart", "--json"))
    assert deps[0]["deployment_id"] == deployed["deployment_id"]
    assert "quickstart" in invoke("app", "list")
    assert "quickstart" in invoke("deployment", "list")


def test_deployment_stop(apothic_runtime, tmp_path: Path) -> None:
    app_file = tmp_path / "stoppable.py"
    app_file.write_text("import apothic\napp = apothic.App('stoppable')\n\n@app.function()\ndef one():\n    return 1\n")
    dep = json.loads(invoke("deploy", str(app_file), "--json"))
    assert invoke("run", "one", "--app-name", "stoppable").strip() == "1"
    assert "stopped" in invoke("deployment", "stop", dep["deployment_id"])
    result = runner.invoke(cli, ["run", "one", "--app-name", "stoppable"])
    assert result.exit_code == 1
    assert "not deployed" in result.output or "stopped" in result.output


def test_run_file_starts_an_embedded_runtime(tmp_path: Path) -> None:
    """The README's demo: no configuration at all, `apothic run examples/quickstart.py`."""
    proc = subprocess.run(
        [sys.executable, "-m", "apothic.cli.main", "run", str(QUICKSTART)],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "embedded runtime" in out
    assert "square(7) = 49" in out
    assert "slow_sum = 10" in out
    assert "remote error came back as TypeError" in out
    assert "queued" in out and "running total 10" in out and "end succeeded" in out
    assert "stopped" in out


def test_run_file_entrypoint_selector(apothic_runtime, tmp_path: Path) -> None:
    app_file = tmp_path / "two_entries.py"
    app_file.write_text(
        "import apothic\napp = apothic.App('twoentries')\n\n@app.function()\ndef hello(name='world'):\n"
        "    return f'hello {name}'\n\n@app.local_entrypoint()\ndef first():\n    print('FIRST', hello.remote('a'))\n\n"
        "@app.local_entrypoint()\ndef second():\n    print('SECOND', hello.remote('b'))\n"
    )
    assert "SECOND hello b" in invoke("run", f"{app_file}::second")
    result = runner.invoke(cli, ["run", str(app_file)])
    assert result.exit_code != 0
    assert "several entrypoints" in result.output
    assert "hello world" in invoke("run", f"{app_file}::hello")


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "apothic.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_up_then_deploy_and_sdk_script_then_restart_keeps_state(tmp_path: Path) -> None:
    env = _clean_env(tmp_path / "home")
    config = tmp_path / "home" / "config.toml"
    up = _start(["up", "--port", "0", "--state-dir", str(tmp_path / "state")], env)
    try:
        wait_for(config.exists, timeout=60, what="apothic up to write the client profile")
        key_before = re.search(r'api_key = "([^"]+)"', config.read_text()).group(1)
        deploy = subprocess.run(
            [sys.executable, "-m", "apothic.cli.main", "deploy", str(QUICKSTART)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        script = tmp_path / "client.py"
        script.write_text(
            "import apothic\n"
            "sq = apothic.RemoteFunction.from_name('quickstart', 'square')\n"
            "print('RESULT', sq.remote(12))\n"
        )
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert "RESULT 144" in out.stdout, out.stdout + out.stderr
    finally:
        log = _stop(up)
    assert up.returncode == 0, log
    written = config.stat().st_mtime_ns
    up = _start(["up", "--port", "0", "--state-dir", str(tmp_path / "state")], env)
    try:
        wait_for(lambda: config.stat().st_mtime_ns != written, timeout=60, what="apothic up to restart")
        # The deployment survived the restart, and the saved key is still valid and reused.
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert "RESULT 144" in out.stdout, out.stdout + out.stderr
        assert re.search(r'api_key = "([^"]+)"', config.read_text()).group(1) == key_before
    finally:
        _stop(up)


def test_server_and_worker_run_separately(tmp_path: Path) -> None:
    env = _clean_env(tmp_path / "home")
    server = _start(["server", "--port", "0", "--state-dir", str(tmp_path / "state"), "--db-url", "mem://"], env)
    worker = None
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "control plane at" not in line and time.monotonic() < deadline:
            line = server.stdout.readline()
        match = re.search(r"control plane at (\S+);", line.replace("\x1b", ""))
        assert match, line
        address = re.sub(r"\[[0-9;]*m", "", match.group(1))
        key = (tmp_path / "state" / "api-key").read_text().strip()
        env = {**env, "APOTHIC_BASE_URL": address, "APOTHIC_API_KEY": key}
        worker = _start(["worker", "--labels", "zone=test", "--state-dir", str(tmp_path / "wstate")], env)
        deploy = subprocess.run(
            [sys.executable, "-m", "apothic.cli.main", "deploy", str(QUICKSTART)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        call = subprocess.run(
            [sys.executable, "-m", "apothic.cli.main", "run", "square", "--app-name", "quickstart", "--payload", "[5]"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert call.stdout.strip() == "25", call.stdout + call.stderr
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)


@pytest.mark.parametrize(
    ("command", "var", "value", "message"),
    [
        ("server", "APOTHIC_EVENT_LOOP", "trio", "APOTHIC_EVENT_LOOP must be one of uvloop, asyncio, got 'trio'"),
        ("up", "APOTHIC_GRPC_PORT", "x", "APOTHIC_GRPC_PORT must be an integer, got 'x'"),
        ("worker", "APOTHIC_EVENT_LOOP", "gevent", "APOTHIC_EVENT_LOOP must be one of uvloop, asyncio, got 'gevent'"),
    ],
)
def test_a_runtime_command_names_a_bad_setting_without_a_traceback(
    tmp_path: Path, command: str, var: str, value: str, message: str
) -> None:
    env = {**_clean_env(tmp_path / "home"), var: value}
    args = [command, "--state-dir", str(tmp_path / "state")]
    if command == "worker":
        env.update(APOTHIC_BASE_URL="127.0.0.1:1", APOTHIC_API_KEY="ak-x.y")
    proc = subprocess.run(
        [sys.executable, "-m", "apothic.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert "never awaited" not in proc.stderr, proc.stderr
