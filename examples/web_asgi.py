"""A web service: a Starlette ASGI app served through the control plane's HTTP ingress.

apothic run examples/web_asgi.py       # ephemeral: deploy, call it over HTTP, stop
apothic deploy examples/web_asgi.py    # keep it live; the URL is printed:
curl http://127.0.0.1:8000/web-asgi/api/health
"""

import urllib.request

import apothic

app = apothic.App("web-asgi")


@app.asgi(keep_warm_s=30)
def api():
    """Returns the ASGI app; the container serves it with uvicorn."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def health(request):
        return JSONResponse({"status": "ok", "path": request.url.path})

    async def hello(request):
        return JSONResponse({"hello": request.query_params.get("name", "world")})

    return Starlette(routes=[Route("/health", health), Route("/hello", hello)])


@app.local_entrypoint()
def main() -> None:
    url = api.get_web_url()
    print("serving at", url)
    with urllib.request.urlopen(f"{url}/health", timeout=60) as r:
        print("GET /health ->", r.status, r.read().decode())
    with urllib.request.urlopen(f"{url}/hello?name=apothic", timeout=60) as r:
        print("GET /hello ->", r.status, r.read().decode())
