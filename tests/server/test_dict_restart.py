"""Dicts survive a control-plane restart on the embedded ``surrealkv://`` store: values,
versions, revs and remembered request ids, and the rev keeps increasing afterwards."""

from __future__ import annotations

from pathlib import Path

import apothic
from apothic.dict import DictCompare, DictPut
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name


def test_dict_state_survives_a_restart(tmp_path: Path) -> None:
    name = unique_name("durable")
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=0).start()
    try:
        d = apothic.Dict.from_name(name, client=first.config)
        d["a"] = {"n": 1}
        d["a"] = {"n": 2}
        d.put("b", "bee", request_id="put-b")
        d.txn([DictCompare("c", "==", 0)], then=[DictPut("c", 3), DictPut("gone", 0)])
        d.delete("gone")
        before = {k: d.get_entry(k) for k in d.keys()}
        rev = d.rev()
        assert rev == 5
    finally:
        first.stop()

    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=0, api_key=first.api_key).start()
    try:
        d = apothic.Dict.from_name(name, create_if_missing=False, client=second.config)
        assert d.rev() == rev
        assert {k: d.get_entry(k) for k in d.keys()} == before
        assert d.items() == [("a", {"n": 2}), ("b", "bee"), ("c", 3)]
        # The request id recorded before the restart still answers without a second write.
        assert d.put("b", "other", request_id="put-b") == 1 and d["b"] == "bee" and d.rev() == rev
        assert d.compare_and_set("a", 2, {"n": 3}) == 3
        assert d.rev() == rev + 1
        entry = d.get_entry("a")
        assert entry is not None and entry.mod_rev == rev + 1 and entry.create_rev == 1
    finally:
        second.stop()
