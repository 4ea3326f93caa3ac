"""DictManager against a pure-Python model: a hypothesis state machine over put (plain,
if_absent, if_version), delete, compare-and-set, transactions, retried request ids and folds of the
write log, on a real ``mem://`` Store. A second manager on the same store (another replica)
writes and folds too, so the rev guard and reload path run as well."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from apothic.server.dicts import (
    DeleteOutcome,
    DictCompare,
    DictDelete,
    DictManager,
    DictPut,
    PutOutcome,
    TxnOutcome,
)
from apothic.server.errors import FailedPrecondition, InvalidArgument
from apothic.server.store import Store

ACCOUNT = "accounts:model"
NAME = "model"
KEYS = st.sampled_from(["a", "b", "c", "d/1", "d/2"])
VALUES = st.binary(max_size=8)
VERSIONS = st.integers(min_value=0, max_value=6)
REQUEST_IDS = st.one_of(st.just(""), st.sampled_from(["r1", "r2", "r3", "r4"]))


@dataclass
class _Key:
    value: bytes
    version: int
    mod_rev: int
    create_rev: int


class DictModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = Store("mem://")
        self.run(self.store.open())
        self.managers = [DictManager(self.store), DictManager(self.store)]
        self.keys: dict[str, _Key] = {}
        self.rev = 0
        self.requests: dict[str, Any] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    @initialize()
    def create(self) -> None:
        record, length, created = self.run(self.managers[0].create(ACCOUNT, NAME, exist_ok=True))
        assert created and record.rev == 0 and length == 0

    # -- the model -----------------------------------------------------------------------

    def _version(self, key: str) -> int:
        entry = self.keys.get(key)
        return entry.version if entry else 0

    def _apply(self, ops: list[DictPut | DictDelete]) -> None:
        changed = [op for op in ops if isinstance(op, DictPut) or op.key in self.keys]
        if not changed:
            return
        self.rev += 1
        for op in changed:
            if isinstance(op, DictPut):
                old = self.keys.get(op.key)
                self.keys[op.key] = _Key(
                    op.value, (old.version + 1) if old else 1, self.rev, old.create_rev if old else self.rev
                )
            else:
                del self.keys[op.key]

    def _reused(self, request_id: str, kind: type[Any]) -> bool:
        """Whether this request id already answered an operation of another kind (which the
        manager must refuse)."""
        earlier = self.requests.get(request_id) if request_id else None
        return earlier is not None and not isinstance(earlier, kind)

    def _retried(self, request_id: str, outcome: Any) -> bool:
        """Whether this request id already answered (then ``outcome`` must equal that)."""
        if request_id and request_id in self.requests:
            assert outcome == self.requests[request_id]
            return True
        return False

    # -- rules -----------------------------------------------------------------------------

    @rule(m=st.integers(0, 1), key=KEYS, value=VALUES, request_id=REQUEST_IDS, if_absent=st.booleans())
    def put(self, m: int, key: str, value: bytes, request_id: str, if_absent: bool) -> None:
        self._put(m, key, value, request_id, if_absent=if_absent, if_version=None)

    @rule(m=st.integers(0, 1), key=KEYS, value=VALUES, request_id=REQUEST_IDS, version=VERSIONS)
    def compare_and_set(self, m: int, key: str, value: bytes, request_id: str, version: int) -> None:
        self._put(m, key, value, request_id, if_absent=False, if_version=version)

    def _put(self, m: int, key: str, value: bytes, request_id: str, *, if_absent: bool, if_version: int | None) -> None:
        if self._reused(request_id, PutOutcome):
            with pytest.raises(InvalidArgument, match="already used"):
                self.run(self.managers[m].put(ACCOUNT, NAME, key, value, "cloudpickle", request_id=request_id))
            return
        try:
            outcome = self.run(
                self.managers[m].put(
                    ACCOUNT,
                    NAME,
                    key,
                    value,
                    "cloudpickle",
                    if_absent=if_absent,
                    if_version=if_version,
                    request_id=request_id,
                )
            )
        except FailedPrecondition as exc:
            assert not (request_id and request_id in self.requests), "a retry answers as the first call did"
            current = self._version(key)
            assert (if_absent and current > 0) or (if_version is not None and if_version != current)
            assert f"version {current}" in str(exc)
            return
        if self._retried(request_id, outcome):
            return
        current = self._version(key)
        assert not (if_absent and current > 0) and (if_version is None or if_version == current)
        self._apply([DictPut(key, value, "cloudpickle")])
        assert outcome == PutOutcome(current + 1, self.rev)
        if request_id:
            self.requests[request_id] = outcome

    @rule(m=st.integers(0, 1), key=KEYS, request_id=REQUEST_IDS)
    def delete(self, m: int, key: str, request_id: str) -> None:
        if self._reused(request_id, DeleteOutcome):
            with pytest.raises(InvalidArgument, match="already used"):
                self.run(self.managers[m].delete(ACCOUNT, NAME, key, request_id=request_id))
            return
        outcome = self.run(self.managers[m].delete(ACCOUNT, NAME, key, request_id=request_id))
        if self._retried(request_id, outcome):
            return
        existed = key in self.keys
        self._apply([DictDelete(key)])
        assert outcome == DeleteOutcome(existed, self.rev)
        if request_id:
            self.requests[request_id] = outcome

    @rule(
        m=st.integers(0, 1),
        compares=st.lists(st.tuples(KEYS, st.sampled_from(["==", "!=", ">", "<"]), VERSIONS), max_size=3),
        then=st.dictionaries(KEYS, st.one_of(st.none(), VALUES), max_size=3),
        else_=st.dictionaries(KEYS, st.one_of(st.none(), VALUES), max_size=3),
        request_id=REQUEST_IDS,
    )
    def txn(
        self,
        m: int,
        compares: list[tuple[str, str, int]],
        then: dict[str, bytes | None],
        else_: dict[str, bytes | None],
        request_id: str,
    ) -> None:
        def ops(branch: dict[str, bytes | None]) -> list[DictPut | DictDelete]:
            return [DictDelete(k) if v is None else DictPut(k, v, "cloudpickle") for k, v in branch.items()]

        if self._reused(request_id, TxnOutcome):
            with pytest.raises(InvalidArgument, match="already used"):
                self.run(self.managers[m].txn(ACCOUNT, NAME, [], [], [], request_id=request_id))
            return

        outcome = self.run(
            self.managers[m].txn(
                ACCOUNT, NAME, [DictCompare(*c) for c in compares], ops(then), ops(else_), request_id=request_id
            )
        )
        if self._retried(request_id, outcome):
            return
        checks = {"==": int.__eq__, "!=": int.__ne__, ">": int.__gt__, "<": int.__lt__}
        succeeded = all(checks[op](self._version(k), v) for k, op, v in compares)
        self._apply(ops(then if succeeded else else_))
        assert outcome == TxnOutcome(succeeded, self.rev)
        if request_id:
            self.requests[request_id] = outcome

    @rule(m=st.integers(0, 1))
    def fold(self, m: int) -> None:
        """A replica folds the log rows it knows of (one whose copy is stale must not)."""
        self.run(self.managers[m].fold())

    @rule()
    def restart(self) -> None:
        """A fresh manager (a restarted control plane) loads everything from the store."""
        self.managers[0] = DictManager(self.store)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        for manager in self.managers:
            entries, more, rev = self.run(manager.list_entries(ACCOUNT, NAME))
            if rev != self.rev:
                # The other replica wrote since this one last looked: it reloads on its next
                # write; reads are served from its cache until then (documented).
                continue
            assert not more
            got = {e.key: _Key(e.value, e.version, e.mod_rev, e.create_rev) for e in entries}
            assert got == self.keys
        stored = self.run(DictManager(self.store).list_entries(ACCOUNT, NAME))
        assert stored[2] == self.rev
        assert {e.key: (e.value, e.version, e.mod_rev) for e in stored[0]} == {
            k: (v.value, v.version, v.mod_rev) for k, v in self.keys.items()
        }


DictModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestDictModel = DictModel.TestCase
