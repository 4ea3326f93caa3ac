"""``apothic billing balance|charges|credit``: the account's balance, charges and credit."""

from __future__ import annotations

from datetime import datetime

import typer

from apothic.cli._common import JSON_OPT, handle_errors

billing_app = typer.Typer(
    help="Show the balance and charges, and add credit (containers on priced workers are charged).",
    no_args_is_help=True,
)


def _usd(value: float) -> str:
    return f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


@billing_app.command("balance")
@handle_errors
def balance(as_json: bool = JSON_OPT) -> None:
    """Show the balance with the totals charged and credited (zero or below: exhausted)."""
    from apothic import billing
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console

    info = billing.balance()
    if as_json:
        typer.echo(to_json(info))
        return
    style = "red" if info.balance_usd <= 0 else "green"
    console.print(f"balance [{style}]{_usd(info.balance_usd)}[/{style}]")
    console.print(f"  charged {_usd(info.total_charged_usd)}   credited {_usd(info.total_credited_usd)}")
    if info.balance_usd <= 0:
        console.print("  work on priced workers is refused; add credit with `apothic billing credit AMOUNT_USD`")


@billing_app.command("charges")
@handle_errors
def charges(
    app_name: str = typer.Option("", "--app", help="Only this app's charges."),
    function_name: str = typer.Option("", "--function", help="Only this function's charges."),
    since: datetime = typer.Option(None, "--since", help="Only charges posted at or after this time (ISO, UTC)."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="At most this many charges."),
    as_json: bool = JSON_OPT,
) -> None:
    """List charges, newest first, with totals per app and function."""
    from datetime import UTC

    from apothic import billing
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, table

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    found = billing.charges(app_name=app_name, function_name=function_name, since=since, limit=limit)
    if as_json:
        typer.echo(to_json(found))
        return
    rows = [
        [
            short_time(c.time),
            c.app_name,
            c.function_name,
            c.kind,
            f"{c.seconds:.1f}",
            f"{c.share:.3f}",
            f"{_usd(c.price_per_hour)}/h",
            _usd(c.amount_usd),
            c.worker_id,
        ]
        for c in found.charges
    ]
    columns = ["time", "app", "function", "kind", "seconds", "share", "price", "amount", "worker"]
    console.print(table("charges", columns, rows))
    totals = [
        [s.app_name, s.function_name, s.kind, s.charges, f"{s.seconds:.1f}", _usd(s.amount_usd)] for s in found.summary
    ]
    console.print(table("by function", ["app", "function", "kind", "charges", "seconds", "amount"], totals))


@billing_app.command("credit")
@handle_errors
def credit(
    amount_usd: float = typer.Argument(..., help="The amount to add, in USD (above 0)."),
    note: str = typer.Option("", "--note", help="Why it was added (kept in the ledger)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Add credit to the balance (needs an API key of the account)."""
    from apothic import billing
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console

    added = billing.add_credit(amount_usd, note=note)
    if as_json:
        typer.echo(to_json(added))
        return
    console.print(f"added {_usd(amount_usd)}; balance {_usd(added.balance_usd)}")


def register(app: typer.Typer) -> None:
    """Adds ``apothic billing`` to the CLI."""
    app.add_typer(billing_app, name="billing")
