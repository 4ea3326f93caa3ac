"""``apothic queue info|len|put|clear|watch``: inspect, feed and watch Queues from the shell."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from apothic.cli._common import JSON_OPT, handle_errors

F = TypeVar("F", bound=Callable[..., Any])

queue_app = typer.Typer(help="Inspect and feed Queues.", no_args_is_help=True)

PARTITION_OPT = typer.Option(None, "--partition", "-p", help="Only this partition (default: every partition).")


@queue_app.command("info")
@handle_errors
def info(
    name: str = typer.Argument(..., help="The queue's name."),
    as_json: bool = JSON_OPT,
) -> None:
    """Show a queue's rev, length, max_attempts, maxsize and dead-letter queue."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, table
    from apothic.queue import Queue

    state = Queue.from_name(name, create_if_missing=False).info()
    if as_json:
        typer.echo(to_json(state))
        return
    rows: list[list[Any]] = [
        ["rev", state.rev],
        ["length", state.length],
        ["max_attempts", state.max_attempts or "no limit"],
        ["maxsize", state.maxsize or "unbounded"],
        ["dead_letter_queue", state.dead_letter_queue],
        ["ephemeral", "yes" if state.ephemeral else "no"],
    ]
    console.print(table(f"queue {name}", ["field", "value"], rows))


@queue_app.command("len")
@handle_errors
def length(
    name: str = typer.Argument(..., help="The queue's name."),
    partition: str = PARTITION_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Count the items of a queue not yet acked (leased ones included)."""
    from apothic.cli._render import console
    from apothic.queue import Queue

    count = Queue.from_name(name, create_if_missing=False).len(partition)
    if as_json:
        typer.echo(json.dumps({"name": name, "partition": partition, "length": count}))
    else:
        console.print(count)


@queue_app.command("put")
@handle_errors
def put(
    name: str = typer.Argument(..., help="The queue's name (created when missing)."),
    value: str = typer.Argument(..., help="The item, as JSON."),
    partition: str = typer.Option("", "--partition", "-p", help="The partition to append to."),
) -> None:
    """Append one item, given as JSON, to a queue; consumers get the decoded value."""
    from apothic.cli._render import console
    from apothic.queue import Queue

    try:
        item = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"the item is not valid JSON: {exc}", param_hint="VALUE") from None
    Queue.from_name(name).put(item, partition=partition)
    console.print(f"put 1 item on queue {name!r}" + (f" (partition {partition!r})" if partition else ""))


@queue_app.command("clear")
@handle_errors
def clear(
    name: str = typer.Argument(..., help="The queue's name."),
    partition: str = PARTITION_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Remove every item of a queue (or of one partition), leased ones included."""
    from apothic.cli._render import console
    from apothic.queue import Queue

    removed = Queue.from_name(name, create_if_missing=False).clear(partition)
    if as_json:
        typer.echo(json.dumps({"name": name, "partition": partition, "removed": removed}))
    else:
        console.print(f"removed {removed} item(s) from queue {name!r}")


@queue_app.command("watch")
@handle_errors
def watch(
    name: str = typer.Argument(..., help="The queue's name."),
    snapshot: bool = typer.Option(False, "--snapshot", help="First print every item, as of one rev."),
    after_rev: int | None = typer.Option(None, "--after-rev", help="Resume after this rev (default: from now).", min=0),
    partition: str | None = typer.Option(None, "--partition", "-p", help="Only this partition (default: every one)."),
    count: int = typer.Option(0, "--count", help="Stop after this many changes (0: never).", min=0),
    timeout: float = typer.Option(0.0, "--timeout", help="Stop after this many seconds (0: never).", min=0.0),
    as_json: bool = JSON_OPT,
) -> None:
    """Print a queue's changes as they commit, until Ctrl-C (JSON lines with --json).

    One line per item event, with its rev: put, claimed, renewed, acked, released, dead_lettered, removed, redriven.
    Also prints the end of the snapshot, progress (the rev) when quiet, and resets (changes were missed).
    A lease that runs out is not a change: its item is visible again without a line.
    """
    import asyncio

    from apothic._sync import run_sync
    from apothic.queue import Queue, QueueChange

    async def follow() -> None:
        changes = 0
        stream = Queue.from_name(name, create_if_missing=False).aio.watch(
            snapshot=snapshot, after_rev=after_rev, partition=partition
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout or None):
                async for item in stream:
                    _print_watch_item(item, as_json=as_json)
                    changes += isinstance(item, QueueChange)
                    if count and changes >= count:
                        break

    run_sync(follow(), "apothic queue watch")


def _value_text(value: Callable[[], Any]) -> Any:
    try:
        return value()
    except Exception:
        return "(not decodable here)"


def _event_record(ev: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": ev.kind, "seq": ev.seq, "partition": ev.partition, "attempt": ev.attempt}
    if ev.lease_deadline is not None:
        record["lease_deadline"] = ev.lease_deadline.isoformat()
    if ev.visible_at is not None:
        record["visible_at"] = ev.visible_at.isoformat()
    if ev.kind == "released":
        record["delay_s"] = ev.delay_s
    if ev.last_error:
        record["last_error"] = ev.last_error
    if ev.moved_to_seq:
        record["moved_to_seq"] = ev.moved_to_seq
    if ev.kind == "put":
        record["value"] = _value_text(lambda: ev.value)
    return record


def _watch_record(item: Any) -> dict[str, Any]:
    from apothic.queue import QueueChange, QueueItemState

    if isinstance(item, QueueChange):
        return {"type": "change", "rev": item.rev, "events": [_event_record(ev) for ev in item.events]}
    if isinstance(item, QueueItemState):
        record: dict[str, Any] = {
            "type": "item",
            "seq": item.seq,
            "partition": item.partition,
            "state": item.state,
            "attempt": item.attempt,
            "value": _value_text(lambda: item.value),
        }
        if item.lease_deadline is not None:
            record["lease_deadline"] = item.lease_deadline.isoformat()
        if item.last_error:
            record["last_error"] = item.last_error
        return record
    from apothic.cli._render import watch_marker_record

    marker = watch_marker_record(item)
    if marker is None:
        raise TypeError(f"unexpected watch item {item!r}")
    return marker


def _print_watch_item(item: Any, *, as_json: bool) -> None:
    from rich.markup import escape

    from apothic.cli._render import console

    record = _watch_record(item)
    if as_json:
        typer.echo(json.dumps(record, default=str))
        return
    kind = record.pop("type")
    if kind == "change":
        for ev in record["events"]:
            details = " ".join(f"{k}={v!r}" for k, v in ev.items() if k not in ("kind", "seq"))
            line = f"rev {record['rev']} [bold]{ev['kind']}[/bold] seq {ev['seq']} {escape(details)}"
            console.print(line, soft_wrap=True)
        if not record["events"]:
            console.print(f"rev {record['rev']} [dim](no item changed)[/dim]")
    elif kind == "item":
        details = " ".join(f"{k}={v!r}" for k, v in record.items() if k != "seq")
        console.print(f"item seq {record['seq']} {escape(details)}", soft_wrap=True)
    elif kind == "reset":
        console.print(f"[yellow]reset[/yellow] {escape(record['reason'])}", soft_wrap=True)
    else:
        console.print(f"[dim]{kind.replace('_', ' ')} rev {record['rev']}[/dim]")


def register(app: typer.Typer) -> None:
    """Adds ``apothic queue`` to the CLI."""
    app.add_typer(queue_app, name="queue")
