"""The async API: every blocking call has an `.aio` form, for asyncio code and web handlers.

apothic run examples/async_calls.py
"""

import asyncio

import apothic

app = apothic.App("async-calls")


@app.function()
async def fetch(n: int) -> int:
    """An async function runs on the container's event loop."""
    await asyncio.sleep(0.01)
    return n * 10


@app.local_entrypoint()
async def main() -> None:
    """An async entrypoint: `apothic run` drives it with asyncio."""
    print("one:", await fetch.aio.remote(1))
    values = await asyncio.gather(*(fetch.aio.remote(i) for i in range(5)))
    print("gathered:", values)
    job = await fetch.aio.spawn(7)
    print("spawned:", await job.aio.wait(), await job.aio.status())
    try:
        fetch.remote(1)  # a blocking call inside a running loop names the .aio form
    except apothic.exceptions.BlockingInAsyncContextError as exc:
        print("blocking call refused:", exc)
