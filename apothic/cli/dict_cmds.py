"""``apothic dict get|put|items``: read and write Dicts from the shell."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from apothic.cli._common import handle_errors

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


def register(app: typer.Typer) -> None:
    """Adds ``apothic dict`` to the CLI."""
    app.add_typer(dict_app, name="dict")
