"""Fan out: map, starmap, for_each, spawn_map and gather.

apothic run examples/map_and_gather.py
"""

import apothic

app = apothic.App("map-and-gather")


@app.function()
def cube(x: int) -> int:
    """A trivial function to fan out."""
    return x**3


@app.function()
def power(base: int, exponent: int) -> int:
    """Two arguments, for starmap."""
    return base**exponent


@app.function()
def checked(x: int) -> int:
    """Fails for one input, to show per-input errors."""
    if x == 3:
        raise ValueError("three is not allowed")
    return x


@app.local_entrypoint()
def main() -> None:
    """Runs each fan-out helper once."""
    # Inputs stream to the runtime in batches over one call; results come back in order.
    print("sum of cubes:", sum(cube.map(range(1000))))
    print("powers:", list(power.starmap([(2, 10), (3, 4), (10, 3)])))
    print("zipped:", list(power.map([2, 3], [5, 2])))
    # One input's failure is that input's error; the rest still come back.
    print("with errors:", list(checked.map(range(5), return_exceptions=True)))
    # Durable jobs, one per input, then wait for them all at once.
    jobs = cube.spawn_map(range(5))
    print("spawned", len(jobs), "jobs:", apothic.gather(*jobs))
    cube.for_each(range(10))
    print("for_each done")
