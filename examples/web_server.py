"""A web server the function starts itself: the standard library's http.server on a port.

apothic run examples/web_server.py
"""

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apothic

app = apothic.App("web-server")

PORT = 18781


class _Handle:
    """What the function returns: the container calls close() when it stops."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"hello from http.server, you asked for {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@app.web_server(PORT, startup_timeout=30)
def server() -> _Handle:
    """Starts the server on a thread and returns; the port must accept connections within
    startup_timeout."""
    httpd = ThreadingHTTPServer(("127.0.0.1", PORT), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return _Handle(httpd)


@app.local_entrypoint()
def main() -> None:
    url = server.get_web_url()
    print("serving at", url)
    with urllib.request.urlopen(f"{url}/greeting", timeout=60) as r:
        print("GET /greeting ->", r.status, r.read().decode().strip())
