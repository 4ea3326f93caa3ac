"""``apothic deployment logs``: a deployment's web services, their health and startup log."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import typer

from apothic.cli._common import JSON_OPT, handle_errors

#: Characters of a health answer's body printed.
BODY_CHARS = 2000


def _health(url: str, timeout: float) -> dict[str, Any]:
    """GETs ``url``; the answer's status, body and ``startup_log_tail`` (from a JSON body:
    the ingress names a service's startup output when it failed to start)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the ingress's own URL
            status, body = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return {"url": url, "status": 0, "body": "", "startup_log_tail": "", "error": str(exc)}
    text = body.decode("utf-8", "replace")
    tail = ""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            tail = str(doc.get("startup_log_tail") or "")
    except ValueError:
        pass
    return {"url": url, "status": status, "body": text[:BODY_CHARS], "startup_log_tail": tail, "error": ""}


def register(deployment_app: typer.Typer) -> None:
    """Adds ``deployment logs`` to the ``deployment`` command group."""

    @deployment_app.command("logs")
    @handle_errors
    def logs(
        deployment: str = typer.Argument(..., help="Deployment id, or an app name (its newest deployment)."),
        function_name: str = typer.Option(None, "--function-name", help="Only this web service."),
        health_path: str = typer.Option("/", "--health-path", help="Path of the services' health endpoint."),
        timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for a service to start."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing the services' output (Ctrl-C ends)."),
        as_json: bool = JSON_OPT,
    ) -> None:
        """Check a deployment's web services: GET each one's health path through the ingress
        (starting a container when none runs) and print the answer, with the startup log
        tail of a service that failed to start, then each service's recent output. With
        --follow the output streams live, from before the health checks (so a service's
        startup shows as it happens). Exits 1 when one is unhealthy."""
        from apothic._client import get_client
        from apothic._sync import run_sync
        from apothic.cli._render import console
        from apothic.exceptions import NotFoundError

        async def find() -> Any:
            client = get_client()
            if deployment.startswith("deployments:"):
                return await client.get_deployment(deployment)
            deps = await client.list_deployments(deployment, limit=1)
            if not deps:
                raise NotFoundError(f"app {deployment!r} has no deployments")
            return deps[0]

        dep = run_sync(find(), "apothic deployment logs")
        services = dict(dep.web_urls)
        if function_name is not None:
            if function_name not in services:
                raise NotFoundError(
                    f"deployment {dep.deployment_id} has no web service {function_name!r}; "
                    f"its web services: {', '.join(sorted(services)) or 'none'}"
                )
            services = {function_name: services[function_name]}
        path = health_path if health_path.startswith("/") else "/" + health_path

        async def tail(name: str) -> list[Any]:
            return [line async for line in get_client().tail_service_logs(dep.deployment_id, name)]

        async def follow_one(name: str) -> None:
            async for line in get_client().tail_service_logs(dep.deployment_id, name, follow=True):
                console.print(f"[dim]{name} {line.stream}[/dim] {line.data.rstrip()}", highlight=False)

        async def check() -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
            followers = [asyncio.ensure_future(follow_one(name)) for name in services] if follow else []
            try:
                results = {
                    name: await asyncio.to_thread(_health, url.rstrip("/") + path, timeout)
                    for name, url in sorted(services.items())
                }
                outputs = {} if follow else {name: await tail(name) for name in sorted(services)}
                if followers:
                    _print(results)
                    await asyncio.gather(*followers)
                return results, outputs
            finally:
                for task in followers:
                    task.cancel()

        def _print(results: dict[str, dict[str, Any]]) -> None:
            for name, result in results.items():
                ok = 200 <= result["status"] < 400
                mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
                what = result["error"] or f"HTTP {result['status']}"
                console.print(f"{mark} [bold]{name}[/bold] GET {result['url']} → {what}")
                if result["body"]:
                    console.print(result["body"], markup=False, highlight=False)
                if result["startup_log_tail"]:
                    console.print(f"[bold]startup log of {name}:[/bold]")
                    console.print(result["startup_log_tail"], markup=False, highlight=False)

        try:
            results, outputs = run_sync(check(), "apothic deployment logs")
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
        if follow:
            return  # printed as it came; the streams ended
        if as_json:
            doc = {
                "deployment_id": dep.deployment_id,
                "services": {
                    name: {**result, "output": [(line.stream, line.data) for line in outputs.get(name, [])]}
                    for name, result in results.items()
                },
            }
            typer.echo(json.dumps(doc, indent=2))
        else:
            if not results:
                console.print(f"deployment {dep.deployment_id} has no web services")
            _print(results)
            for name, lines in outputs.items():
                if lines:
                    console.print(f"[bold]recent output of {name}:[/bold]")
                    console.print("".join(line.data for line in lines).rstrip(), markup=False, highlight=False)
        if any(not 200 <= r["status"] < 400 for r in results.values()):
            raise typer.Exit(1)
