"""The CLI and web services: `apothic deploy` prints each service's URL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from typer.testing import CliRunner

from apothic.cli.main import app as cli

WEB_ASGI = Path(__file__).resolve().parents[2] / "examples" / "web_asgi.py"
runner = CliRunner()


def test_deploy_prints_the_service_url(apothic_runtime) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(cli, ["deploy", str(WEB_ASGI)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    match = re.search(r"api serves (http://\S+)", result.output)
    assert match, result.output
    url = match.group(1)
    assert url == f"{apothic_runtime.http_url}/web-asgi/api"
    assert httpx.get(f"{url}/health", timeout=60).json() == {"status": "ok", "path": "/health"}
    listed = runner.invoke(cli, ["deployment", "list", "--json"], catch_exceptions=False)
    deployment = next(d for d in json.loads(listed.output) if d["app_name"] == "web-asgi" and d["status"] == "live")
    assert deployment["web_urls"] == {"api": url}
    runner.invoke(cli, ["deployment", "stop", deployment["deployment_id"]], catch_exceptions=False)


SERVICES = """
import time
import apothic

app = apothic.App("cli-web-logs")


@app.asgi()
def healthy():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def healthz(request):
        return JSONResponse({"healthy": True})

    return Starlette(routes=[Route("/healthz", healthz)])


@app.web_server(18791, startup_timeout=2)
def stuck():
    print("stuck: loading the model...", flush=True)
    time.sleep(60)
"""


def test_deployment_logs_reads_health_and_startup_log_tail(apothic_runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "cli_web_logs.py"
    source.write_text(SERVICES)
    deployed = runner.invoke(cli, ["deploy", str(source), "--json"], catch_exceptions=False)
    assert deployed.exit_code == 0, deployed.output
    deployment_id = json.loads(deployed.output)["deployment_id"]
    try:
        ok = runner.invoke(
            cli, ["deployment", "logs", deployment_id, "--function-name", "healthy", "--health-path", "/healthz"]
        )
        assert ok.exit_code == 0, ok.output
        assert "healthy" in ok.output and "HTTP 200" in ok.output

        bad = runner.invoke(cli, ["deployment", "logs", "cli-web-logs", "--health-path", "/healthz", "--json"])
        assert bad.exit_code == 1, bad.output
        services = json.loads(bad.output)["services"]
        assert services["healthy"]["status"] == 200
        assert services["stuck"]["status"] == 504
        assert "stuck: loading the model..." in services["stuck"]["startup_log_tail"]
        assert ["stdout", "stuck: loading the model...\n"] in services["stuck"]["output"]

        missing = runner.invoke(cli, ["deployment", "logs", deployment_id, "--function-name", "nope"])
        assert missing.exit_code == 1
        assert "service 'nope'" in missing.output
    finally:
        runner.invoke(cli, ["deployment", "stop", deployment_id])


def test_deployment_logs_has_help() -> None:
    result = runner.invoke(cli, ["deployment", "logs", "--help"])
    assert result.exit_code == 0
    assert "--health-path" in result.output
