"""``apothic queue len|put|clear``: inspect and feed Queues from the shell."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

queue_app = typer.Typer(help="Inspect and feed Queues.", no_args_is_help=True)

PARTITION_OPT = typer.Option(None, "--partition", "-p", help="Only this partition (default: every partition).")
JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON.")


def _errors(func: F) -> F:
    """Turns SDK errors into a red message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from apothic.cli._render import err_console
        from apothic.exceptions import ApothicError

        try:
            return func(*args, **kwargs)
        except ApothicError as exc:
            err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@queue_app.command("len")
@_errors
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
@_errors
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
@_errors
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
