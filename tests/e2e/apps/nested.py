"""A function that calls another function of its app from inside its container."""

from __future__ import annotations

import apothic

app = apothic.App("e2e-nested")


@app.function(timeout_s=30)
def leaf(x: int) -> int:
    return x + 1


@app.function(timeout_s=30)
def fan_out(n: int) -> list[int]:
    # Runs in a container: the worker handed it APOTHIC_BASE_URL and a credential.
    jobs = [leaf.spawn(i) for i in range(n)]
    return [leaf.remote(100)] + [job.wait() for job in jobs]
