"""Quickstart: deploy two functions and call them every way the SDK offers.

apothic run examples/quickstart.py           # ephemeral: deploy, run main(), stop
apothic deploy examples/quickstart.py        # keep it live; then:
apothic run square --app-name quickstart --payload '[7]'
"""

import time

import apothic

app = apothic.App("quickstart")


@app.function(timeout_s=30)
def square(x: int) -> int:
    """Squares a number (and says so in its logs)."""
    print(f"squaring {x}")
    return x * x


@app.function(timeout_s=30)
def slow_sum(numbers: list[int]) -> int:
    """Adds numbers slowly, printing progress, to show live job events."""
    total = 0
    for n in numbers:
        total += n
        print(f"running total {total}")
        time.sleep(0.05)
    return total


@app.local_entrypoint()
def main() -> None:
    """Runs locally after the app is deployed."""
    print("square(7) =", square.remote(7))
    job = slow_sum.spawn([1, 2, 3, 4])
    print("spawned", job.job_id)
    print("slow_sum =", job.wait())
    print("status:", job.status())
    try:
        square.remote("not a number")
    except TypeError as exc:
        print("remote error came back as", type(exc).__name__)
