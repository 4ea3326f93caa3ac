"""Sandboxes on every executor: exec, sessions, files and termination behave the same in
a process container and in a Docker container."""

from __future__ import annotations

import pytest

from apothic.exceptions import InvalidArgumentError, SandboxTerminatedError
from apothic.runtime import LocalRuntime
from apothic.sandbox import Sandbox, SandboxStatus


def test_sandbox_exec_sessions_and_files(executor_runtime: LocalRuntime) -> None:
    sandbox = Sandbox.create(timeout_s=120, cpu=1, memory_mb=256, client=executor_runtime.config)
    try:
        proc = sandbox.exec("sh", "-c", "echo out; echo err >&2; exit 5")
        assert (proc.stdout.read(), proc.stderr.read(), proc.wait()) == ("out\n", "err\n", 5)
        assert sandbox.exec("cat", stdin="in").stdout.read() == "in"
        assert sandbox.exec("no-such-command-xyz").wait() == 127
        timed = sandbox.exec("sleep", "30", timeout_s=0.5)
        assert timed.wait() == 124 and timed.timed_out
        assert sandbox.exec(shell="mkdir -p d && cd d && export V=1", session="s").wait() == 0
        assert sandbox.exec(shell='basename "$PWD"; echo $V', session="s").stdout.read() == "d\n1\n"
        sandbox.fs.write("d/f.txt", "data")
        assert sandbox.fs.read("d/f.txt") == b"data"
        assert [e.name for e in sandbox.fs.ls("d")] == ["f.txt"]
        with pytest.raises(InvalidArgumentError, match="escapes"):
            sandbox.fs.read("../../etc/passwd")
    finally:
        info = sandbox.terminate()
    assert info.status == SandboxStatus.TERMINATED
    with pytest.raises(SandboxTerminatedError):
        sandbox.exec("true").wait()
