"""``apothic secret create|list|delete``: manage named secrets. Values go in, never come out."""

from __future__ import annotations

import typer

from apothic.cli._common import JSON_OPT, handle_errors

secret_app = typer.Typer(help="Manage secrets (environment variables for functions).", no_args_is_help=True)


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # Name the key only: the argument may hold a value.
            problem = "an argument without '='" if not sep else "an empty KEY"
            raise typer.BadParameter(f"expected KEY=VALUE, got {problem}", param_hint="KEY=VALUE")
        values[key] = value
    return values


@secret_app.command("create")
@handle_errors
def create(
    name: str = typer.Argument(..., help="The secret's name."),
    pairs: list[str] = typer.Argument(..., help="KEY=VALUE pairs: environment variables the secret sets."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the values of an existing secret."),
    as_json: bool = JSON_OPT,
) -> None:
    """Create a secret from KEY=VALUE pairs (or replace one with --overwrite).

    Functions get its values as environment variables with
    ``@app.function(secrets=[apothic.Secret.from_name(NAME)])``.
    """
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console
    from apothic.secret import Secret

    info = Secret.create(name, _parse_pairs(pairs), overwrite=overwrite)
    if as_json:
        typer.echo(to_json(info))
        return
    console.print(f"secret {info.name}: {', '.join(info.keys)}")


@secret_app.command("list")
@handle_errors
def list_secrets(as_json: bool = JSON_OPT) -> None:
    """List secrets with their key names and times (never their values)."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, table
    from apothic.secret import Secret

    secrets = Secret.list()
    if as_json:
        typer.echo(to_json(secrets))
        return
    rows = [[s.name, ", ".join(s.keys), short_time(s.created_at), short_time(s.updated_at)] for s in secrets]
    console.print(table("secrets", ["name", "keys", "created", "updated"], rows))


@secret_app.command("delete")
@handle_errors
def delete(name: str = typer.Argument(..., help="The secret's name.")) -> None:
    """Delete a secret. Running containers keep their values; later deploys naming it fail."""
    from apothic.cli._render import console
    from apothic.secret import Secret

    Secret.delete(name)
    console.print(f"deleted secret {name}")


def register(app: typer.Typer) -> None:
    """Adds ``apothic secret`` to the CLI."""
    app.add_typer(secret_app, name="secret")
