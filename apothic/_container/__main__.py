"""Container entry point: ``python -m apothic._container``.

Environment (set by the worker): ``APOTHIC_CONTAINER_FD`` (the socket to the worker) or
``APOTHIC_CONTAINER_SOCKET`` (a Unix socket path to connect to, for a container in Docker),
``APOTHIC_SOURCE_DIR``, ``APOTHIC_WORKDIR`` (the image's working directory; default: the
source directory), ``APOTHIC_PYTHON_PATH`` (more ``sys.path`` entries,
``os.pathsep``-separated), ``APOTHIC_MODULE`` + ``APOTHIC_QUALNAME`` or
``APOTHIC_PICKLED_FUNCTION`` (a file), and how inputs run: ``APOTHIC_MAX_INPUTS``,
``APOTHIC_BATCH_MAX_SIZE``, ``APOTHIC_BATCH_WAIT_MS``; ``APOTHIC_VOLUMES`` (JSON, mount
path -> volume name: mounted before the function is imported, committed on exit);
``APOTHIC_LOCAL_VOLUMES`` (JSON, mount path -> a directory on this host: vast_local volumes);
``APOTHIC_WEB`` (JSON: a web service's kind and settings; see apothic._container.web);
``APOTHIC_CONTAINER_ID`` (names the jobs of a web service's requests).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from apothic._container import buckets, protocol
from apothic._container.output import FLUSH_INTERVAL_S, FdForwarder, OutputForwarder, Running
from apothic._container.runner import Runner, RunnerConfig


def _load_function() -> Callable[..., Any]:
    source_dir = os.environ.get("APOTHIC_SOURCE_DIR", "")
    extra = [p for p in os.environ.get("APOTHIC_PYTHON_PATH", "").split(os.pathsep) if p]
    sys.path[0:0] = [source_dir, *extra] if source_dir else extra
    workdir = os.environ.get("APOTHIC_WORKDIR") or source_dir
    if workdir:
        os.chdir(workdir)
    pickled = os.environ.get("APOTHIC_PICKLED_FUNCTION")
    if pickled:
        import cloudpickle

        with open(pickled, "rb") as fh:
            return cloudpickle.load(fh)  # type: ignore[no-any-return]
    module = importlib.import_module(os.environ["APOTHIC_MODULE"])
    target: Any = module
    for part in os.environ["APOTHIC_QUALNAME"].split("."):
        target = getattr(target, part)
    return getattr(target, "raw_function", target)  # a Function handle wraps the user's function


def _config() -> RunnerConfig:
    env = os.environ
    return RunnerConfig(
        max_inputs=int(env.get("APOTHIC_MAX_INPUTS") or 1),
        batch_max_size=int(env.get("APOTHIC_BATCH_MAX_SIZE") or 0),
        batch_wait_ms=float(env.get("APOTHIC_BATCH_WAIT_MS") or 0),
    )


def _serve_web(
    func: Callable[..., Any],
    channel: protocol.BlockingChannel,
    outputs: tuple[OutputForwarder, OutputForwarder],
    running: Running,
) -> None:
    """Runs a web service until the worker says stop; its output outside requests is the
    container's own (job id ""), each HTTP request's is the request's job's."""
    from apothic._container import web
    from apothic._container.request_trail import RequestTrail

    for out in outputs:
        out.default = ("", 0)
    running.add(("", 0))
    try:
        trail = RequestTrail(channel, outputs, running, os.environ.get("APOTHIC_CONTAINER_ID", ""))
        service = web.start(func, json.loads(os.environ["APOTHIC_WEB"]), trail)
    except BaseException:  # noqa: BLE001 - a startup failure of any kind is reported
        for out in outputs:
            out.flush()
        channel.send((protocol.INIT_FAILED, traceback.format_exc()))
        sys.stdout.flush()
        os._exit(1)
    channel.send((protocol.READY, service.port))
    while (frames := channel.recv_batch()) is not None:
        if any(frame[0] == protocol.STOP for frame in frames):
            break
    service.close()
    trail.send_ends()  # the ends of the last requests


def main() -> None:
    path = os.environ.get("APOTHIC_CONTAINER_SOCKET")
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    else:
        sock = socket.socket(fileno=int(os.environ["APOTHIC_CONTAINER_FD"]))
    channel = protocol.BlockingChannel(sock)
    try:
        if os.environ.get("APOTHIC_VOLUMES"):
            from apothic.volume import _mount_all

            _mount_all(json.loads(os.environ["APOTHIC_VOLUMES"]))
        if os.environ.get("APOTHIC_LOCAL_VOLUMES"):
            from apothic.volume import _link_local

            _link_local(json.loads(os.environ["APOTHIC_LOCAL_VOLUMES"]))
        buckets.mount_from_env()  # APOTHIC_BUCKET_MOUNTS: see apothic._container.buckets
        func = _load_function()
    except BaseException:  # noqa: BLE001 - an import failure of any kind is reported
        channel.send((protocol.INIT_FAILED, traceback.format_exc()))
        sys.exit(1)
    running = Running()
    outputs = (OutputForwarder(channel, "stdout"), OutputForwarder(channel, "stderr"))
    sys.stdout.flush()
    sys.stderr.flush()
    fds = (FdForwarder(channel, 1, "stdout", running), FdForwarder(channel, 2, "stderr", running))
    sys.stdout, sys.stderr = outputs  # type: ignore[assignment]

    def flusher() -> None:
        tick = threading.Event()
        while not tick.wait(FLUSH_INTERVAL_S):
            for out in outputs:
                out.flush()

    threading.Thread(target=flusher, name="apothic-flusher", daemon=True).start()
    if os.environ.get("APOTHIC_WEB"):
        _serve_web(func, channel, outputs, running)
    else:
        runner = Runner(func, channel, outputs, fds, running, _config())
        channel.send((protocol.READY,))
        while (frames := channel.recv_batch()) is not None:
            if not runner.handle(frames):
                break
    if "apothic._cls_runtime" in sys.modules:  # @app.cls instances: their @exit methods
        for error in sys.modules["apothic._cls_runtime"].run_exit_hooks():
            sys.stderr.write(f"an @exit method failed: {error}\n")
    if os.environ.get("APOTHIC_VOLUMES"):
        from apothic.volume import _commit_mounts

        for error in _commit_mounts():
            sys.stderr.write(error + "\n")
    for out in outputs:
        out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
