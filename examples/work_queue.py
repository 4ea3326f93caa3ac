"""Coordinate workers with a durable Queue and Dict, from inside functions and outside.

apothic run examples/work_queue.py

The entrypoint fills a queue with tasks; three spawned workers claim tasks with a lease,
record each result in a dict and ack; a task that fails three times lands in the queue's
dead-letter queue with its last error. Nothing is lost if a worker dies mid-task: its lease
expires and another worker claims the task again.
"""

import apothic

app = apothic.App("work-queue")


@app.function(timeout_s=60)
def worker(queue_name: str, results_name: str, worker_id: int) -> int:
    """Claims tasks until the queue stays empty for a second; returns how many it finished."""
    tasks = apothic.Queue.from_name(queue_name)
    results = apothic.Dict.from_name(results_name)
    done = 0
    while claims := tasks.claim(lease_s=10, wait_s=1.0):
        for claim in claims:
            n = claim.value
            if n == 13:  # a poison task: released with an error until it is dead-lettered
                tasks.release(claim, error="13 is unlucky")
                continue
            results.put(f"square/{n}", n * n)
            tasks.ack(claim)
            done += 1
    return done


@app.local_entrypoint()
def main() -> None:
    """Fills the queue, runs three workers and reads the results."""
    with apothic.Queue.ephemeral(max_attempts=3) as tasks, apothic.Dict.ephemeral() as results:
        tasks.put_many(range(20))
        jobs = [worker.spawn(tasks.name, results.name, i) for i in range(3)]
        finished = apothic.gather(*jobs)
        print("tasks finished per worker:", finished, "total:", sum(finished))
        print("squares:", sorted(v for _, v in results.items(prefix="square/")))
        dead = apothic.Queue.from_name(tasks.name + ".dlq", create_if_missing=False)
        print("dead-lettered:", [(c.value, c.last_error) for c in dead.claim(n=10)])
