"""A whole Apothic runtime in one process: control plane plus local workers.

``apothic up`` and ``apothic run`` use it, and so does :mod:`apothic.testing`. Importing this
module is cheap; the server and worker are imported when a runtime starts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import tempfile
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from apothic.config import ClientConfig

if TYPE_CHECKING:
    from apothic.server.server import ControlPlane
    from apothic.server.settings import BillingSettings
    from apothic.server.watch import WatchSettings
    from apothic.worker.agent import Worker

log = logging.getLogger("apothic.runtime")

LOCAL_ACCOUNT = "local"

T = TypeVar("T")


def tune_gc_for_serving() -> None:
    """For a process that serves the runtime for long (``apothic up``/``server``): freeze what
    start-up allocated and collect the young generation less often, since every call makes
    many short-lived objects. Not done by :class:`LocalRuntime` itself, which may share its
    process with other code."""
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def new_serving_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for a process that serves (a control plane, a worker): uvloop's, unless
    ``APOTHIC_EVENT_LOOP=asyncio`` or uvloop is not installed (it has no Windows build).

    Every durable commit of the embedded engine ends with its thread waking the loop, and
    every gRPC message does too; uvloop makes that wake-up and the loop's turn cheaper: 5-7%
    more sequential Queue cycles and 4-6% more Dict CAS on this machine (BENCHMARKS.md).

    Raises:
        InvalidConfigError: ``APOTHIC_EVENT_LOOP`` is neither ``uvloop`` nor ``asyncio``.
    """
    from apothic.config import serving_event_loop

    # uvloop has no build for some platforms: there the standard loop serves as well, a little slower.
    if serving_event_loop() == "uvloop" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_serving(main: Coroutine[Any, Any, T]) -> T:
    """Runs ``main`` to its end on a new :func:`new_serving_loop`, as :func:`asyncio.run` does.

    Raises:
        InvalidConfigError: ``APOTHIC_EVENT_LOOP`` is neither ``uvloop`` nor ``asyncio``
            (``main`` is closed unrun).
    """
    try:
        loop = new_serving_loop()
    except BaseException:
        main.close()
        raise
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        return runner.run(main)


class LocalRuntime:
    """A control plane and ``workers`` local workers (process executor).

    Use it as a context manager (runs on a background thread) or ``await rt.astart()`` on
    your own loop.

    Args:
        db_url: SurrealDB URL; ``mem://`` keeps nothing, ``""`` means surrealkv under
            ``state_dir``.
        state_dir: state directory (a temporary one when None).
        host: address to listen on.
        port: gRPC port; 0 picks a free one.
        http_port: port of the HTTP ingress for web services; 0 picks a free one.
        workers: how many local workers to start.
        api_key: reuse this key when it is still valid (``apothic up`` across restarts).
        watch: how watches of queues and dicts retain changes and report progress (tests
            make both small); the server's defaults when None.
        executor: how the local workers run containers: ``process`` or ``docker``.
        billing: how containers on priced workers are charged (tests shorten the
            interval); the server's defaults when None.
    """

    def __init__(
        self,
        *,
        db_url: str = "mem://",
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int = 0,
        workers: int = 1,
        api_key: str | None = None,
        watch: WatchSettings | None = None,
        executor: str = "process",
        billing: BillingSettings | None = None,
    ) -> None:
        self.executor = executor
        self.billing = billing
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="apothic-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.db_url = db_url
        self.host = host
        self.port = port
        self.http_port = http_port
        self.worker_count = workers
        self.api_key = api_key or ""
        self.watch = watch
        self.plane: ControlPlane | None = None
        self.workers: list[Worker] = []
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the control plane."""
        assert self.plane is not None, "the runtime is not started"
        return self.plane.address

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the control plane's HTTP ingress (web services)."""
        assert self.plane is not None, "the runtime is not started"
        return self.plane.http_url

    @property
    def config(self) -> ClientConfig:
        """Client configuration for this runtime."""
        return ClientConfig(base_url=self.address, api_key=self.api_key, profile="local")

    async def astart(self) -> None:
        """Starts the control plane and the workers on the running loop."""
        from apothic.server.errors import Unauthenticated
        from apothic.server.server import create_server
        from apothic.server.settings import ServerSettings

        settings = ServerSettings(
            db_url=self.db_url, state_dir=self.state_dir, host=self.host, grpc_port=self.port, http_port=self.http_port
        )
        if self.watch is not None:
            settings = replace(settings, watch=self.watch)
        if self.billing is not None:
            settings = replace(settings, billing=self.billing)
        self.plane = create_server(settings)
        await self.plane.start()
        accounts = self.plane.accounts
        account = await accounts.ensure_account(LOCAL_ACCOUNT)
        if self.api_key:
            try:
                if await accounts.verify(self.api_key) != account:
                    self.api_key = ""
            except Unauthenticated:
                self.api_key = ""
        if not self.api_key:
            self.api_key = await accounts.create_key(account)
        for i in range(self.worker_count):
            await self.add_worker(f"workers:local{i}")

    async def add_worker(
        self,
        worker_id: str,
        *,
        labels: dict[str, str] | None = None,
        executor: str | None = None,
        hostname: str = "",
        cost_per_hour: float = 0.0,
        region: str = "",
    ) -> Worker:
        """Starts one more local worker and waits until its session is open.

        Args:
            worker_id: the worker's id.
            labels: extra offer labels.
            executor: ``process`` or ``docker``; the runtime's ``executor`` when None.
            hostname: the host name it reports (tests stand in for other machines with it);
                workers that report one host share its vast_local volumes' directory.
            cost_per_hour: what the worker offers to cost, in USD per hour (0: free).
            region: the region it offers.
        """
        from apothic.worker.agent import Worker
        from apothic.worker.settings import WorkerSettings
        from apothic.worker.transport import InProcessTransport

        assert self.plane is not None

        worker = Worker(
            WorkerSettings(
                base_url=self.address,
                api_key=self.api_key,
                worker_id=worker_id,
                state_dir=self.state_dir / "worker" / worker_id.replace(":", "_"),
                labels=labels or {},
                executor=executor or self.executor,
                hostname=hostname,
                local_volumes_dir=self.state_dir / "hosts" / (hostname or "local") / "vast_local",
                cost_per_hour=cost_per_hour,
                region=region,
            ),
            transport=InProcessTransport(
                self.plane.worker_servicer.Session,
                self.address,
                self.plane.worker_servicer.Tunnel,
                self.plane.worker_servicer.tunnels.attach_stream,
            ),
        )
        self.workers.append(worker)
        self._worker_tasks.append(asyncio.create_task(worker.run(), name=f"apothic-{worker_id}"))
        await asyncio.wait_for(worker.connected.wait(), 30)
        return worker

    async def astop(self) -> None:
        """Stops the workers, then the control plane."""
        if self.plane is not None:
            # Before the workers go: jobs they were running must stay durable and resume on
            # the next start, not be failed as "worker lost".
            await self.plane.jobs.close()
        for worker in self.workers:
            await worker.stop()
        if self._worker_tasks:
            await asyncio.wait(self._worker_tasks, timeout=10)
        if self.plane is not None:
            await self.plane.stop(grace=1.0)
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- on a background thread -------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self) -> LocalRuntime:
        """Starts the runtime on its own thread and event loop."""
        started: Future[None] = Future()
        loop = new_serving_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="apothic-runtime", daemon=True)
        self._thread.start()
        try:
            self._call(self.astart())
        except BaseException:
            self.stop()
            raise
        started.set_result(None)
        return self

    def stop(self) -> None:
        """Stops a runtime started with :meth:`start`."""
        if self._loop is None:
            return
        try:
            self._call(self.astop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop = None

    def run_coroutine(self, coro: Any) -> Any:
        """Runs a coroutine on the runtime's loop (tests use it to reach into the server)."""
        return self._call(coro)

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
