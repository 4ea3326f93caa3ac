"""Rich rendering shared by the CLI commands."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

_STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "timed_out": "red",
    "live": "green",
    "superseded": "dim",
    "stopped": "dim",
}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "outcome"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def as_json(value: Any) -> str:
    """Serializes dataclasses (and lists of them) for ``--json`` output."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif isinstance(value, list):
        value = [asdict(v) if is_dataclass(v) and not isinstance(v, type) else v for v in value]
    return json.dumps(_plain(value), indent=2, default=str)


def status_text(status: Any) -> str:
    text = str(status)
    style = _STATUS_STYLE.get(text, "")
    return f"[{style}]{text}[/{style}]" if style else text


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*[str(c) if c is not None else "" for c in row])
    return t


def short_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else ""


def print_event(event: Any, *, show_job: bool = True) -> None:
    """Prints one job event as a line (logs are printed as they came)."""
    from apothic.models import (
        JobEndEvent,
        JobLogEvent,
        JobQueuedEvent,
        JobResultEvent,
        JobRunningEvent,
        JobSnapshotEvent,
    )

    prefix = f"[dim]{event.function_name} {event.job_id}[/dim] " if show_job else ""
    if isinstance(event, JobLogEvent):
        style = {"stderr": "yellow", "system": "magenta"}.get(event.stream, "")
        for line in event.data.splitlines() or [""]:
            text = line.replace("[", "\\[")
            console.print(f"{prefix}[{style}]{text}[/{style}]" if style else f"{prefix}{text}")
    elif isinstance(event, JobSnapshotEvent) and event.job is not None:
        job = event.job
        console.print(
            f"{prefix}[bold]snapshot[/bold] {status_text(job.status)} attempt {job.attempt} (seq {event.seq})"
        )
    elif isinstance(event, JobQueuedEvent):
        console.print(f"{prefix}[yellow]queued[/yellow]")
    elif isinstance(event, JobRunningEvent):
        console.print(f"{prefix}[cyan]running[/cyan] attempt {event.attempt} on {event.worker_id}")
    elif isinstance(event, JobResultEvent):
        if event.ok:
            console.print(f"{prefix}[green]result[/green] {_preview(event)}")
        elif event.error is not None:
            console.print(f"{prefix}[red]error[/red] {event.error.type}: {event.error.message}")
    elif isinstance(event, JobEndEvent):
        reason = f" — {event.reason}" if event.reason else ""
        console.print(f"{prefix}end {status_text(event.status)}{reason}")


def print_marker(marker: Any, *, what: str = "seq") -> None:
    """Prints a watch marker (:mod:`apothic.watch`) as a line; progress markers print nothing.

    Args:
        marker: a ``SnapshotEnd``, ``Progress`` or ``Reset``.
        what: what the marker's revs count (``seq`` for a job's events).
    """
    from rich.markup import escape

    from apothic.watch import Reset, SnapshotEnd

    if isinstance(marker, SnapshotEnd):
        console.print(f"[dim]snapshot as of {what} {marker.rev}; live events follow[/dim]")
    elif isinstance(marker, Reset):
        console.print(f"[yellow]reset: events were skipped ({escape(marker.reason)})[/yellow]", soft_wrap=True)


def _preview(event: Any) -> str:
    try:
        text = repr(event.value())
    except Exception:
        return "(value not decodable here)"
    return text if len(text) <= 200 else text[:197] + "..."


def watch_marker_record(item: Any) -> dict[str, Any] | None:
    """The JSON record of a watch marker (``SnapshotEnd``, ``Progress``, ``Reset`` from
    :mod:`apothic.watch`), or None when ``item`` is not one."""
    from apothic.watch import Progress, Reset, SnapshotEnd

    if isinstance(item, SnapshotEnd):
        return {"type": "snapshot_end", "rev": item.rev}
    if isinstance(item, Progress):
        return {"type": "progress", "rev": item.rev}
    if isinstance(item, Reset):
        return {
            "type": "reset",
            "after_rev": item.after_rev,
            "oldest_rev": item.oldest_rev,
            "rev": item.rev,
            "reason": item.reason,
        }
    return None
