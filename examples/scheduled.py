"""Scheduled functions: a Period (or Cron) schedule runs a function on its own while the
app is deployed; each run is an ordinary job.

apothic run examples/scheduled.py       # watch a couple of runs, then stop
apothic deploy examples/scheduled.py    # keep it running; then:
apothic app schedules scheduled         # next run, last run
apothic job list --app scheduled        # every run is a job
"""

import time
from datetime import UTC, datetime

import apothic

app = apothic.App("scheduled")


@app.function(schedule=apothic.Period(seconds=1))
def heartbeat() -> str:
    """Runs once a second, with no arguments, while the app is deployed.

    ``apothic.Cron("*/5 * * * *", timezone="Europe/Paris")`` would run it every five
    minutes instead.
    """
    now = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
    print(f"heartbeat at {now}")
    return now


@app.local_entrypoint()
def main() -> None:
    """Waits for two scheduled runs and prints them."""
    (info,) = app.schedules()
    print(f"{info.function_name} runs {info.schedule}; next run at {info.next_run_at:%H:%M:%S}")
    runs: list[str] = []
    deadline = time.monotonic() + 10
    while len(runs) < 2 and time.monotonic() < deadline:
        (info,) = app.schedules()
        if info.last_job_id and info.last_job_id not in runs:
            runs.append(info.last_job_id)
        time.sleep(0.1)
    for job_id in runs:
        print(f"run {job_id} returned {apothic.Job(job_id).wait(timeout=10)}")
