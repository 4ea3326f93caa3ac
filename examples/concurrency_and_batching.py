"""Several inputs per container: @concurrent for I/O-bound work, @batched for vectorised work.

apothic run examples/concurrency_and_batching.py
"""

import asyncio
import os
import time

import apothic

app = apothic.App("concurrency-and-batching")


@app.function()
@apothic.concurrent(max_inputs=10)
async def fetch(i: int) -> int:
    """Waits like a network call; ten run at once in one container."""
    await asyncio.sleep(0.3)
    return os.getpid()


@app.function()
@apothic.batched(max_batch_size=8, wait_ms=100)
def embed(texts: list[str]) -> list[int]:
    """Receives lists; callers still pass one text each."""
    print(f"embedding a batch of {len(texts)}")
    return [len(t) for t in texts]


@app.function(retries=apothic.Retries(max_retries=2, initial_delay=0.1))
def flaky(path: str) -> str:
    """Fails twice, then succeeds: retries are new attempts of the same job."""
    count = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as fh:
        fh.write(str(count + 1))
    if count < 2:
        raise RuntimeError(f"attempt {count + 1} failed")
    return f"succeeded on attempt {count + 1}"


@app.local_entrypoint()
def main() -> None:
    """Shows both decorators and a retried job."""
    start = time.monotonic()
    pids = list(fetch.map(range(10)))
    print(f"10 calls of 0.3 s in {time.monotonic() - start:.1f} s on {len(set(pids))} container(s)")
    print("lengths:", list(embed.map(["a", "bb", "ccc", "dddd", "eeeee"])))
    marker = f"/tmp/apothic-flaky-{os.getpid()}"
    try:
        print(flaky.remote(marker))
    finally:
        if os.path.exists(marker):
            os.remove(marker)
