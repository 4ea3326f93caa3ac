"""How long request ids are remembered: long enough for every retry the SDK makes."""

from __future__ import annotations

from apothic._transport import UNAVAILABLE_RETRY_S
from apothic.server.request_ids import REQUEST_ID_TTL_S, RecentRequests


def test_ids_outlive_the_sdks_retries() -> None:
    assert REQUEST_ID_TTL_S >= 2 * UNAVAILABLE_RETRY_S


def test_a_busy_object_keeps_young_ids_however_many() -> None:
    recent: RecentRequests[int] = RecentRequests(keep=10, ttl_s=60, forget_every=5)
    for i in range(1000):  # 1,000 requests within one second
        recent.add(f"r{i}", i, 100.0 + i / 1000, recent.due(100.0 + i / 1000))
    assert len(recent) == 1000 and recent.get("r0") == 0


def test_old_ids_beyond_the_newest_are_forgotten_in_batches() -> None:
    recent: RecentRequests[int] = RecentRequests(keep=10, ttl_s=60, forget_every=5)
    for i in range(50):
        recent.add(f"old{i}", i, 0.0, recent.due(0.0))
    forgotten: list[list[str]] = []
    for i in range(20):
        due = recent.due(1000.0)
        if due:
            forgotten.append(due)
        recent.add(f"new{i}", i, 1000.0, due)
    assert forgotten and all(len(batch) > 1 for batch in forgotten), "forgotten a batch at a time"
    assert recent.get("old0") is None and recent.get("new19") == 19
    assert len(recent) >= 10 and all(recent.get(f"new{i}") == i for i in range(20))


def test_due_changes_nothing_until_add() -> None:
    recent: RecentRequests[int] = RecentRequests(keep=1, ttl_s=1, forget_every=1)
    recent.add("a", 1, 0.0, None)
    recent.add("b", 2, 0.0, None)
    due = recent.due(100.0)
    assert due == ["a", "b"] or due == ["a"]
    assert recent.get("a") == 1, "a write that did not commit forgets nothing"
    recent.add("c", 3, 100.0, due)
    assert recent.get("a") is None and recent.get("c") == 3
