"""A worker survives a control-plane restart: it reconnects with backoff and serves again."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import apothic
from apothic.server.server import create_server
from apothic.server.settings import ServerSettings
from apothic.worker.agent import Worker
from apothic.worker.settings import WorkerSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_worker_reconnects_after_control_plane_restart(tmp_path: Path) -> None:
    port = _free_port()
    settings = ServerSettings(db_url="", state_dir=tmp_path / "state", grpc_port=port)
    plane = create_server(settings)
    await plane.start()
    account = await plane.accounts.ensure_account("local")
    key = await plane.accounts.create_key(account)
    worker = Worker(
        WorkerSettings(
            base_url=plane.address,
            api_key=key,
            worker_id="workers:reconnect",
            state_dir=tmp_path / "w",
            max_backoff_s=0.5,
        )
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), 30)
        assert worker.sessions == 1
        config = apothic.ClientConfig(base_url=plane.address, api_key=key)
        app = apothic.App("reconnect", client=config)

        @app.function(serialized=True)
        def add(a: int, b: int) -> int:
            return a + b

        await app.aio.deploy()
        assert await add.aio.remote(1, 2) == 3

        await plane.stop(grace=0.5)
        plane = create_server(settings)
        await plane.start()
        for _ in range(300):
            if worker.sessions >= 2 and worker.connected.is_set():
                break
            await asyncio.sleep(0.05)
        assert worker.sessions >= 2, "the worker did not open a new session"
        # The key, the deployment and the worker all carried over: the call works again.
        assert await add.aio.remote(20, 22) == 42
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 30)
        await plane.stop(grace=0.5)
