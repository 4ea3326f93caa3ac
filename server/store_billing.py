"""The store's queries for billing (part of :class:`apothic.server.store.Store`).

An account's ``balance`` (USD) and its totals live on its ``account`` record; every change
to them commits in the transaction that appends the ``ledger`` row explaining it (a charge
or a credit), so the balance always equals credits minus charges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apothic.server.store_base import Statement, StoreBase, _rid

#: The ``kind`` of a credit row (charges carry what the container ran: function, service…).
CREDIT = "credit"


@dataclass(frozen=True)
class ChargeRow:
    """One ledger charge: a container's time on a priced worker since its last charge."""

    charge_id: str
    account: str
    time: datetime
    amount: float
    seconds: float
    price_per_hour: float
    share: float
    app_name: str
    function_name: str
    kind: str
    container_id: str
    worker_id: str


@dataclass(frozen=True)
class BalanceRow:
    """An account's balance and totals, in USD."""

    balance: float
    total_charged: float
    total_credited: float


@dataclass(frozen=True)
class ChargeSummaryRow:
    """The charges of one function of one app."""

    app_name: str
    function_name: str
    kind: str
    amount: float
    seconds: float
    charges: int


def _charge_from_doc(doc: dict[str, Any]) -> ChargeRow:
    return ChargeRow(
        charge_id=f"ledger:{doc['id'].id}",
        account=doc["account"],
        time=doc["time"],
        amount=float(doc["amount"]),
        seconds=float(doc.get("seconds") or 0.0),
        price_per_hour=float(doc.get("price_per_hour") or 0.0),
        share=float(doc.get("share") or 0.0),
        app_name=doc.get("app_name") or "",
        function_name=doc.get("function_name") or "",
        kind=doc["kind"],
        container_id=doc.get("container_id") or "",
        worker_id=doc.get("worker_id") or "",
    )


def _filters(account: str, app_name: str, function_name: str, since: datetime | None) -> tuple[str, dict[str, Any]]:
    where = ["account = $acct", "kind != $credit"]
    params: dict[str, Any] = {"acct": account, "credit": CREDIT}
    if app_name:
        where.append("app_name = $app")
        params["app"] = app_name
    if function_name:
        where.append("function_name = $fn")
        params["fn"] = function_name
    if since is not None:
        where.append("time >= $since")
        params["since"] = since
    return " AND ".join(where), params


class BillingStore(StoreBase):
    """Balances and the ledger; :class:`apothic.server.store.Store` adds everything else."""

    def charge_statements(self, charges: list[ChargeRow]) -> list[Statement]:
        """Statements that append charges and take them from their accounts' balances (commit
        them in one transaction)."""
        stmts: list[Statement] = []
        for c in charges:
            doc = {
                "account": c.account,
                "time": c.time,
                "kind": c.kind,
                "amount": c.amount,
                "seconds": c.seconds,
                "price_per_hour": c.price_per_hour,
                "share": c.share,
                "app_name": c.app_name,
                "function_name": c.function_name,
                "container_id": c.container_id,
                "worker_id": c.worker_id,
            }
            stmts.append(
                (
                    "CREATE $id CONTENT $doc RETURN NONE; "
                    "UPDATE $acct SET balance = (balance ?? 0.0) - $amount, "
                    "total_charged = (total_charged ?? 0.0) + $amount RETURN NONE",
                    {
                        "id": _rid("ledger", c.charge_id),
                        "doc": doc,
                        "acct": _rid("account", c.account),
                        "amount": c.amount,
                    },
                )
            )
        return stmts

    async def post_charges(self, charges: list[ChargeRow]) -> None:
        """Appends charges and updates the balances, in one transaction."""
        if charges:
            await self.commit(self.charge_statements(charges))

    async def add_credit(self, credit_id: str, account: str, amount: float, note: str, now: datetime) -> float:
        """Appends a credit row and adds it to the balance in one transaction; returns the
        balance after it."""
        doc = {"account": account, "time": now, "kind": CREDIT, "amount": amount, "note": note}
        await self.commit(
            [
                (
                    "CREATE $id CONTENT $doc RETURN NONE; "
                    "UPDATE $acct SET balance = (balance ?? 0.0) + $amount, "
                    "total_credited = (total_credited ?? 0.0) + $amount RETURN NONE",
                    {"id": _rid("ledger", credit_id), "doc": doc, "acct": _rid("account", account), "amount": amount},
                )
            ]
        )
        return (await self.get_balance(account)).balance

    async def get_balance(self, account: str) -> BalanceRow:
        """An account's balance and totals (zeros for an account without ledger rows)."""
        row = await self._q(
            "SELECT balance, total_charged, total_credited FROM ONLY $acct", {"acct": _rid("account", account)}
        )
        row = row or {}
        return BalanceRow(
            balance=float(row.get("balance") or 0.0),
            total_charged=float(row.get("total_charged") or 0.0),
            total_credited=float(row.get("total_credited") or 0.0),
        )

    async def account_balances(self) -> dict[str, float]:
        """Every account's balance, by account id."""
        rows = await self._q("SELECT id, balance FROM account")
        return {f"accounts:{r['id'].id}": float(r.get("balance") or 0.0) for r in rows or ()}

    async def list_charges(
        self, account: str, *, app_name: str = "", function_name: str = "", since: datetime | None = None, limit: int
    ) -> list[ChargeRow]:
        """An account's charges matching the filters, newest first."""
        where, params = _filters(account, app_name, function_name, since)
        rows = await self._q(
            f"SELECT * FROM ledger WHERE {where} ORDER BY time DESC, id DESC LIMIT $limit", {**params, "limit": limit}
        )
        return [_charge_from_doc(r) for r in rows or ()]

    async def charge_summary(
        self, account: str, *, app_name: str = "", function_name: str = "", since: datetime | None = None
    ) -> list[ChargeSummaryRow]:
        """Totals per app and function of the charges matching the filters, largest first."""
        where, params = _filters(account, app_name, function_name, since)
        rows = await self._q(
            "SELECT app_name, function_name, kind, math::sum(amount) AS amount, math::sum(seconds) AS seconds, "
            f"count() AS charges FROM ledger WHERE {where} GROUP BY app_name, function_name, kind",
            params,
        )
        out = [
            ChargeSummaryRow(
                app_name=r["app_name"],
                function_name=r["function_name"],
                kind=r["kind"],
                amount=float(r["amount"] or 0.0),
                seconds=float(r["seconds"] or 0.0),
                charges=int(r["charges"]),
            )
            for r in rows or ()
        ]
        return sorted(out, key=lambda s: (-s.amount, s.app_name, s.function_name))
