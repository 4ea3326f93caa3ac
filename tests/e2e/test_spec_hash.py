"""A function's spec hash: equal across deployments when nothing that decides how it runs
changed; different when its image, secrets, volumes or env did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apothic
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name


def _hashes(runtime: LocalRuntime, name: str, **options: Any) -> dict[str, str]:
    app = apothic.App(name, client=runtime.config)

    def make(fname: str, opts: dict[str, Any]) -> Callable[[], int]:
        def f() -> int:
            return 1

        f.__name__ = f.__qualname__ = fname
        return app.function(name=fname, **opts)(f)  # type: ignore[no-any-return]

    make("steady", {})
    make("varied", options)
    app.deploy()
    try:
        assert app.deployment is not None
        return dict(app.deployment.spec_hashes)
    finally:
        app.stop()


def test_spec_hashes_follow_what_decides_how_a_function_runs(apothic_runtime: LocalRuntime) -> None:
    name = unique_name("hash")
    vol = unique_name("hv")
    base = _hashes(apothic_runtime, name)
    assert set(base) == {"steady", "varied"} and all(len(h) == 64 for h in base.values())
    assert _hashes(apothic_runtime, name) == base, "the same app deployed again hashes the same"
    variants = [
        {"env": {"MODE": "x"}},
        {"image": apothic.Image.debian_slim().env({"A": "1"})},
        {"secrets": [apothic.Secret.from_dict({"TOKEN": "one"})]},
        {"secrets": [apothic.Secret.from_dict({"TOKEN": "two"})]},
        {"volumes": {"/tmp/hash-vol": apothic.Volume.from_name(vol, client=apothic_runtime.config)}},
        {"timeout_s": 77},
    ]
    seen = {base["varied"]}
    for options in variants:
        got = _hashes(apothic_runtime, name, **options)
        assert got["steady"] == base["steady"], f"{options}: an unchanged function kept its hash"
        assert got["varied"] not in seen, f"{options}: the changed function got a new hash"
        seen.add(got["varied"])
