"""``apothic sandbox create|exec|ls|shell|terminate``: long-lived containers to run commands in."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from apothic.cli._common import JSON_OPT, handle_errors

if TYPE_CHECKING:
    from apothic.sandbox import Sandbox

sandbox_app = typer.Typer(help="Manage sandboxes (containers that run commands).", no_args_is_help=True)

TARGET_ARG = typer.Argument(..., help="The sandbox's id (sandboxes:…) or name.")


def _attach(target: str) -> Sandbox:
    from apothic.sandbox import Sandbox

    return Sandbox.from_id(target) if target.startswith("sandboxes:") else Sandbox.from_name(target)


@sandbox_app.command("create")
@handle_errors
def create(
    name: str = typer.Option("", "--name", help="A name, unique among running sandboxes."),
    timeout_s: float = typer.Option(300.0, "--timeout", help="Seconds before the sandbox is terminated."),
    idle_timeout_s: float = typer.Option(0.0, "--idle-timeout", help="Terminate after this long without a call."),
    cpu: float = typer.Option(None, "--cpu", help="CPU cores it needs."),
    memory_mb: int = typer.Option(None, "--memory", help="Memory it needs, in MiB."),
    as_json: bool = JSON_OPT,
) -> None:
    """Create a sandbox and print its id once it is ready."""
    from apothic.cli._render import as_json as to_json
    from apothic.sandbox import Sandbox

    sb = Sandbox.create(name=name, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s, cpu=cpu, memory_mb=memory_mb)
    if as_json:
        typer.echo(to_json(sb.info()))
        return
    typer.echo(sb.sandbox_id)


@sandbox_app.command("exec")
@handle_errors
def exec_command(
    target: str = TARGET_ARG,
    command: list[str] = typer.Argument(..., help="The command and its arguments (put `--` before options)."),
    session: str = typer.Option("", "--session", help="Run in this named session's persistent shell."),
    workdir: str = typer.Option("", "--workdir", help="Working directory, relative to the sandbox's root."),
    timeout_s: float = typer.Option(0.0, "--timeout", help="Kill the command after this many seconds."),
    stdin: bool = typer.Option(False, "--stdin", help="Feed this command's standard input to it."),
) -> None:
    """Run a command in a sandbox, streaming its output; exits with the command's exit code."""
    sb = _attach(target)
    data = sys.stdin.buffer.read() if stdin else b""
    proc = sb.exec(*command, stdin=data, session=session, workdir=workdir, timeout_s=timeout_s)
    raise typer.Exit(_stream(proc))


def _stream(proc: object) -> int:
    """Copies a process's output to ours as it comes and returns its exit code."""
    import threading

    from apothic.sandbox import SandboxProcess

    assert isinstance(proc, SandboxProcess)

    def copy_err() -> None:
        for chunk in proc.stderr:
            typer.echo(chunk, nl=False, err=True)

    errors = threading.Thread(target=copy_err, daemon=True)
    errors.start()
    for chunk in proc.stdout:
        typer.echo(chunk, nl=False)
    errors.join()
    code = proc.wait()
    if proc.message:
        typer.echo(f"apothic: {proc.message}", err=True)
    return code


@sandbox_app.command("ls")
@handle_errors
def list_sandboxes(
    include_ended: bool = typer.Option(False, "--all", help="Also list sandboxes that have ended."),
    as_json: bool = JSON_OPT,
) -> None:
    """List sandboxes, newest first."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, table
    from apothic.sandbox import Sandbox

    infos = Sandbox.list(include_ended=include_ended)
    if as_json:
        typer.echo(to_json(infos))
        return
    rows = [[i.sandbox_id, i.name, i.status.value, short_time(i.created_at), i.reason] for i in infos]
    console.print(table("sandboxes", ["id", "name", "status", "created", "reason"], rows))


@sandbox_app.command("shell")
@handle_errors
def shell(
    target: str = TARGET_ARG,
    session: str = typer.Option("shell", "--session", help="The session whose shell the lines run in."),
) -> None:
    """Run lines typed at a prompt in a named session's shell, until `exit` or Ctrl-D.

    The session keeps its cwd, variables and background processes between lines.
    """
    sb = _attach(target)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            typer.echo(f"{sb.name or sb.sandbox_id}:{session}$ ", nl=False)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "logout"):
            return
        if not line.strip():
            continue
        _stream(sb.exec(shell=line.rstrip("\n"), session=session))


@sandbox_app.command("terminate")
@handle_errors
def terminate(target: str = TARGET_ARG) -> None:
    """Terminate a sandbox: its container stops."""
    info = _attach(target).terminate()
    typer.echo(f"terminated {info.sandbox_id}")


def register(app: typer.Typer) -> None:
    """Adds ``apothic sandbox`` to the CLI."""
    app.add_typer(sandbox_app, name="sandbox")
