"""What every CLI command module shares: the error handler and common options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON.")


def handle_errors(func: F) -> F:
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
