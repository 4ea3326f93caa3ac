"""``apothic queue len|put|clear``: inspect and feed Queues from the shell."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from apothic.cli._common import JSON_OPT, handle_errors

F = TypeVar("F", bound=Callable[..., Any])

queue_app = typer.Typer(help="Inspect and feed Queues.", no_args_is_help=True)

PARTITION_OPT = typer.Option(None, "--partition", "-p", help="Only this partition (default: every partition).")


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


def register(app: typer.Typer) -> None:
    """Adds ``apothic queue`` to the CLI."""
    app.add_typer(queue_app, name="queue")
