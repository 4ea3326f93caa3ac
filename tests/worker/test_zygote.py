"""The zygote: containers forked from a pre-imported process behave like exec'd ones.

The launcher tests run ``tests.worker.zygote_child`` (a stand-in container that reports
how it was started) through both launchers; the worker tests run real functions through
the session runtime, whose worker forks its containers from a zygote by default.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import apothic
from apothic.exceptions import FunctionTimeoutError, JobCancelledError, JobFailedError
from apothic.runtime import LocalRuntime
from apothic.server.server import create_server
from apothic.server.settings import ServerSettings
from apothic.testing import unique_name, wait_for
from apothic.worker import zygote as zygote_mod
from apothic.worker.agent import Worker
from apothic.worker.process import ExecLauncher, Launched, Launcher
from apothic.worker.settings import WorkerSettings
from apothic.worker.zygote import UNKNOWN_EXIT_CODE, ZygoteLauncher, startup_difference
from apothic.worker.zygote_pool import ZygotePool

CHILD = "tests.worker.zygote_child"
#: What the test zygotes start with; launches add to it.
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}


@dataclass
class Child:
    launched: Launched
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    report: dict[str, Any]

    async def line(self) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.reader.readline(), 30))  # type: ignore[no-any-return]

    async def end(self) -> tuple[int, bytes]:
        """Hangs up, then returns the exit code and the stderr tail."""
        self.writer.close()
        code = await asyncio.wait_for(self.launched.process.wait(), 30)
        return code, await self.launched.process.stderr_tail()


async def _start(launcher: Launcher, action: str = "exit0", **env: str) -> Child:
    launched = await launcher.launch({**BASE_ENV, "ZYGOTE_TEST_ACTION": action, **env}, module=CHILD)
    reader, writer = await asyncio.open_unix_connection(sock=launched.channel)
    report = json.loads(await asyncio.wait_for(reader.readline(), 30))
    return Child(launched, reader, writer, report)


def _assert_made_by(launcher: Launcher, child: Child) -> None:
    if isinstance(launcher, ZygoteLauncher):
        assert child.report["ppid"] == launcher.zygote_pid, "not forked from the zygote"
    else:
        assert child.report["ppid"] == os.getpid(), "not exec'd by this process"


async def _until(condition: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    """Polls ``condition`` on the event loop until it is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := condition()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)
    return value


def _gone(pid: int) -> bool:
    """The process exited (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture(params=["exec", "zygote"])
async def launcher(request: pytest.FixtureRequest) -> AsyncIterator[Launcher]:
    chosen: Launcher = ExecLauncher() if request.param == "exec" else ZygoteLauncher(env=BASE_ENV)
    chosen.warm()
    yield chosen
    await chosen.close()


@pytest.fixture
async def zygote() -> AsyncIterator[ZygoteLauncher]:
    launcher = ZygoteLauncher(env=BASE_ENV)
    launcher.warm()
    await _until(lambda: launcher.zygote_pid, what="the zygote to be ready")
    yield launcher
    await launcher.close()


# -- the launchers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "code", "stderr"),
    [
        ("exit0", 0, ""),
        ("exit3", 3, ""),
        ("sysexit", 4, ""),
        ("raise", 1, "RuntimeError: boom from the child"),
        ("stderr", 5, "last words on stderr"),
    ],
)
async def test_exit_codes_and_stderr_are_reported(launcher: Launcher, action: str, code: int, stderr: str) -> None:
    child = await _start(launcher, action)
    _assert_made_by(launcher, child)
    assert child.report["name"] == "__main__"
    seen, tail = await child.end()
    assert seen == child.launched.process.returncode == code
    assert stderr.encode() in tail if stderr else tail == b""


async def test_kill_ends_the_whole_process_group(launcher: Launcher) -> None:
    child = await _start(launcher, "grandchild")
    _assert_made_by(launcher, child)
    grandchild = (await child.line())["grandchild"]
    child.launched.process.kill()
    assert await asyncio.wait_for(child.launched.process.wait(), 30) == -signal.SIGKILL
    await _until(lambda: _gone(grandchild), what=f"grandchild {grandchild} to die")
    child.launched.process.kill()  # a second kill of an ended process is harmless
    child.writer.close()


async def test_a_forked_child_is_set_up_like_an_execd_one(zygote: ZygoteLauncher) -> None:
    forked = await _start(zygote, "wait")
    execd = await _start(ExecLauncher(), "wait")
    f, e = forked.report, execd.report
    assert f["ppid"] == zygote.zygote_pid and e["ppid"] == os.getpid()
    assert f["zygote_loaded"], "the zygote did not preload grpc"
    for report in (f, e):
        assert report["pid"] == report["pgid"] == report["sid"], "not a session leader"
        assert report["stdout_target"] == "/dev/null"
        assert report["sigchld_default"] and report["sigint_default"]
        assert report["wakeup_fd"] == -1
    for key in ("name", "argv0", "cwd"):
        assert f[key] == e[key], key
    # stdin, stdout, stderr, its socket and the directory it listed: no zygote descriptor leaked.
    assert len(f["fds"]) == len(e["fds"]) == 5
    for child in (forked, execd):
        assert (await child.end())[0] == 0


async def test_each_container_gets_exactly_its_own_environment() -> None:
    launcher = ZygoteLauncher(env={**BASE_ENV, "ONLY_IN_THE_WORKER": "1"})
    try:
        a = await _start(launcher, SHARED="a", ONLY_A="1")
        b = await _start(launcher, SHARED="b", ONLY_B="2")
        execd = await _start(ExecLauncher(), SHARED="a", ONLY_A="1")
        assert a.report["ppid"] == b.report["ppid"] == launcher.zygote_pid
        env_a, env_b, env_e = a.report["env"], b.report["env"], execd.report["env"]
        fd_a = env_a.pop("APOTHIC_CONTAINER_FD")
        env_e.pop("APOTHIC_CONTAINER_FD")
        assert env_a == env_e, "a forked container's environment differs from an exec'd one's"
        assert int(fd_a) in a.report["fds"]
        assert env_b["SHARED"] == "b" and "ONLY_A" not in env_b and env_b["ONLY_B"] == "2"
        assert a.report["random"] != b.report["random"], "forked children share the random module's state"
        assert "ONLY_IN_THE_WORKER" not in env_a and "ONLY_IN_THE_WORKER" not in env_b
        for child in (a, b, execd):
            await child.end()
    finally:
        await launcher.close()


def test_startup_difference_names_variables_read_at_interpreter_start() -> None:
    assert startup_difference({"A": "1", "PATH": "/x"}, {"A": "2"}) is None
    assert startup_difference({"PYTHONPATH": "/x"}, {}) == "PYTHONPATH"
    assert startup_difference({}, {"GRPC_ENABLE_FORK_SUPPORT": "1"}) == "GRPC_ENABLE_FORK_SUPPORT"
    assert startup_difference({"LD_PRELOAD": "x.so", "LANG": "C"}, {"LANG": "C"}) == "LD_PRELOAD"


async def test_a_different_startup_variable_is_execd(zygote: ZygoteLauncher, tmp_path: Path) -> None:
    child = await _start(zygote, PYTHONPATH=str(tmp_path))
    assert child.report["ppid"] == os.getpid(), "started from the zygote despite a different PYTHONPATH"
    assert child.report["env"]["PYTHONPATH"] == str(tmp_path)
    assert (await child.end())[0] == 0


async def test_a_killed_zygote_is_replaced_and_its_children_still_end(zygote: ZygoteLauncher) -> None:
    old = zygote.zygote_pid
    assert old is not None
    to_kill = await _start(zygote, "wait")
    to_finish = await _start(zygote, "wait")
    os.kill(old, signal.SIGKILL)
    new = await _until(lambda: zygote.zygote_pid not in (None, old) and zygote.zygote_pid, what="a new zygote")
    # The orphans kept running; their end is still seen, without the lost status.
    to_kill.launched.process.kill()
    assert await asyncio.wait_for(to_kill.launched.process.wait(), 30) == -signal.SIGKILL
    to_kill.writer.close()
    code, tail = await to_finish.end()
    assert code == UNKNOWN_EXIT_CODE
    assert b"zygote" in tail and b"unknown" in tail
    after = await _start(zygote)
    assert after.report["ppid"] == new
    assert (await after.end())[0] == 0


async def test_a_start_racing_the_zygote_death_falls_back_to_exec(zygote: ZygoteLauncher) -> None:
    pid = zygote.zygote_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _gone(pid), what="the zygote to die")  # blocking: the loop has not seen it yet
    child = await _start(zygote)
    assert child.report["ppid"] == os.getpid()
    assert (await child.end())[0] == 0
    await _until(lambda: zygote.zygote_pid not in (None, pid), what="a new zygote")


async def test_a_zygote_that_never_gets_ready_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygote_mod._ZygoteClient, "COMMAND", ("-c", "import sys; sys.exit(3)"))
    launcher = ZygoteLauncher(env=BASE_ENV)
    try:
        for _ in range(zygote_mod.MAX_START_FAILURES + 1):
            child = await _start(launcher)
            assert child.report["ppid"] == os.getpid()
            assert (await child.end())[0] == 0
        assert not launcher.enabled
        assert launcher.zygote_pid is None
    finally:
        await launcher.close()


# -- through a worker -------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_zygote(apothic_runtime: LocalRuntime) -> ZygoteLauncher:
    pool = apothic_runtime.workers[0].launcher
    assert isinstance(pool, ZygotePool), "zygotes are not the worker's default"
    return pool.default


def _ready_pid(launcher: ZygoteLauncher) -> int:
    return wait_for(lambda: launcher.zygote_pid, timeout=30, what="the worker's zygote")  # type: ignore[no-any-return]


def test_the_worker_forks_containers_from_its_zygote(
    apothic_runtime: LocalRuntime, worker_zygote: ZygoteLauncher
) -> None:
    app = apothic.App(unique_name("zygote"), client=apothic_runtime.config)

    @app.function(timeout_s=30)
    def where(x: int) -> dict[str, Any]:
        print(f"hello from the zygote {x}")
        print(f"and stderr {x}", file=sys.stderr)
        return {"ppid": os.getppid(), "pid": os.getpid(), "env": dict(os.environ)}

    app.deploy()
    try:
        job = where.spawn(7)
        out = job.wait(timeout=30)
        assert out["ppid"] == _ready_pid(worker_zygote)
        assert out["env"]["APOTHIC_BASE_URL"] == apothic_runtime.address
        assert out["env"]["APOTHIC_CONTAINER_ID"]
        logs = job.logs()
        assert "hello from the zygote 7\n" in logs and "and stderr 7\n" in logs
        assert where.remote(8)["pid"] == out["pid"], "the warm container was not reused"
    finally:
        app.stop()


def test_exit_codes_timeouts_and_cancels_through_the_zygote(
    apothic_runtime: LocalRuntime, worker_zygote: ZygoteLauncher
) -> None:
    app = apothic.App(unique_name("zygote-exits"), client=apothic_runtime.config)

    @app.function(timeout_s=30)
    def exit_three() -> None:
        os._exit(3)

    @app.function(timeout_s=30)
    def kill_self() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @app.function(timeout_s=1)
    def overrun() -> None:
        import time

        time.sleep(60)

    @app.function(timeout_s=60)
    def sleeper() -> int:
        import time

        print("started", flush=True)
        time.sleep(60)
        return os.getppid()

    app.deploy()
    try:
        with pytest.raises(JobFailedError, match="exited with code 3"):
            exit_three.remote()
        with pytest.raises(JobFailedError, match="SIGKILL"):
            kill_self.remote()
        with pytest.raises(FunctionTimeoutError):
            overrun.remote()
        job = sleeper.spawn()
        wait_for(lambda: "started" in job.logs(), timeout=30, what="the job to start")
        assert job.cancel() is apothic.JobStatus.CANCELLED
        with pytest.raises(JobCancelledError):
            job.wait(timeout=30)
    finally:
        app.stop()


def test_the_worker_replaces_a_killed_zygote(apothic_runtime: LocalRuntime, worker_zygote: ZygoteLauncher) -> None:
    old = _ready_pid(worker_zygote)
    os.kill(old, signal.SIGKILL)
    app = apothic.App(unique_name("zygote-replaced"), client=apothic_runtime.config)

    @app.function(timeout_s=30)
    def parent() -> int:
        return os.getppid()

    app.deploy()
    try:
        assert parent.remote() > 1  # started one way or another
        new = wait_for(lambda: worker_zygote.zygote_pid not in (None, old), timeout=30, what="a new zygote")
        assert new
    finally:
        app.stop()
    app.deploy()  # a new deployment: a new container, from the new zygote
    try:
        assert parent.remote() == worker_zygote.zygote_pid
    finally:
        app.stop()


async def test_a_worker_without_the_zygote_execs_its_containers(tmp_path: Path) -> None:
    plane = create_server(ServerSettings(db_url="", state_dir=tmp_path / "state", grpc_port=0))
    await plane.start()
    account = await plane.accounts.ensure_account("local")
    key = await plane.accounts.create_key(account)
    worker = Worker(
        WorkerSettings(
            base_url=plane.address, api_key=key, worker_id="workers:no-zygote", state_dir=tmp_path / "w", zygote=False
        )
    )
    assert isinstance(worker.launcher, ExecLauncher)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), 30)
        app = apothic.App("no-zygote", client=apothic.ClientConfig(base_url=plane.address, api_key=key))

        @app.function(serialized=True)
        def parent() -> int:
            return os.getppid()

        await app.aio.deploy()
        assert await parent.aio.remote() == os.getpid()
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 30)
        await plane.stop(grace=0.5)
