"""Dict crash safety: the control plane (``surrealkv://`` on disk) is killed with SIGKILL
twice while several processes run compare-and-set increments through the real SDK, each on
keys of its own, while the control plane folds its write log in the background. After the
last restart every key holds exactly the count of increments its owner saw acknowledged, at
the version that count implies: no acknowledged write lost, none applied twice.

Each increment is ``get_entry`` then ``put(if_version=...)`` with a request id of its own:
the SDK retries it with that id while the control plane is down, and the server applies an
id once, so an increment whose answer was lost with the control plane still lands once. A
process records an increment only after its put returned.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import apothic
from apothic.testing import unique_name, wait_for
from tests.server.plane_process import PlaneProcess, client_rows, end, free_port, start_client

WRITERS = 3
KEYS_EACH = 4
INCREMENTS_EACH = 700
KILLS = 2

# One writer: it owns KEYS_EACH keys and increments them in turn, writing "key value" on a
# line of its own, flushed, once the put returned.
CHILD = textwrap.dedent(
    """
    import sys

    import apothic

    name, who, keys, count, out_path = sys.argv[1:6]
    d = apothic.Dict.from_name(name, create_if_missing=False)
    with open(out_path, "a", buffering=1) as out:
        for i in range(int(count)):
            key = f"{who}-k{i % int(keys)}"
            entry = d.get_entry(key)
            value = 1 if entry is None else entry.value + 1
            d.put(key, value, if_version=0 if entry is None else entry.version, request_id=f"{who}-{i}")
            out.write(f"{key} {value}\\n")
    """
)


def _acknowledged(paths: list[Path]) -> dict[str, list[int]]:
    values: dict[str, list[int]] = {}
    for key, value in client_rows(paths):
        values.setdefault(key, []).append(int(value))
    return values


def test_dict_survives_kill_9_during_compare_and_set_increments(tmp_path: Path) -> None:
    plane = PlaneProcess(tmp_path / "state", free_port(), tmp_path / "server.log")
    name = unique_name("dcrash")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children: list[subprocess.Popen[bytes]] = []
    outs = [tmp_path / f"w{i}.log" for i in range(WRITERS)]
    plane.start()
    try:
        apothic.Dict.from_name(name, client=plane.config).len()  # created before the writers start
        for i, out in enumerate(outs):
            args = [str(script), name, f"w{i}", str(KEYS_EACH), str(INCREMENTS_EACH), str(out)]
            children.append(start_client(plane, args, tmp_path / f"w{i}.err"))

        total = WRITERS * INCREMENTS_EACH
        for k in range(1, KILLS + 1):
            target = total * k // (KILLS + 2)
            wait_for(
                lambda t=target: sum(map(len, _acknowledged(outs).values())) >= t,
                timeout=120,
                interval=0.05,
                what=f"{target} increments",
            )
            plane.kill()
            time.sleep(0.3 * k)
            plane.start()
        for i, proc in enumerate(children):
            assert proc.wait(180) == 0, (
                f"w{i} failed:\n{(tmp_path / f'w{i}.err').read_text()}\nserver:\n{plane.output()[-5000:]}"
            )
        # One more crash with the last writes possibly unfolded, then read everything back.
        plane.kill()
        plane.start()
        d = apothic.Dict.from_name(name, create_if_missing=False, client=plane.config)
        stored = {key: d.get_entry(key) for key in d.keys()}
    finally:
        for proc in children:
            end(proc)
        plane.stop()

    acked = _acknowledged(outs)
    assert sorted(acked) == sorted(f"w{w}-k{k}" for w in range(WRITERS) for k in range(KEYS_EACH))
    for key, values in acked.items():
        # Each increment was acknowledged once, in order, with nothing skipped or repeated.
        assert values == list(range(1, len(values) + 1)), f"{key}: {values[:20]}"
        entry = stored.get(key)
        assert entry is not None, f"{key} was lost"
        assert entry.value == len(values) and entry.version == len(values), (key, entry, len(values))
    assert sum(map(len, acked.values())) == WRITERS * INCREMENTS_EACH
