"""``apothic up``, ``apothic server`` and ``apothic worker``: running the runtime."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import socket
from pathlib import Path
from typing import Any

import typer

from apothic.cli._common import handle_errors


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=True)],
    )


async def _until_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _state_dir(value: Path | None) -> Path:
    from apothic.config import server_env

    return (value or server_env().state_dir).expanduser().resolve()


def register(app: typer.Typer) -> None:
    """Adds the runtime commands to the CLI."""

    @app.command()
    @handle_errors
    def up(
        state_dir: Path = typer.Option(None, "--state-dir", help="State directory (default ~/.apothic)."),
        port: int = typer.Option(None, "--port", help="gRPC port (default 50051; 0 picks a free one)."),
        http_port: int = typer.Option(None, "--http-port", help="HTTP ingress port for web services (default 8000)."),
        host: str = typer.Option(None, "--host", help="Address to listen on."),
        db_url: str = typer.Option(None, "--db-url", help="SurrealDB URL (default surrealkv under the state dir)."),
        workers: int = typer.Option(1, "--workers", min=0, help="Local workers to start."),
        profile: str = typer.Option("local", "--profile", help="Client profile to write."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Run a control plane with embedded SurrealDB and a local worker, in the foreground.

        State survives restarts. The client config gets a profile pointing at it, so
        `apothic deploy` and scripts using the SDK talk to it.
        """
        from apothic.cli._render import console
        from apothic.config import load_client_config, server_env, write_profile
        from apothic.runtime import LocalRuntime, run_serving, tune_gc_for_serving

        _setup_logging(verbose)
        env = server_env()
        folder = _state_dir(state_dir)
        existing = None
        try:
            existing = load_client_config(profile=profile)
        except Exception:
            existing = None
        runtime = LocalRuntime(
            db_url=db_url if db_url is not None else (env.db_url or ""),
            state_dir=folder,
            host=host or env.host,
            port=env.grpc_port if port is None else port,
            http_port=env.http_port if http_port is None else http_port,
            workers=workers,
            api_key=existing.api_key if existing else None,
        )

        async def main() -> None:
            await runtime.astart()
            tune_gc_for_serving()
            path = write_profile(profile, base_url=runtime.address, api_key=runtime.api_key)
            console.print(f"[green]✓[/green] Apothic is up at [bold]{runtime.address}[/bold] ({workers} worker(s))")
            console.print(f"  web services: {runtime.http_url}/<app>/<function>/")
            console.print(f"  state: {folder}   client profile {profile!r} written to {path}")
            console.print("  Press Ctrl-C to stop.")
            try:
                await _until_signal()
            finally:
                console.print("Stopping…")
                await runtime.astop()

        run_serving(main())

    @app.command()
    @handle_errors
    def server(
        state_dir: Path = typer.Option(None, "--state-dir", help="State directory (default ~/.apothic)."),
        port: int = typer.Option(None, "--port", help="gRPC port."),
        http_port: int = typer.Option(None, "--http-port", help="HTTP ingress port for web services (default 8000)."),
        host: str = typer.Option(None, "--host", help="Address to listen on."),
        db_url: str = typer.Option(None, "--db-url", help="SurrealDB URL: surrealkv://PATH, mem://, ws://HOST:PORT."),
        key_file: Path = typer.Option(
            None, "--key-file", help="Where the local API key is kept (default STATE_DIR/api-key)."
        ),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Run only the control plane (workers connect with `apothic worker`)."""
        from apothic.cli._render import console
        from apothic.config import server_env
        from apothic.runtime import LOCAL_ACCOUNT, run_serving, tune_gc_for_serving
        from apothic.server.errors import Unauthenticated
        from apothic.server.server import create_server
        from apothic.server.settings import ServerSettings

        _setup_logging(verbose)
        env = server_env()
        folder = _state_dir(state_dir)
        settings = ServerSettings(
            db_url=db_url if db_url is not None else (env.db_url or ""),
            state_dir=folder,
            host=host or env.host,
            grpc_port=env.grpc_port if port is None else port,
            http_port=env.http_port if http_port is None else http_port,
            secret_key=env.secret_key,
        )
        keys = key_file or folder / "api-key"

        async def main() -> None:
            plane = create_server(settings)
            await plane.start()
            tune_gc_for_serving()
            account = await plane.accounts.ensure_account(LOCAL_ACCOUNT)
            key = keys.read_text().strip() if keys.exists() else ""
            try:
                valid = bool(key) and await plane.accounts.verify(key) == account
            except Unauthenticated:
                valid = False
            if not valid:
                key = await plane.accounts.create_key(account)
                keys.parent.mkdir(parents=True, exist_ok=True)
                keys.write_text(key + "\n")
                keys.chmod(0o600)
            console.print(f"[green]✓[/green] control plane at [bold]{plane.address}[/bold]; API key in {keys}")
            console.print(f"  web services: {plane.http_url}/<app>/<function>/")
            try:
                await _until_signal()
            finally:
                await plane.stop()

        run_serving(main())

    @app.command()
    @handle_errors
    def worker(
        base_url: str = typer.Option(None, "--base-url", help="Control-plane address (default: configured)."),
        api_key: str = typer.Option(None, "--api-key", help="API key (default: configured)."),
        worker_id: str = typer.Option(None, "--worker-id", help="Stable worker id."),
        labels: str = typer.Option("", "--labels", help="Extra offer labels, k=v,k=v."),
        state_dir: Path = typer.Option(None, "--state-dir", help="Where archives are unpacked."),
        executor: str = typer.Option(
            "process", "--executor", help="How containers run: process (default) or docker (the local Docker daemon)."
        ),
        cost_per_hour: float = typer.Option(
            0.0,
            "--cost-per-hour",
            help="What this machine costs, in USD per hour: containers are charged their share of it "
            "(default 0: free, never charged).",
        ),
        region: str = typer.Option("", "--region", help="Where this machine is (matched by region= on functions)."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Run a worker that dials the control plane and runs containers."""
        import math

        from apothic.config import load_client_config, parse_labels, worker_env
        from apothic.runtime import run_serving
        from apothic.worker.agent import Worker
        from apothic.worker.settings import EXECUTORS, WorkerSettings

        if executor not in EXECUTORS:
            raise typer.BadParameter(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        if not math.isfinite(cost_per_hour) or cost_per_hour < 0:
            raise typer.BadParameter(f"--cost-per-hour must be a number of USD, 0 or more, got {cost_per_hour!r}")
        _setup_logging(verbose)
        config = load_client_config(base_url=base_url, api_key=api_key)
        if config is None:
            raise typer.BadParameter("no control plane configured: pass --base-url and --api-key or run `apothic up`")
        env = worker_env()
        folder = _state_dir(state_dir) / "worker"
        wid = worker_id or env.worker_id or _default_worker_id(folder)
        settings = WorkerSettings(
            base_url=config.base_url,
            api_key=config.api_key,
            worker_id=wid,
            state_dir=folder / wid.replace(":", "_"),
            labels={**env.labels, **parse_labels(labels)},
            executor=executor,
            region=region,
            cost_per_hour=cost_per_hour,
        )

        async def main() -> None:
            agent = Worker(settings)
            task = asyncio.create_task(agent.run())
            waiter: Any = asyncio.create_task(_until_signal())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            await agent.stop()
            await task

        run_serving(main())


def _default_worker_id(folder: Path) -> str:
    digest = hashlib.sha256(f"{socket.gethostname()}:{folder}".encode()).hexdigest()[:8]
    return f"workers:{socket.gethostname().split('.')[0]}{digest}".replace("-", "")
