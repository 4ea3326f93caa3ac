"""The ``apothic`` command line (typer + rich).

Heavy modules (grpc stubs, the server, the worker) are imported inside commands so
``apothic --help`` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from apothic.cli import (
    billing_cmds,
    dict_cmds,
    queue_cmds,
    runtime_cmds,
    sandbox_cmds,
    secret_cmds,
    volume_cmds,
    web_cmds,
)
from apothic.cli._common import JSON_OPT, handle_errors

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="apothic",
    help="Apothic: a self-hostable serverless runtime for Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
job_app = typer.Typer(help="Inspect and control jobs.", no_args_is_help=True)
deployment_app = typer.Typer(help="List and manage deployments.", no_args_is_help=True)
app_app = typer.Typer(help="List apps and their schedules.", no_args_is_help=True)
app.add_typer(job_app, name="job")
app.add_typer(deployment_app, name="deployment")
app.add_typer(app_app, name="app")
runtime_cmds.register(app)
billing_cmds.register(app)
dict_cmds.register(app)
queue_cmds.register(app)
sandbox_cmds.register(app)
secret_cmds.register(app)
volume_cmds.register(app)
web_cmds.register(deployment_app)


def _client_call(coro_factory: Callable[[Any], Any]) -> Any:
    from apothic._client import get_client
    from apothic._sync import run_sync

    async def call() -> Any:
        return await coro_factory(get_client())

    return run_sync(call(), "apothic CLI")


# -- deploy and run ------------------------------------------------------------------


@app.command()
@handle_errors
def deploy(
    file: str = typer.Argument(..., help="Python file that defines an apothic.App."),
    app_name: str = typer.Option(None, "--app", help="Which App, when the file defines several."),
    as_json: bool = JSON_OPT,
) -> None:
    """Deploy an app: it stays live until stopped, and calls by name go to it."""
    from apothic.cli._build import BuildDisplay
    from apothic.cli._load import find_app, load_module
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, err_console

    target = find_app(load_module(file), app_name)
    with console.status(f"Deploying [bold]{target.name}[/bold]…", spinner="dots") as status:
        target.deploy(progress=BuildDisplay(status, err_console if as_json else console))
    info = target.deployment
    assert info is not None
    if as_json:
        typer.echo(to_json(info))
        return
    console.print(
        f"[green]✓[/green] Deployed [bold]{info.app_name}[/bold] version {info.version} "
        f"({info.deployment_id}) with {len(info.function_names)} function(s): {', '.join(info.function_names)}"
    )
    for name, url in sorted(info.web_urls.items()):
        console.print(f"  [bold]{name}[/bold] serves {url}")


@app.command(context_settings={"allow_extra_args": False})
@handle_errors
def run(
    target: str = typer.Argument(..., help="FILE[::entrypoint] to run an app, or a deployed FUNCTION name."),
    app_name: str = typer.Option(None, "--app-name", "--app", help="App of FUNCTION (or which App in FILE)."),
    payload: str = typer.Option("[]", "--payload", help="JSON arguments for FUNCTION: [args] or {args, kwargs}."),
    watch: bool = typer.Option(False, "--watch", help="Stream the job's events while it runs."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run an app file ephemerally (its local entrypoint), or call a deployed function.

    `apothic run app.py` deploys the app for the duration of the run, calls its
    @app.local_entrypoint, shows live job events and stops the app afterwards. When no
    control plane is configured it starts an embedded one for the run.

    `apothic run square --app-name demo --payload '[7]'` calls a deployed function.
    """
    from apothic.cli import run_cmd

    file_part = target.split("::", 1)[0]
    if file_part.endswith(".py") or Path(file_part).is_file():
        run_cmd.run_file(target, app_name)
    else:
        if not app_name:
            raise typer.BadParameter("calling a deployed function needs --app-name")
        run_cmd.run_function(app_name, target, payload, watch=watch, as_json=as_json)


# -- jobs ------------------------------------------------------------------------------


@job_app.command("status")
@handle_errors
def job_status(job_id: str, as_json: bool = JSON_OPT) -> None:
    """Show a job's status."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, status_text
    from apothic.job import Job

    info = Job(job_id).info()
    if as_json:
        typer.echo(to_json(info))
        return
    console.print(f"[bold]{info.job_id}[/bold] {info.app_name}.{info.function_name}: {status_text(info.status)}")
    console.print(f"  attempt {info.attempt}, created {short_time(info.created_at)}, ended {short_time(info.ended_at)}")
    if info.reason:
        console.print(f"  reason: {info.reason}")


@job_app.command("logs")
@handle_errors
def job_logs(job_id: str) -> None:
    """Print what a job wrote to stdout and stderr."""
    from apothic.job import Job

    typer.echo(Job(job_id).logs(), nl=False)


@job_app.command("watch")
@handle_errors
def job_watch(
    job_id: str,
    snapshot: bool = typer.Option(False, "--snapshot", help="Start with a snapshot of the job."),
    after_seq: int = typer.Option(0, "--after-seq", help="Resume after this event number."),
    as_json: bool = JSON_OPT,
) -> None:
    """Stream a job's events until it ends.

    Only events that are durable are shown, so a seq printed here still names the same event
    after a control-plane restart: `--after-seq N` resumes right after it. Without --json a
    line marks where the snapshot ends; --json prints one object per event.
    """
    from apothic.cli._render import print_event, print_marker
    from apothic.job import Job
    from apothic.models import JobEvent

    for item in Job(job_id).watch(snapshot=snapshot, after_seq=after_seq, markers=not as_json):
        if not isinstance(item, JobEvent):
            print_marker(item)
        elif as_json:
            typer.echo(json.dumps({"kind": item.kind, "seq": item.seq, "job_id": item.job_id}))
        else:
            print_event(item, show_job=False)


@job_app.command("cancel")
@handle_errors
def job_cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    from apothic.cli._render import console, status_text
    from apothic.job import Job

    status = Job(job_id).cancel()
    console.print(f"{job_id}: {status_text(status)}")


@job_app.command("list")
@handle_errors
def job_list(
    app_name: str = typer.Option("", "--app", help="Only this app's jobs."),
    status: str = typer.Option(
        "", "--status", help="Only jobs in this state: queued, running, succeeded, failed, cancelled, timed_out."
    ),
    limit: int = typer.Option(50, "--limit", help="At most this many."),
    as_json: bool = JSON_OPT,
) -> None:
    """List recent jobs, newest first."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, status_text, table
    from apothic.models import JobStatus

    wanted: JobStatus | None = None
    if status:
        try:
            wanted = JobStatus(status.strip().lower())
        except ValueError:
            choices = ", ".join(s.value for s in JobStatus)
            raise typer.BadParameter(
                f"unknown job status {status!r}; use one of: {choices}", param_hint="--status"
            ) from None
    jobs = _client_call(lambda c: c.list_jobs(app_name=app_name, status=wanted, limit=limit))
    if as_json:
        typer.echo(to_json(jobs))
        return
    rows = [
        [j.job_id, j.app_name, j.function_name, status_text(j.status), j.attempt, short_time(j.created_at)]
        for j in jobs
    ]
    console.print(table("Jobs", ["job", "app", "function", "status", "attempt", "created"], rows))


# -- deployments and apps ------------------------------------------------------------------


@deployment_app.command("list")
@handle_errors
def deployment_list(
    app_name: str = typer.Option("", "--app", help="Only this app's deployments."),
    as_json: bool = JSON_OPT,
) -> None:
    """List deployments, newest first."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, status_text, table

    deps = _client_call(lambda c: c.list_deployments(app_name))
    if as_json:
        typer.echo(to_json(deps))
        return
    rows = [
        [
            d.deployment_id,
            d.app_name,
            d.version,
            status_text(d.status),
            ", ".join(d.function_names),
            short_time(d.created_at),
        ]
        for d in deps
    ]
    console.print(table("Deployments", ["deployment", "app", "version", "status", "functions", "created"], rows))


@deployment_app.command("stop")
@handle_errors
def deployment_stop(deployment_id: str) -> None:
    """Stop a deployment: its containers exit and calls to it fail."""
    from apothic.cli._render import console, status_text

    dep = _client_call(lambda c: c.stop_deployment(deployment_id))
    console.print(f"{dep.deployment_id}: {status_text(dep.status)}")


@app_app.command("list")
@handle_errors
def app_list(as_json: bool = JSON_OPT) -> None:
    """List apps and their live versions."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, status_text, table

    apps = _client_call(lambda c: c.list_apps())
    if as_json:
        typer.echo(to_json(apps))
        return
    rows = [
        [
            a.name,
            a.version,
            status_text(a.status),
            a.live_deployment_id,
            ", ".join(a.function_names),
            short_time(a.updated_at),
        ]
        for a in apps
    ]
    console.print(table("Apps", ["app", "version", "status", "deployment", "functions", "updated"], rows))


@app_app.command("schedules")
@handle_errors
def app_schedules(
    app_name: str = typer.Argument("", help="Only this app's schedules (every app's when left out)."),
    as_json: bool = JSON_OPT,
) -> None:
    """List scheduled functions of live deployments, with their next run."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, table

    schedules = _client_call(lambda c: c.list_schedules(app_name))
    if as_json:
        typer.echo(to_json(schedules))
        return
    rows = [
        [s.app_name, s.function_name, s.schedule, short_time(s.next_run_at), short_time(s.last_run_at)]
        for s in schedules
    ]
    console.print(table("Schedules", ["app", "function", "schedule", "next run", "last run"], rows))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
