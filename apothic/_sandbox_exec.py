"""Commands inside a sandbox: one-shot processes and named sessions.

A one-shot command is a fresh process (``argv``, or ``sh -c`` for a command line) whose
output streams back as it comes. A session is one persistent shell per name: each command
is written to a script the shell sources (so ``cd``, ``export`` and ``cmd &`` carry over),
with its stdin redirected from a file, followed by a marker line carrying ``$?`` on stdout
and a marker on stderr, so the agent knows where a command's output ends.

A command past its timeout is killed with everything it started (exit code 124); a
session's command past its timeout takes its shell with it (the next command starts a new
one). A command that does not exist exits with 127 and says so on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apothic._sandbox_fs import AgentFailure, resolve

#: ``emit(stream, data)``: hands a chunk of output (``"stdout"`` or ``"stderr"``) on.
Emit = Callable[[str, bytes], None]
#: Seconds output is still read after a one-shot command exited (a background child it left
#: may hold its pipes open).
OUTPUT_GRACE_S = 0.5
_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Command:
    """One exec request."""

    argv: tuple[str, ...] = ()
    shell: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    session: str = ""
    timeout_s: float = 0.0
    stdin: bytes = b""
    #: More stdin as it comes, ``(data, eof)``, after ``stdin`` (one-shot commands only).
    stdin_stream: asyncio.Queue[tuple[bytes, bool]] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ExecResult:
    """How a command ended."""

    exit_code: int
    timed_out: bool = False
    message: str = ""


def command_env(extra: dict[str, str]) -> dict[str, str]:
    """The container's environment without the runtime's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APOTHIC_")}
    env.update(extra)
    return env


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILLs ``pid`` and every process it started."""
    for target in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def _pump(stream: asyncio.StreamReader | None, name: str, emit: Emit) -> None:
    assert stream is not None
    while chunk := await stream.read(_CHUNK):
        emit(name, chunk)


async def _feed(
    stdin: asyncio.StreamWriter | None, data: bytes, more: asyncio.Queue[tuple[bytes, bool]] | None
) -> None:
    assert stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        eof = more is None
        while True:
            if data:
                stdin.write(data)
                await stdin.drain()
            if eof:
                break
            assert more is not None
            data, eof = await more.get()
        stdin.close()


def _timeout_message(timeout_s: float) -> str:
    return f"the command ran longer than its timeout of {timeout_s:g}s and was killed"


async def run_once(cmd: Command, root: Path, emit: Emit) -> ExecResult:
    """Runs a command as a fresh process in ``root`` (or its workdir under it)."""
    cwd = resolve(root, cmd.workdir) if cmd.workdir else root
    if not cwd.is_dir():
        raise AgentFailure("INVALID_ARGUMENT", f"workdir {cmd.workdir!r} is not a directory in the sandbox")
    argv = list(cmd.argv) if cmd.argv else ["/bin/sh", "-c", cmd.shell]
    pipe = asyncio.subprocess.PIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=pipe, stdout=pipe, stderr=pipe, cwd=cwd, env=command_env(cmd.env)
        )
    except FileNotFoundError:
        message = f"command not found: {argv[0]!r}"
        emit("stderr", f"apothic: {message}\n".encode())
        return ExecResult(127, message=message)
    except OSError as exc:
        message = f"{argv[0]!r} cannot be run: {exc.strerror or exc}"
        emit("stderr", f"apothic: {message}\n".encode())
        return ExecResult(126, message=message)
    pumps = [
        asyncio.ensure_future(_pump(proc.stdout, "stdout", emit)),
        asyncio.ensure_future(_pump(proc.stderr, "stderr", emit)),
    ]
    feeder = asyncio.ensure_future(_feed(proc.stdin, cmd.stdin, cmd.stdin_stream))
    try:
        try:
            async with asyncio.timeout(cmd.timeout_s or None):
                await proc.wait()
        except TimeoutError:
            kill_tree(proc.pid)
            await proc.wait()
            await asyncio.wait(pumps, timeout=OUTPUT_GRACE_S)
            return ExecResult(124, timed_out=True, message=_timeout_message(cmd.timeout_s))
        await asyncio.wait(pumps, timeout=OUTPUT_GRACE_S)
        return ExecResult(_exit_code(proc.returncode or 0))
    finally:
        if proc.returncode is None:
            kill_tree(proc.pid)
        for task in (*pumps, feeder):
            task.cancel()


class Session:
    """A persistent shell; commands run in it one at a time."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, scratch: Path) -> None:
        self.name = name
        self.proc = proc
        self.scratch = scratch
        self.lock = asyncio.Lock()
        self.marker = b"\x1e" + secrets.token_hex(8).encode() + b":"
        self.sink: Emit | None = None
        self.waiters: dict[str, asyncio.Future[int | None]] = {}
        self.count = 0
        self.readers = [
            asyncio.ensure_future(self._read(proc.stdout, "stdout")),
            asyncio.ensure_future(self._read(proc.stderr, "stderr")),
        ]

    def _emit(self, stream: str, data: bytes) -> None:
        if data and self.sink is not None:
            self.sink(stream, data)

    def _done(self, stream: str, code: int | None) -> None:
        waiter = self.waiters.pop(stream, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(code)

    async def _read(self, reader: asyncio.StreamReader | None, stream: str) -> None:
        assert reader is not None
        marker, buf = self.marker, b""
        while chunk := await reader.read(_CHUNK):
            buf += chunk
            while True:
                at = buf.find(marker)
                if at < 0:
                    keep = _partial_suffix(buf, marker)
                    self._emit(stream, buf[: len(buf) - keep])
                    buf = buf[len(buf) - keep :]
                    break
                end = buf.find(b"\n", at + len(marker))
                self._emit(stream, buf[:at])
                if end < 0:
                    buf = buf[at:]
                    break
                code = buf[at + len(marker) : end]
                buf = buf[end + 1 :]
                self._done(stream, int(code) if code.isdigit() else 1)
        self._emit(stream, buf)
        self._done(stream, None)

    async def run(self, cmd: Command, root: Path, emit: Emit) -> ExecResult:
        """Runs one command in the shell; on timeout (or cancellation) the shell is killed."""
        async with self.lock:
            self.count += 1
            script, stdin = self.scratch / f"cmd-{self.count}.sh", self.scratch / f"stdin-{self.count}"
            lines = []
            if cmd.workdir:
                lines.append(f"cd -- {shlex.quote(str(resolve(root, cmd.workdir)))} || return 1")
            lines += [f"export {k}={shlex.quote(v)}" for k, v in cmd.env.items()]
            lines.append(shlex.join(cmd.argv) if cmd.argv else cmd.shell)
            script.write_text("\n".join(lines) + "\n")
            stdin.write_bytes(cmd.stdin)
            loop = asyncio.get_running_loop()
            out, err = loop.create_future(), loop.create_future()
            self.waiters = {"stdout": out, "stderr": err}
            self.sink = emit
            tag = self.marker[1:].decode()
            line = (
                f". {shlex.quote(str(script))} < {shlex.quote(str(stdin))}; "
                f"printf '\\036{tag}%d\\n' \"$?\"; printf '\\036{tag}0\\n' >&2\n"
            )
            finished = False
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line.encode())
                await self.proc.stdin.drain()
                async with asyncio.timeout(cmd.timeout_s or None):
                    code = await out
                    await err
                finished = True
            except TimeoutError:
                self.kill()
                return ExecResult(124, timed_out=True, message=_timeout_message(cmd.timeout_s) + "; its session ends")
            except (BrokenPipeError, ConnectionResetError):
                code = None
                finished = True
            finally:
                self.sink = None
                if not finished:
                    self.kill()
                script.unlink(missing_ok=True)
                stdin.unlink(missing_ok=True)
            if code is None:  # the shell exited (``exit``, or it was killed)
                returncode = await self.proc.wait()
                return ExecResult(_exit_code(returncode), message=f"the shell of session {self.name!r} exited")
            return ExecResult(code)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        """Kills the shell and everything it started."""
        if self.proc.returncode is None:
            kill_tree(self.proc.pid)
        for task in self.readers:
            task.cancel()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _partial_suffix(buf: bytes, marker: bytes) -> int:
    """The length of the longest end of ``buf`` that starts ``marker``."""
    for n in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-n:]):
            return n
    return 0


class Sessions:
    """The sandbox's named sessions, started on first use."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root = root
        self.scratch = scratch
        self._sessions: dict[str, Session] = {}

    async def run(self, cmd: Command, emit: Emit) -> ExecResult:
        """Runs ``cmd`` in its session's shell, starting the shell when needed."""
        if not _SESSION_RE.match(cmd.session):
            raise AgentFailure(
                "INVALID_ARGUMENT",
                f"session name {cmd.session!r} is invalid: use 1-64 letters, digits, '.', '-' or '_'",
            )
        if cmd.stdin_stream is not None:
            raise AgentFailure("INVALID_ARGUMENT", "stdin cannot be streamed to a session's command")
        session = self._sessions.get(cmd.session)
        if session is None or not session.alive:
            session = self._sessions[cmd.session] = await self._start(cmd.session)
        result = await session.run(cmd, self.root, emit)
        if not session.alive or result.timed_out:
            self._sessions.pop(cmd.session, None)
            session.kill()
        return result

    async def _start(self, name: str) -> Session:
        shell = shutil.which("bash") or "/bin/sh"
        argv = [shell, "--noprofile", "--norc"] if shell.endswith("bash") else [shell]
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=pipe, stdout=pipe, stderr=pipe, cwd=self.root, env=command_env({})
        )
        self.scratch.mkdir(parents=True, exist_ok=True)
        return Session(name, proc, Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch)))

    def close(self) -> None:
        """Kills every session's shell."""
        for session in self._sessions.values():
            session.kill()
        self._sessions.clear()
