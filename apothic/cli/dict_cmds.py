"""``apothic dict get|put|items|watch``: read, write and watch Dicts from the shell."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from apothic.cli._common import JSON_OPT, handle_errors

F = TypeVar("F", bound=Callable[..., Any])

dict_app = typer.Typer(help="Read and write Dicts.", no_args_is_help=True)


def _plain(value: Any) -> Any:
    """The value itself when JSON can hold it, else its repr."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


@dict_app.command("get")
@handle_errors
def get(name: str = typer.Argument(..., help="The dict."), key: str = typer.Argument(..., help="The key.")) -> None:
    """Print one key's value as JSON (its repr when JSON cannot hold it)."""
    from apothic.cli._render import err_console
    from apothic.dict import Dict

    entry = Dict.from_name(name, create_if_missing=False).get_entry(key)
    if entry is None:
        err_console.print(f"[red]error:[/red] key {key!r} not found in dict {name!r}")
        raise typer.Exit(1)
    typer.echo(json.dumps(_plain(entry.value)))


@dict_app.command("put")
@handle_errors
def put(
    name: str = typer.Argument(..., help="The dict (created when missing)."),
    key: str = typer.Argument(..., help="The key."),
    value: str = typer.Argument(..., help="The value, as JSON."),
) -> None:
    """Write one key from a JSON value and print its new version."""
    from apothic.dict import Dict

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="VALUE") from None
    version = Dict.from_name(name).put(key, parsed)
    typer.echo(f"{key}: version {version}")


@dict_app.command("items")
@handle_errors
def items(
    name: str = typer.Argument(..., help="The dict."),
    prefix: str = typer.Option("", "--prefix", help="Only keys that start with this."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List every key with its value and version, in key order."""
    from apothic.cli._render import console, table
    from apothic.dict import Dict

    entries = list(Dict.from_name(name, create_if_missing=False).entries(prefix))
    if as_json:
        rows = [{"key": e.key, "value": _plain(e.value), "version": e.version, "mod_rev": e.mod_rev} for e in entries]
        typer.echo(json.dumps(rows, indent=2))
        return
    console.print(
        table(
            f"dict {name}",
            ["key", "value", "version", "mod_rev"],
            [[e.key, json.dumps(_plain(e.value)), e.version, e.mod_rev] for e in entries],
        )
    )


def _watch_item_json(item: Any) -> dict[str, Any]:
    from apothic.dict import DictChange, DictEntry

    def entry(e: DictEntry) -> dict[str, Any]:
        return {"key": e.key, "value": _plain(e.value), "version": e.version, "mod_rev": e.mod_rev}

    if isinstance(item, DictEntry):
        return {"type": "entry", **entry(item)}
    if isinstance(item, DictChange):
        events = [
            {"type": "put", **entry(ev.entry)} if ev.entry is not None else {"type": "delete", "key": ev.key}
            for ev in item.events
        ]
        return {"type": "change", "rev": item.rev, "events": events}
    from apothic.cli._render import watch_marker_record

    marker = watch_marker_record(item)
    assert marker is not None, f"unexpected watch item {item!r}"
    return marker


def _watch_item_text(item: Any) -> str:
    from rich.markup import escape

    doc = _watch_item_json(item)
    kind = doc["type"]
    if kind == "entry":
        return f"  {escape(doc['key'])} = {escape(json.dumps(doc['value']))} [dim](version {doc['version']})[/dim]"
    if kind == "snapshot_end":
        return f"[dim]── snapshot as of rev {doc['rev']} ──[/dim]"
    if kind == "change":
        lines = []
        for ev in doc["events"]:
            if ev["type"] == "put":
                value = escape(json.dumps(ev["value"]))
                lines.append(
                    f"rev {doc['rev']}  [green]put[/green] {escape(ev['key'])} = {value} "
                    f"[dim](version {ev['version']})[/dim]"
                )
            else:
                lines.append(f"rev {doc['rev']}  [red]delete[/red] {escape(ev['key'])}")
        return "\n".join(lines)
    if kind == "progress":
        return f"[dim]· up to date at rev {doc['rev']}[/dim]"
    return f"[yellow]reset:[/yellow] {escape(doc['reason'])}"


@dict_app.command("watch")
@handle_errors
def watch(
    name: str = typer.Argument(..., help="The dict."),
    snapshot: bool = typer.Option(False, "--snapshot", help="First print every entry, as of one rev."),
    after_rev: int | None = typer.Option(None, "--after-rev", help="Resume after this rev (default: from now).", min=0),
    prefix: str = typer.Option("", "--prefix", help="Only keys that start with this."),
    count: int = typer.Option(0, "--count", help="Stop after this many changes (0: never).", min=0),
    timeout: float = typer.Option(0.0, "--timeout", help="Stop after this many seconds (0: never).", min=0.0),
    as_json: bool = JSON_OPT,
) -> None:
    """Print a dict's changes as they commit, until Ctrl-C (JSON lines with --json).

    Also prints the end of the snapshot, progress (the rev) when quiet, and resets.
    """
    import asyncio
    import contextlib

    from apothic._sync import run_sync
    from apothic.cli._render import console
    from apothic.dict import Dict, DictChange

    async def follow() -> None:
        changes = 0
        stream = Dict(name).aio.watch(snapshot=snapshot, after_rev=after_rev, prefix=prefix)
        async for item in stream:
            if as_json:
                typer.echo(json.dumps(_watch_item_json(item)))
            else:
                console.print(_watch_item_text(item))
            if isinstance(item, DictChange):
                changes += 1
                if count and changes >= count:
                    return

    async def bounded() -> None:
        if not timeout:
            await follow()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await follow()

    try:
        run_sync(bounded(), "apothic dict watch")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Adds ``apothic dict`` to the CLI."""
    app.add_typer(dict_app, name="dict")
