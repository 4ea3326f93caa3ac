"""Dict watches: one change log per dict, and the WatchDict stream over it.

:class:`DictFeeds` keeps a :class:`~apothic.server.watch.ChangeLog` per dict, created at the
dict's rev when it is created or first loaded. :class:`~apothic.server.dicts.DictManager`
appends to it after every commit (never before: a mutation that did not commit is never
sent): one :class:`~apothic.server.watch.Change` per rev, whose events say what happened to
each key (:class:`DictEventRecord`). Lease expiry and revocation delete keys one rev at a
time, so each of those deletes is a change of its own. Deleting the dict closes its log,
which ends every watch of it with NOT_FOUND.

A watch with a prefix sees only the events of keys under it; a change with none of them is
skipped (the revs it does send still strictly increase), and a progress marker is sent in
its place when nothing was sent for the progress interval, so a watcher of a quiet prefix in
a busy dict still learns a rev to resume from.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from apothic.server.dict_records import DictEntryRecord, DictRecord
from apothic.server.errors import NotFound
from apothic.server.watch import Change, ChangeLog, Progress, WatchItem, WatchSettings, watch

#: (account, dict name).
DictKey = tuple[str, str]


@dataclass(frozen=True)
class DictEventRecord:
    """What one change did to one key: ``entry`` is the key as written, or None when the
    change deleted it."""

    key: str
    entry: DictEntryRecord | None = None


class _Copy(Protocol):
    """The in-memory copy of a dict that a feed snapshots (``apothic.server.dicts._LiveDict``)."""

    record: DictRecord
    entries: dict[str, DictEntryRecord]

    def sorted_keys(self) -> list[str]: ...


class _Feed:
    def __init__(self, dict_id: str, log: ChangeLog[DictEventRecord], copy: _Copy) -> None:
        self.dict_id = dict_id
        self.log = log
        #: The current copy; its entries are the state as of ``log.rev``.
        self.copy = copy


class DictFeeds:
    """The change logs of every dict in memory.

    Args:
        settings: retention and progress interval of watches.
    """

    def __init__(self, settings: WatchSettings) -> None:
        self.settings = settings
        self._feeds: dict[DictKey, _Feed] = {}

    def attach(self, key: DictKey, copy: _Copy) -> None:
        """A copy of the dict was created or loaded: its log starts, or continues when it is
        the same dict (after a reload, changes another replica made are not known: watchers
        that had not seen them get a reset)."""
        feed = self._feeds.get(key)
        rev = copy.record.rev
        if feed is not None and feed.dict_id == copy.record.dict_id:
            if rev > feed.log.rev:
                feed.log.skip_to(rev)
            feed.copy = copy
            return
        if feed is not None:
            feed.log.close()
        log: ChangeLog[DictEventRecord] = ChangeLog(rev, self.settings.retention, self.settings.retention_bytes)
        self._feeds[key] = _Feed(copy.record.dict_id, log, copy)

    def append(self, key: DictKey, changes: list[tuple[int, list[DictEventRecord]]]) -> None:
        """Records committed changes, ``(rev, events)`` in rev order."""
        feed = self._feeds.get(key)
        if feed is None:
            return
        for rev, events in changes:
            size = sum(len(e.key) + (len(e.entry.value) if e.entry is not None else 0) for e in events)
            feed.log.append(rev, events, size)

    def close(self, key: DictKey) -> None:
        """The dict was deleted: every watch of it ends."""
        feed = self._feeds.pop(key, None)
        if feed is not None:
            feed.log.close()

    async def watch(
        self, key: DictKey, *, snapshot: bool, after_rev: int | None, prefix: str
    ) -> AsyncIterator[WatchItem]:
        """Streams the watch of a loaded dict (see the module docstring and
        :func:`apothic.server.watch.watch`).

        Raises:
            InvalidArgument: ``after_rev`` is negative or after the dict's current rev.
            NotFound: the dict is not loaded, or was deleted while watched.
        """
        what = f"dict {key[1]!r}"

        def log_of() -> ChangeLog[DictEventRecord]:
            feed = self._feeds.get(key)
            if feed is None:
                raise NotFound(f"{what} was deleted")
            return feed.log

        def entries() -> list[DictEntryRecord]:
            copy = self._feeds[key].copy
            keys = copy.sorted_keys()
            out: list[DictEntryRecord] = []
            for k in keys[bisect.bisect_left(keys, prefix) :]:
                if not k.startswith(prefix):
                    break
                out.append(copy.entries[k])
            return out

        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        stream = watch(
            log_of, what=what, snapshot=entries if snapshot else None, after_rev=after_rev, settings=self.settings
        )
        async for item in stream:
            if prefix and isinstance(item, Change):
                events = tuple(e for e in item.events if e.key.startswith(prefix))
                if not events:
                    if loop.time() - last_sent >= self.settings.progress_s:
                        last_sent = loop.time()
                        yield Progress(item.rev)
                    continue
                item = Change(item.rev, events)
            last_sent = loop.time()
            yield item
