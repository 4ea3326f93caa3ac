"""``apothic run``: run an app file ephemerally, or call a deployed function by name."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import os
import sys
import threading
import time
from typing import Any

import typer

from apothic.cli._render import console, err_console, print_event, print_marker


class _LineAtomicWriter(io.TextIOBase):
    """Stands in for stdout while events print from another thread: each thread's text is
    held until its newline, so a user's ``print`` and an event line never mix mid-line."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._pending = threading.local()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(self._target.isatty())

    def fileno(self) -> int:
        return int(self._target.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(self._target.encoding)

    def write(self, text: str) -> int:
        held = getattr(self._pending, "text", "") + text
        complete, sep, rest = held.rpartition("\n")
        self._pending.text = rest
        if sep:
            with self._lock:
                self._target.write(complete + sep)
                self._target.flush()
        return len(text)

    def flush(self) -> None:
        held = getattr(self._pending, "text", "")
        if held:
            self._pending.text = ""
            with self._lock:
                self._target.write(held)
        self._target.flush()


class _AppWatcher:
    """Prints an app's job events live, from the SDK's background loop."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.open_jobs: set[str] = set()
        self.subscribed = threading.Event()
        self._future: Any = None

    async def _watch(self) -> None:
        from apothic._client import get_client
        from apothic.models import JobEndEvent, JobEvent, JobQueuedEvent
        from apothic.watch import Reset

        subscribed = asyncio.Event()
        subscribed_task = asyncio.create_task(subscribed.wait())
        subscribed_task.add_done_callback(lambda _: self.subscribed.set())
        async for event in get_client().watch_app(self.app_name, subscribed):
            if not isinstance(event, JobEvent):
                if isinstance(event, Reset):
                    self.open_jobs.clear()  # their ends may be among the skipped events
                print_marker(event)
                continue
            if isinstance(event, JobQueuedEvent):
                self.open_jobs.add(event.job_id)
            elif isinstance(event, JobEndEvent):
                self.open_jobs.discard(event.job_id)
            print_event(event)

    def start(self) -> None:
        from apothic._sync import background_loop

        self._future = asyncio.run_coroutine_threadsafe(self._watch(), background_loop())
        self.subscribed.wait(5)

    def stop(self, drain_s: float = 1.0) -> None:
        deadline = time.monotonic() + drain_s
        while self.open_jobs and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._future is not None:
            self._future.cancel()


def run_file(target: str, app_name: str | None) -> None:
    """Deploys the file's app ephemerally, runs its entrypoint, and stops it."""
    from apothic.cli._build import BuildDisplay
    from apothic.cli._load import find_app, load_module
    from apothic.config import load_client_config

    file, _, entry = target.partition("::")
    runtime = None
    if load_client_config() is None:
        from apothic.runtime import LocalRuntime

        with console.status("No control plane configured: starting an embedded runtime…", spinner="dots"):
            runtime = LocalRuntime(db_url="mem://").start()
        os.environ["APOTHIC_BASE_URL"] = runtime.address
        os.environ["APOTHIC_API_KEY"] = runtime.api_key
        console.print(f"[dim]embedded runtime at {runtime.address} (stops when this run ends)[/dim]")
    try:
        app = find_app(load_module(file), app_name)
        func = _pick_entrypoint(app, entry)
        with console.status(f"Deploying [bold]{app.name}[/bold]…", spinner="dots") as status:
            ctx = app.run(progress=BuildDisplay(status, console))
            ctx.__enter__()
        console.print(f"[green]✓[/green] App [bold]{app.name}[/bold] running ({app.deployment_id})")
        for name, url in sorted(app.deployment.web_urls.items() if app.deployment else ()):
            console.print(f"  [bold]{name}[/bold] serves {url}")
        watcher = _AppWatcher(app.name)
        real_stdout = sys.stdout
        sys.stdout = _LineAtomicWriter(real_stdout)
        watcher.start()
        try:
            result = func()
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
        except BaseException as exc:
            watcher.stop(drain_s=0.3)
            sys.stdout.flush()
            sys.stdout = real_stdout
            ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        watcher.stop()
        sys.stdout.flush()
        sys.stdout = real_stdout
        ctx.__exit__(None, None, None)
        if result is not None:
            console.print(f"[bold]result:[/bold] {result!r}")
        console.print(f"[green]✓[/green] App [bold]{app.name}[/bold] stopped")
    finally:
        if runtime is not None:
            runtime.stop()


def _pick_entrypoint(app: Any, entry: str) -> Any:
    if entry:
        if entry in app.local_entrypoints:
            return app.local_entrypoints[entry]
        if entry in app.functions:
            fn = app.functions[entry]
            return lambda: fn.remote()
        raise typer.BadParameter(
            f"app {app.name!r} has no entrypoint or function {entry!r} "
            f"(entrypoints: {sorted(app.local_entrypoints)}, functions: {sorted(app.functions)})"
        )
    if len(app.local_entrypoints) == 1:
        return next(iter(app.local_entrypoints.values()))
    if not app.local_entrypoints:
        raise typer.BadParameter(
            f"app {app.name!r} has no @app.local_entrypoint(); name a function with FILE::function"
        )
    raise typer.BadParameter(
        f"app {app.name!r} has several entrypoints; pick one with FILE::name ({sorted(app.local_entrypoints)})"
    )


def run_function(app_name: str, function_name: str, payload: str, *, watch: bool, as_json: bool) -> None:
    """Calls a deployed function with JSON arguments and prints its JSON result."""
    from apothic import _serialization as ser
    from apothic._client import function_ref, get_client
    from apothic._sync import run_sync
    from apothic.job import Job

    try:
        json.loads(payload)
    except ValueError as exc:
        raise typer.BadParameter(f"--payload is not valid JSON: {exc}") from None
    data = payload.encode()
    ser.loads_args(ser.JSON, data)  # validates the shape before anything is sent
    ref = function_ref(app_name, function_name)

    async def invoke() -> Any:
        return await get_client().invoke(ref, data, ser.JSON)

    async def spawn() -> str:
        return await get_client().spawn(ref, data, ser.JSON)

    if watch:
        job = Job(run_sync(spawn(), "apothic run"))
        err_console.print(f"[dim]job {job.job_id}[/dim]")
        for event in job.watch(snapshot=False):
            print_event(event, show_job=False)
        value = job.wait()
    else:
        value = run_sync(invoke(), "apothic run").unwrap()
    with contextlib.suppress(TypeError):
        typer.echo(json.dumps(value) if as_json or not isinstance(value, str) else value)
