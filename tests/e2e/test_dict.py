"""``apothic.Dict`` against the real runtime: CRUD, conditional writes, CAS races,
transactions, idempotent retries and validation."""

from __future__ import annotations

import threading

import pytest

import apothic
from apothic.dict import DictCompare, DictDelete, DictPut
from apothic.exceptions import FailedPreconditionError, InvalidArgumentError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name


@pytest.fixture
def d(apothic_runtime: LocalRuntime) -> apothic.Dict:
    return apothic.Dict.from_name(unique_name("dict"), client=apothic_runtime.config)


def test_crud_and_sugar(d: apothic.Dict) -> None:
    assert d.get("missing") is None and d.get("missing", 7) == 7
    assert len(d) == 0 and "a" not in d
    assert d.put("a", {"n": 1}) == 1
    assert d.put("a", {"n": 2}) == 2
    d["b"] = [1, 2, 3]
    assert d["a"] == {"n": 2} and d.get("b") == [1, 2, 3]
    assert "a" in d and d.contains("b") and len(d) == 2 and d.len() == 2
    entry = d.get_entry("a")
    assert entry is not None and entry.version == 2 and entry.create_rev == 1 and entry.mod_rev == 2
    assert d.keys() == ["a", "b"] and d.items() == [("a", {"n": 2}), ("b", [1, 2, 3])]
    assert d.rev() == 3
    assert d.delete("a") is True and d.delete("a") is False
    assert d.rev() == 4, "deleting a missing key changes nothing"
    del d["b"]
    with pytest.raises(KeyError):
        del d["b"]
    with pytest.raises(KeyError):
        d["b"]
    assert len(d) == 0 and d.items() == []
    # A re-created key starts again at version 1.
    assert d.put("a", 1) == 1


def test_from_name_and_delete(apothic_runtime: LocalRuntime) -> None:
    name = unique_name("dict")
    config = apothic_runtime.config
    with pytest.raises(NotFoundError, match=name):
        apothic.Dict.from_name(name, create_if_missing=False, client=config)
    d = apothic.Dict.from_name(name, client=config)
    d["k"] = "v"
    again = apothic.Dict.from_name(name, create_if_missing=False, client=config)
    assert again["k"] == "v"
    apothic.Dict.delete(name, client=config)
    with pytest.raises(NotFoundError):
        d.get("k")
    with pytest.raises(NotFoundError):
        apothic.Dict.delete(name, client=config)
    assert apothic.Dict.from_name(name, client=config).items() == []


def test_if_absent_and_if_version(d: apothic.Dict) -> None:
    assert d.put("k", "first", if_absent=True) == 1
    with pytest.raises(FailedPreconditionError, match="if_absent.*version 1"):
        d.put("k", "second", if_absent=True)
    with pytest.raises(FailedPreconditionError, match="if_version=5.*version 1"):
        d.put("k", "second", if_version=5)
    assert d.put("k", "second", if_version=1) == 2
    assert d.compare_and_set("k", 2, "third") == 3
    with pytest.raises(FailedPreconditionError, match="version 3"):
        d.compare_and_set("k", 2, "stale")
    with pytest.raises(FailedPreconditionError, match="does not exist"):
        d.compare_and_set("new", 1, "x")
    assert d.compare_and_set("new", 0, "x") == 1
    assert d["k"] == "third" and d["new"] == "x"


def test_cas_race_from_threads_is_exact(d: apothic.Dict) -> None:
    d["counter"] = 0
    threads, increments = 8, 50
    versions: list[list[int]] = [[] for _ in range(threads)]

    def worker(i: int) -> None:
        for _ in range(increments):
            while True:
                entry = d.get_entry("counter")
                assert entry is not None
                try:
                    versions[i].append(d.compare_and_set("counter", entry.version, entry.value + 1))
                    break
                except FailedPreconditionError:
                    continue

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert d["counter"] == threads * increments
    for mine in versions:
        assert mine == sorted(mine) and len(set(mine)) == len(mine), "one thread's versions strictly increase"
    every = sorted(v for mine in versions for v in mine)
    assert every == list(range(2, threads * increments + 2)), "each successful CAS got its own version"
    entry = d.get_entry("counter")
    assert entry is not None and entry.version == threads * increments + 1


def test_txn_runs_one_branch_atomically(d: apothic.Dict) -> None:
    d["a"] = 1
    rev = d.rev()
    ok = d.txn(
        [DictCompare("a", "==", 1), DictCompare("b", "==", 0)],
        then=[DictPut("a", 2), DictPut("b", "new")],
        else_=[DictPut("failed", True)],
    )
    assert ok.succeeded and ok.rev == rev + 1
    assert d["a"] == 2 and d["b"] == "new" and "failed" not in d
    entry_a, entry_b = d.get_entry("a"), d.get_entry("b")
    assert entry_a is not None and entry_b is not None
    assert entry_a.mod_rev == entry_b.mod_rev == ok.rev, "one transaction, one rev"
    no = d.txn([DictCompare("a", "==", 1)], then=[DictDelete("a")], else_=[DictDelete("b"), DictPut("c", 3)])
    assert not no.succeeded and no.rev == ok.rev + 1
    assert d.items() == [("a", 2), ("c", 3)]
    # A branch that changes nothing leaves the rev alone.
    none = d.txn([DictCompare("a", ">", 0)], then=[DictDelete("zzz")])
    assert none.succeeded and none.rev == no.rev
    with pytest.raises(InvalidArgumentError, match="twice"):
        d.txn([], then=[DictPut("x", 1), DictDelete("x")])


def test_request_ids_apply_once(d: apothic.Dict) -> None:
    assert d.put("k", "v1", request_id="req-1") == 1
    assert d.put("k", "v1", request_id="req-1") == 1, "a retry answers as the first call did"
    assert d.get_entry("k").version == 1  # type: ignore[union-attr]
    rev = d.rev()
    assert d.compare_and_set("k", 1, "v2", request_id="req-2") == 2
    assert d.compare_and_set("k", 1, "v2", request_id="req-2") == 2, "not a failed precondition on retry"
    assert d.delete("k", request_id="req-3") is True
    assert d.delete("k", request_id="req-3") is True
    d["k"] = "back"
    assert d.delete("k", request_id="req-3") is True and d["k"] == "back", "the retry did not delete again"
    result = d.txn([], then=[DictPut("t", 1)], request_id="req-4")
    assert d.txn([], then=[DictPut("t", 2)], request_id="req-4") == result
    assert d["t"] == 1 and d.rev() == rev + 4


def test_bad_keys_and_values(d: apothic.Dict) -> None:
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        d.put("", 1)
    with pytest.raises(InvalidArgumentError, match="512 bytes"):
        d.put("k" * 513, 1)
    d.put("é" * 256, 1)  # 512 bytes of UTF-8 is allowed
    with pytest.raises(InvalidArgumentError, match="1 MiB"):
        d.put("big", b"x" * (1024 * 1024 + 1))
    with pytest.raises(InvalidArgumentError, match="1 MiB"):
        d.txn([], then=[DictPut("big", b"x" * (1024 * 1024 + 1))])
    assert "big" not in d
    with pytest.raises(InvalidArgumentError, match="name"):
        apothic.Dict.from_name("not a name", client=d._config)
    with pytest.raises(apothic.exceptions.SerializationError, match="'lock'"):
        d.put("lock", threading.Lock())


async def test_async_forms(d: apothic.Dict) -> None:
    assert await d.aio.put("k", 1) == 1
    assert await d.aio.get("k") == 1 and await d.aio.len() == 1
    assert [e.key async for e in d.aio.entries()] == ["k"]
    with pytest.raises(apothic.exceptions.BlockingInAsyncContextError, match="aio"):
        d.get("k")


def test_listing_pages_and_prefix(d: apothic.Dict) -> None:
    result = d.txn([], then=[DictPut(f"p/{i:04d}", i) for i in range(1100)] + [DictPut("q", -1)])
    assert result.succeeded
    keys = d.keys(prefix="p/")
    assert keys == [f"p/{i:04d}" for i in range(1100)]
    assert [e.value for e in d.entries("p/")] == list(range(1100))
    assert d.items(prefix="q") == [("q", -1)] and len(d) == 1101


async def test_from_name_has_an_async_form_and_the_blocking_one_names_it(apothic_runtime: LocalRuntime) -> None:
    from apothic.exceptions import BlockingInAsyncContextError

    name = unique_name("dict")
    with pytest.raises(BlockingInAsyncContextError, match=r"await Dict\.from_name\.aio\(\.\.\.\)"):
        apothic.Dict.from_name(name, client=apothic_runtime.config)
    d = await apothic.Dict.from_name.aio(name, client=apothic_runtime.config)
    assert await d.aio.put("k", 1) == 1
    with pytest.raises(NotFoundError, match="nope"):
        await apothic.Dict.from_name.aio(unique_name("nope"), create_if_missing=False, client=apothic_runtime.config)
