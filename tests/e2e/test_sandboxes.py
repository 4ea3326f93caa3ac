"""Sandboxes on the real runtime: exec (streaming, stdin, exit codes, timeouts), named
sessions, files confined to the root, timeouts and idle timeouts, reattaching from another
process, listings and the ``apothic sandbox`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

import apothic
from apothic.cli.main import app as cli
from apothic.exceptions import (
    AlreadyExistsError,
    ImageBuildError,
    InvalidArgumentError,
    InvalidConfigError,
    NotFoundError,
    SandboxTerminatedError,
)
from apothic.runtime import LocalRuntime
from apothic.sandbox import Sandbox, SandboxStatus
from apothic.testing import unique_name


@pytest.fixture(scope="module")
def sb(apothic_runtime: LocalRuntime) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(name=unique_name("sb"), timeout_s=300, client=apothic_runtime.config)
    try:
        yield sandbox
    finally:
        sandbox.terminate()


def test_exec_streams_output_and_exit_codes(sb: Sandbox) -> None:
    proc = sb.exec("sh", "-c", "echo first; sleep 1; echo second; echo oops >&2; exit 3")
    started = time.monotonic()
    chunks = []
    for chunk in proc.stdout:
        chunks.append((chunk, time.monotonic() - started))
    assert "".join(c for c, _ in chunks) == "first\nsecond\n"
    assert chunks[0][1] < 0.8, "the first line must arrive before the command ends"
    assert proc.stderr.read() == "oops\n"
    assert proc.wait() == 3 and proc.returncode == 3 and not proc.timed_out
    assert sb.exec(shell="exit 0").wait() == 0
    raw = sb.exec("printf", "\\001\\002", text=False)
    assert raw.stdout.read() == b"\x01\x02"


def test_stdin_and_env_and_workdir(sb: Sandbox) -> None:
    proc = sb.exec("cat", stdin="line one\nline two\n")
    assert proc.stdout.read() == "line one\nline two\n" and proc.wait() == 0
    sb.fs.mkdir("work", exist_ok=True)
    proc = sb.exec(shell="pwd; echo $GREETING", env={"GREETING": "hi"}, workdir="work")
    out = proc.stdout.read().splitlines()
    assert out[0].endswith("/work") and out[1] == "hi"
    with pytest.raises(InvalidArgumentError, match="escapes"):
        sb.exec("ls", workdir="../..").wait()


def test_streamed_stdin_reaches_a_running_command(sb: Sandbox) -> None:
    proc = sb.exec("python3", "-u", "-c", _ECHO_LINES, stdin="first\n", open_stdin=True)
    assert proc.stdin is not None
    chunks = iter(proc.stdout)

    def line() -> str:
        text = ""
        while not text.endswith("\n"):
            text += next(chunks)  # output chunks need not follow lines
        return text

    assert line() == "got first\n"
    proc.stdin.write("second\n")  # sent after the command answered the first line
    assert line() == "got second\n"
    proc.stdin.write_eof()
    assert "".join(chunks) == "done\n" and proc.wait() == 0
    with pytest.raises(InvalidConfigError, match="already closed"):
        proc.stdin.write("late")
    with pytest.raises(InvalidConfigError, match="session"):
        sb.exec("cat", session="s", open_stdin=True)
    assert sb.exec("true").stdin is None


_ECHO_LINES = "import sys\nfor line in sys.stdin:\n    sys.stdout.write('got ' + line)\nprint('done')\n"


def test_exec_timeout_kills_the_command(sb: Sandbox) -> None:
    started = time.monotonic()
    proc = sb.exec("sh", "-c", "echo before; sleep 30; echo after", timeout_s=1)
    assert proc.wait() == 124
    assert time.monotonic() - started < 10
    assert proc.timed_out and "timeout of 1s" in proc.message
    assert proc.stdout.read() == "before\n"
    # The sandbox carries on.
    assert sb.exec("true").wait() == 0


def test_missing_command_is_reported(sb: Sandbox) -> None:
    proc = sb.exec("no-such-command-xyz", "arg")
    assert proc.wait() == 127
    assert "command not found" in proc.stderr.read() and "no-such-command-xyz" in proc.message
    assert sb.exec(shell="no-such-command-xyz").wait() == 127
    assert sb.exec(shell="no-such-command-xyz", session=unique_name("s")).wait() == 127
    with pytest.raises(InvalidConfigError, match="needs a command"):
        sb.exec()


def test_named_session_keeps_cwd_env_and_background_processes(sb: Sandbox) -> None:
    session = unique_name("s")
    assert sb.exec(shell="mkdir -p deep/er && cd deep/er && export COLOR=blue", session=session).wait() == 0
    assert sb.exec(shell="sleep 60 & echo $! > bg.pid", session=session).wait() == 0
    proc = sb.exec(shell='pwd; echo "$COLOR"; kill -0 "$(cat bg.pid)" && echo alive', session=session)
    lines = proc.stdout.read().splitlines()
    assert lines[0].endswith("/deep/er") and lines[1:] == ["blue", "alive"]
    assert proc.wait() == 0
    # Exit codes and stdin per command; another session starts fresh.
    assert sb.exec(shell="false", session=session).wait() == 1
    assert sb.exec("cat", stdin="fed", session=session).stdout.read() == "fed"
    other = sb.exec(shell='pwd; echo "[$COLOR]"', session=unique_name("s")).stdout.read().splitlines()
    assert not other[0].endswith("/deep/er") and other[1] == "[]"
    # A timeout kills the session's shell; the next command starts a new one.
    timed = sb.exec(shell="sleep 30", session=session, timeout_s=0.5)
    assert timed.wait() == 124 and timed.timed_out
    assert sb.exec(shell='echo "[$COLOR]"', session=session).stdout.read() == "[]\n"
    # `exit` ends the shell with its code.
    assert sb.exec(shell="exit 7", session=session).wait() == 7


def test_file_operations_round_trip(sb: Sandbox) -> None:
    base = unique_name("files")
    sb.fs.write(f"{base}/a/b.txt", "hello")
    sb.fs.write(f"{base}/a/b.txt", " world", append=True)
    assert sb.fs.read(f"{base}/a/b.txt") == b"hello world"
    assert sb.exec("cat", f"{base}/a/b.txt").stdout.read() == "hello world"
    sb.fs.mkdir(f"{base}/empty")
    with pytest.raises(AlreadyExistsError):
        sb.fs.mkdir(f"{base}/empty")
    sb.fs.mkdir(f"{base}/x/y/z", parents=True)
    entries = {e.name: e for e in sb.fs.ls(base)}
    assert set(entries) == {"a", "empty", "x"} and all(e.is_dir for e in entries.values())
    assert [(e.name, e.size) for e in sb.fs.ls(f"{base}/a")] == [("b.txt", 11)]
    with sb.fs.open(f"{base}/c.txt", "w") as fh:
        fh.write("via open")
    with sb.fs.open(f"{base}/c.txt") as fh:
        assert fh.read() == "via open"
    with pytest.raises(NotFoundError):
        sb.fs.read(f"{base}/missing.txt")
    with pytest.raises(InvalidArgumentError, match="not empty"):
        sb.fs.rm(f"{base}/x")
    sb.fs.rm(f"{base}/x", recursive=True)
    sb.fs.rm(f"{base}/c.txt")
    assert {e.name for e in sb.fs.ls(base)} == {"a", "empty"}


def test_paths_outside_the_root_are_refused(sb: Sandbox) -> None:
    for path in ("../../etc/passwd", "/etc/passwd", "a/../../outside"):
        with pytest.raises(InvalidArgumentError, match="escapes"):
            sb.fs.read(path)
        with pytest.raises(InvalidArgumentError, match="escapes"):
            sb.fs.write(path, "x")
    link = unique_name("link")
    assert sb.exec("ln", "-s", "/etc", link).wait() == 0
    with pytest.raises(InvalidArgumentError, match="symbolic link"):
        sb.fs.read(f"{link}/passwd")
    with pytest.raises(InvalidArgumentError, match="symbolic link"):
        sb.fs.ls(link)
    with pytest.raises(InvalidArgumentError, match="root"):
        sb.fs.rm(".", recursive=True)
    sb.fs.rm(link)  # the link itself goes; what it points to stays
    assert os.path.exists("/etc/passwd")


def test_timeout_terminates_and_reports(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    sandbox = Sandbox.create(timeout_s=2, client=config)
    assert sandbox.exec("true").wait() == 0
    info = sandbox.wait(timeout_s=30)
    assert info.status == SandboxStatus.TIMED_OUT and "timeout of 2s" in info.reason
    with pytest.raises(SandboxTerminatedError, match="timed out"):
        sandbox.exec("true").wait()
    with pytest.raises(SandboxTerminatedError):
        sandbox.fs.read("x")
    job = apothic.Job.from_id(sandbox.job_id, client=config).info()
    assert job.status == apothic.JobStatus.TIMED_OUT


def test_idle_timeout_terminates(apothic_runtime: LocalRuntime) -> None:
    sandbox = Sandbox.create(timeout_s=60, idle_timeout_s=1, client=apothic_runtime.config)
    assert sandbox.exec("sleep", "1.5").wait() == 0  # a running command is not idle
    info = sandbox.wait(timeout_s=30)
    assert info.status == SandboxStatus.TERMINATED and "idle" in info.reason


def test_reattach_from_another_process(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("shared")
    sandbox = Sandbox.create(name=name, client=config)
    sandbox.fs.write("note.txt", "from the first client")
    script = textwrap.dedent(
        f"""
        import json, apothic
        by_id = apothic.Sandbox.from_id({sandbox.sandbox_id!r})
        by_name = apothic.Sandbox.from_name({name!r})
        print(json.dumps([by_id.fs.read_text("note.txt"), by_name.exec("cat", "note.txt").stdout.read(),
                          by_name.sandbox_id]))
        """
    )
    env = {**os.environ, "APOTHIC_BASE_URL": config.base_url, "APOTHIC_API_KEY": config.api_key}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["from the first client", "from the first client", sandbox.sandbox_id]
    with pytest.raises(AlreadyExistsError, match=name):
        Sandbox.create(name=name, client=config)
    assert sandbox.sandbox_id in {i.sandbox_id for i in Sandbox.list(client=config)}
    info = sandbox.terminate()
    assert info.status == SandboxStatus.TERMINATED
    with pytest.raises(SandboxTerminatedError, match="terminated"):
        Sandbox.from_id(sandbox.sandbox_id, client=config)
    with pytest.raises(SandboxTerminatedError, match="terminated"):
        Sandbox.from_name(name, client=config)
    with pytest.raises(NotFoundError):
        Sandbox.from_id("sandboxes:0000000000000000deadbeef", client=config)
    assert sandbox.sandbox_id not in {i.sandbox_id for i in Sandbox.list(client=config)}
    ended = {i.sandbox_id: i for i in Sandbox.list(include_ended=True, client=config)}
    assert ended[sandbox.sandbox_id].status == SandboxStatus.TERMINATED
    # The job that ran it is visible like any other, cancelled by the termination.
    job = apothic.Job.from_id(sandbox.job_id, client=config).info()
    assert job.status == apothic.JobStatus.CANCELLED and job.app_name == info.app_name
    # A new sandbox may take the name once the old one has ended.
    again = Sandbox.create(name=name, client=config)
    assert Sandbox.from_name(name, client=config).sandbox_id == again.sandbox_id
    again.terminate()


def test_create_with_a_missing_secret_fails(apothic_runtime: LocalRuntime) -> None:
    with pytest.raises(NotFoundError, match="no-such-secret"):
        Sandbox.create(secrets=[apothic.Secret.from_name("no-such-secret")], client=apothic_runtime.config)
    with pytest.raises(InvalidConfigError, match="timeout_s"):
        Sandbox.create(timeout_s=0, client=apothic_runtime.config)


def test_a_sandbox_that_cannot_start_fails_create_with_the_reason(apothic_runtime: LocalRuntime) -> None:
    with pytest.raises(SandboxTerminatedError, match="could not start: .*labels.zone == 'mars'"):
        Sandbox.create(labels={"zone": "mars"}, client=apothic_runtime.config)


def test_secrets_reach_commands(apothic_runtime: LocalRuntime) -> None:
    sandbox = Sandbox.create(secrets=[apothic.Secret.from_dict({"TOKEN": "t0k"})], client=apothic_runtime.config)
    try:
        assert sandbox.exec(shell="echo $TOKEN").stdout.read() == "t0k\n"
    finally:
        sandbox.terminate()


def test_images_reach_commands_and_a_bad_image_fails_create(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    image = apothic.Image.debian_slim().env({"IMAGE_MODE": "sandboxed"})
    sandbox = Sandbox.create(image=image, client=config)
    try:
        assert sandbox.exec(shell="echo $IMAGE_MODE").stdout.read() == "sandboxed\n"
    finally:
        sandbox.terminate()
    bad = apothic.Image.debian_slim().run_commands("echo about-to-fail", "exit 3")
    with pytest.raises(ImageBuildError, match="exited with code 3"):
        Sandbox.create(image=bad, client=config)


async def test_async_forms(apothic_runtime: LocalRuntime) -> None:
    sandbox = await Sandbox.create.aio(client=apothic_runtime.config)
    try:
        proc = await sandbox.aio.exec("sh", "-c", "echo a; echo b >&2")
        assert "".join([c async for c in proc.stdout]) == "a\n"
        assert await proc.stderr.aio.read() == "b\n"
        assert await proc.aio.wait() == 0
        await sandbox.aio.fs.write("f.txt", b"bytes")
        assert await sandbox.fs.aio.read("f.txt") == b"bytes"
        assert [e.name for e in await sandbox.aio.fs.ls()] == ["f.txt"]
        again = await Sandbox.from_id.aio(sandbox.sandbox_id, client=apothic_runtime.config)
        assert (await again.aio.info()).status == SandboxStatus.RUNNING
        with pytest.raises(apothic.exceptions.BlockingInAsyncContextError, match="aio"):
            sandbox.exec("true")
    finally:
        await sandbox.aio.terminate()


def test_cli_commands(apothic_runtime: LocalRuntime) -> None:
    runner = CliRunner()
    name = unique_name("cli")

    def run(*args: str, code: int = 0, stdin: str | None = None) -> str:
        result = runner.invoke(cli, list(args), input=stdin, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    sandbox_id = run("sandbox", "create", "--name", name).strip()
    assert sandbox_id.startswith("sandboxes:")
    assert run("sandbox", "exec", name, "--", "sh", "-c", "echo out; exit 4", code=4) == "out\n"
    assert run("sandbox", "exec", "--stdin", sandbox_id, "cat", stdin="piped") == "piped"
    listed = json.loads(run("sandbox", "ls", "--json"))
    assert {"sandbox_id": sandbox_id, "name": name, "status": "running"}.items() <= next(
        s for s in listed if s["sandbox_id"] == sandbox_id
    ).items()
    assert name in run("sandbox", "ls")
    out = run("sandbox", "shell", name, stdin="cd /tmp\nexport V=42\npwd\necho $V\nexit\n")
    assert out.splitlines() == ["/tmp", "42"]
    assert run("sandbox", "terminate", name) == f"terminated {sandbox_id}\n"
    assert "SandboxTerminatedError" in run("sandbox", "exec", sandbox_id, "true", code=1)


def test_app_sandbox_creates_on_the_apps_control_plane(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("sbapp"), client=apothic_runtime.config)
    sb = app.sandbox(timeout_s=60)
    try:
        proc = sb.exec("echo", "from app.sandbox")
        assert proc.wait() == 0
        assert proc.stdout.read().strip() == "from app.sandbox"
    finally:
        sb.terminate()
