"""Markers every watch stream carries between its change events.

A watch of a queue or a dict (``q.watch()``, ``d.watch()``) yields the object's own change
events (:class:`apothic.dict.DictChange`, :class:`apothic.queue.QueueChange`) and these:

- :class:`SnapshotEnd` once, after the snapshot entries when ``snapshot=True``: they were the
  state as of its ``rev``; changes after it follow;
- :class:`Progress` when nothing changed for a while: every change up to ``rev`` was sent, so
  a watcher can checkpoint ``rev`` and resume after it;
- :class:`Reset` when changes the watcher did not see are no longer retained (it resumed from
  an old rev, the control plane restarted, or it read slower than writers wrote). With
  ``snapshot=True`` a fresh snapshot follows; otherwise the watcher must rebuild its state.

Revs in one stream strictly increase; none is missing or repeated unless a :class:`Reset`
says so.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Progress", "Reset", "SnapshotEnd", "WatchMarker"]


@dataclass(frozen=True)
class SnapshotEnd:
    """The snapshot is complete: it was the state as of ``rev``."""

    rev: int


@dataclass(frozen=True)
class Progress:
    """Nothing changed lately: every change up to ``rev`` has been sent."""

    rev: int


@dataclass(frozen=True)
class Reset:
    """Changes after ``after_rev`` and before ``oldest_rev`` are gone.

    Attributes:
        after_rev: where the watcher was.
        oldest_rev: the oldest change still retained.
        rev: the object's rev when the reset was sent.
        reason: a sentence for humans.
    """

    after_rev: int
    oldest_rev: int
    rev: int
    reason: str


WatchMarker = SnapshotEnd | Progress | Reset
