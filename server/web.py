"""Web services: which deployed functions serve HTTP, and how.

A web decorator (``@app.asgi``, ``@app.endpoint``…) ships its settings inside the
function's ``options_json`` under ``"web"``; the scheduler, the ingress and the deploy
answer read them back here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from apothic.server.models import FunctionSpecRecord

#: Web service kinds, as the SDK names them.
KINDS = ("asgi", "wsgi", "web_server", "endpoint", "fastapi_endpoint")
#: Connections one service container takes before the pool adds another, unless the
#: function sets ``concurrent_requests``.
DEFAULT_CONNECTIONS_PER_CONTAINER = 100


@dataclass(frozen=True)
class WebOptions:
    """How a deployed function serves HTTP."""

    kind: str
    #: The port a ``web_server`` listens on inside its container (0: the container picks).
    port: int = 0
    #: Seconds a request waits for a container to start and bind its port.
    startup_timeout_s: float = 60.0
    #: Seconds a container stays warm after its last connection closed (0: the function's
    #: scale-down window).
    keep_warm_s: float = 0.0


def web_options(spec: FunctionSpecRecord) -> WebOptions | None:
    """The web settings of a function, or None when it is not a web service."""
    if '"web"' not in spec.options_json:
        return None
    try:
        doc = json.loads(spec.options_json)
    except ValueError:
        return None
    web = doc.get("web") if isinstance(doc, dict) else None
    if not isinstance(web, dict) or web.get("kind") not in KINDS:
        return None
    return WebOptions(
        kind=str(web["kind"]),
        port=int(web.get("port") or 0),
        startup_timeout_s=float(web.get("service_startup_timeout_s") or spec.startup_timeout_s or 60.0),
        keep_warm_s=float(doc.get("keep_warm_s") or 0.0),
    )


def connections_per_container(spec: FunctionSpecRecord) -> int:
    """Open connections a service container takes before another one starts."""
    return spec.target_slots if spec.max_concurrent_inputs > 1 else DEFAULT_CONNECTIONS_PER_CONTAINER
