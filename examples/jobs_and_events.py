"""Jobs and their live event streams: spawn, watch, remote_events, cancel.

apothic run examples/jobs_and_events.py
"""

import time

import apothic
from apothic.watch import SnapshotEnd

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
    # the job as it stands. markers=True adds the watch markers between events: where the
    # snapshot ends, and progress while the job is quiet.
    job = countdown.spawn(2)
    for item in job.watch(snapshot=True, markers=True):
        if isinstance(item, SnapshotEnd):
            print("the snapshot covers events up to seq", item.rev)
        elif isinstance(item, apothic.JobEvent):
            print("watched", item.seq, item.kind)
    print("value:", job.wait(), "| logs:", job.logs().split())

    # A watch resumes after any seq it saw (across control-plane restarts too).
    print("after seq 2:", [event.kind for event in job.watch(snapshot=False, after_seq=2)])

    stuck = forever.spawn()
    while stuck.status() != apothic.JobStatus.RUNNING:
        time.sleep(0.05)
    print("cancel ->", stuck.cancel())
    try:
        stuck.wait()
    except apothic.exceptions.JobCancelledError:
        print("waiting on a cancelled job raises JobCancelledError")
