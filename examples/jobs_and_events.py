"""Jobs and their live event streams: spawn, watch, remote_events, cancel.

apothic run examples/jobs_and_events.py
"""

import time

import apothic

app = apothic.App("jobs-and-events")


@app.function(timeout_s=60)
def countdown(n: int) -> str:
    """Counts down, printing each step."""
    for i in range(n, 0, -1):
        print(f"{i}…")
        time.sleep(0.05)
    return "liftoff"


@app.function(timeout_s=60)
def forever() -> None:
    """Never finishes on its own; we cancel it."""
    while True:
        time.sleep(0.1)


@app.local_entrypoint()
def main() -> None:
    """Spawns jobs and follows them."""
    # Every event of a call, as it happens: queued, running, each log chunk, result, end.
    for event in countdown.remote_events(3):
        print("event", event.seq, event.kind)

    # A spawned job can be watched from anywhere with its id; snapshot=True starts with
    # the job as it stands.
    job = countdown.spawn(2)
    kinds = [event.kind for event in job.watch(snapshot=True)]
    print("watched:", kinds[0], "...", kinds[-1])
    print("value:", job.wait(), "| logs:", job.logs().split())

    stuck = forever.spawn()
    while stuck.status() != apothic.JobStatus.RUNNING:
        time.sleep(0.05)
    print("cancel ->", stuck.cancel())
    try:
        stuck.wait()
    except apothic.exceptions.JobCancelledError:
        print("waiting on a cancelled job raises JobCancelledError")
