"""Billing: the account's balance, its ledger charges, and adding credit.

Containers on priced workers (a worker started with ``apothic worker --cost-per-hour USD``)
are charged for the time they run: the worker's price times the container's share of the
worker, posted as ledger charges while they run and when they end. Free workers (the
default) are never charged. While the balance is zero or below, work that could only run on
priced workers is refused (:class:`~apothic.exceptions.FailedPreconditionError` naming the
balance) and containers already running on them are stopped.

Each call has an async form on ``.aio``::

    apothic.billing.add_credit(25, note="October")
    print(apothic.billing.balance().balance_usd)
    for charge in apothic.billing.charges(app_name="etl").charges:
        print(charge.function_name, charge.seconds, charge.amount_usd)
    balance = await apothic.billing.balance.aio()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError

__all__ = ["Balance", "Charge", "ChargeSummary", "Charges", "Credit", "add_credit", "balance", "charges"]

#: Charges one :func:`charges` call returns at most.
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Balance:
    """An account's balance.

    Attributes:
        balance_usd: credited minus charged; zero or below means exhausted.
        total_charged_usd: everything charged so far.
        total_credited_usd: everything credited so far.
    """

    balance_usd: float
    total_charged_usd: float
    total_credited_usd: float


@dataclass(frozen=True)
class Charge:
    """One ledger charge: the time one container used on one priced worker.

    Attributes:
        charge_id: the ledger row's id.
        time: when it was posted.
        amount_usd: ``seconds * price_per_hour / 3600``.
        seconds: the time charged.
        price_per_hour: the worker's cost per hour times ``share``.
        share: the container's share of the worker, in (0, 1].
        app_name: the app.
        function_name: the function (a class's name for ``@app.cls``; ``serve`` for sandboxes).
        kind: ``function``, ``service``, ``cls`` or ``sandbox``.
        container_id: the container.
        worker_id: the worker it ran on.
    """

    charge_id: str
    time: datetime | None
    amount_usd: float
    seconds: float
    price_per_hour: float
    share: float
    app_name: str
    function_name: str
    kind: str
    container_id: str
    worker_id: str


@dataclass(frozen=True)
class ChargeSummary:
    """The charges of one function of one app.

    Attributes:
        app_name: the app.
        function_name: the function.
        kind: ``function``, ``service``, ``cls`` or ``sandbox``.
        amount_usd: their total.
        seconds: their total time.
        charges: how many there are.
    """

    app_name: str
    function_name: str
    kind: str
    amount_usd: float
    seconds: float
    charges: int


@dataclass(frozen=True)
class Charges:
    """What :func:`charges` returns.

    Attributes:
        charges: the matching charges, newest first (at most ``limit``).
        summary: totals per app and function over every matching charge, largest first.
    """

    charges: tuple[Charge, ...]
    summary: tuple[ChargeSummary, ...]


@dataclass(frozen=True)
class Credit:
    """A credit that was added.

    Attributes:
        credit_id: its ledger row's id.
        balance_usd: the balance after it.
    """

    credit_id: str
    balance_usd: float


class _Balance:
    """``billing.balance()``; ``await billing.balance.aio()`` is the async form."""

    async def aio(self, *, client: ClientConfig | None = None) -> Balance:
        """The account's balance with the totals charged and credited.

        Args:
            client: the control plane to use (the configured one when None).
        """
        return await get_client(client).get_balance()  # type: ignore[no-any-return]

    def __call__(self, *, client: ClientConfig | None = None) -> Balance:
        """The account's balance (see :meth:`aio`)."""
        return run_sync(self.aio(client=client), "billing.balance()", async_form="await billing.balance.aio()")


class _Charges:
    """``billing.charges(...)``; ``await billing.charges.aio(...)`` is the async form."""

    async def aio(
        self,
        *,
        app_name: str = "",
        function_name: str = "",
        since: datetime | None = None,
        limit: int = 100,
        client: ClientConfig | None = None,
    ) -> Charges:
        """The account's charges, newest first, with a per app and function summary.

        Args:
            app_name: only this app's charges (all when empty).
            function_name: only this function's charges (all when empty).
            since: only charges posted at or after this time (timezone-aware; naive is UTC).
            limit: at most this many charges (1 to 1000).
            client: the control plane to use (the configured one when None).

        Raises:
            InvalidConfigError: a bad limit or filter (checked before anything is sent).
            InvalidArgumentError: the control plane refused a filter (``since`` in the future).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidConfigError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
        for what, value in (("app_name", app_name), ("function_name", function_name)):
            if not isinstance(value, str):
                raise InvalidConfigError(f"{what} must be a string, got {type(value).__name__}")
        if since is not None and not isinstance(since, datetime):
            raise InvalidConfigError(f"since must be a datetime, got {type(since).__name__}")
        return await get_client(client).list_charges(  # type: ignore[no-any-return]
            app_name=app_name, function_name=function_name, since=since, limit=limit
        )

    def __call__(
        self,
        *,
        app_name: str = "",
        function_name: str = "",
        since: datetime | None = None,
        limit: int = 100,
        client: ClientConfig | None = None,
    ) -> Charges:
        """The account's charges, newest first, with a summary (see :meth:`aio`)."""
        return run_sync(
            self.aio(app_name=app_name, function_name=function_name, since=since, limit=limit, client=client),
            "billing.charges()",
            async_form="await billing.charges.aio(...)",
        )


class _AddCredit:
    """``billing.add_credit(amount_usd)``; ``await billing.add_credit.aio(...)`` is the async form."""

    async def aio(self, amount_usd: float, *, note: str = "", client: ClientConfig | None = None) -> Credit:
        """Adds credit to the account's balance (needs an API key: a container's credential
        is refused).

        Args:
            amount_usd: the amount in USD, above 0.
            note: why it was added, kept in the ledger (at most 500 characters).
            client: the control plane to use (the configured one when None).

        Returns:
            The credit's id and the balance after it.

        Raises:
            InvalidConfigError: the amount is not a finite number above 0 (checked before
                anything is sent).
            InvalidArgumentError: the control plane refused the amount (over its maximum) or
                the note.
            AuthError: called with a container's credential.
        """
        if isinstance(amount_usd, bool) or not isinstance(amount_usd, (int, float)):
            raise InvalidConfigError(f"amount_usd must be a number, got {type(amount_usd).__name__}")
        if not math.isfinite(amount_usd) or amount_usd <= 0:
            raise InvalidConfigError(f"amount_usd must be a finite number above 0, got {amount_usd!r}")
        if not isinstance(note, str):
            raise InvalidConfigError(f"note must be a string, got {type(note).__name__}")
        return await get_client(client).add_credit(float(amount_usd), note)  # type: ignore[no-any-return]

    def __call__(self, amount_usd: float, *, note: str = "", client: ClientConfig | None = None) -> Credit:
        """Adds credit to the account's balance (see :meth:`aio`)."""
        return run_sync(
            self.aio(amount_usd, note=note, client=client),
            "billing.add_credit()",
            async_form="await billing.add_credit.aio(...)",
        )


#: ``billing.balance()``: the account's balance and totals.
balance = _Balance()
#: ``billing.charges(app_name=, function_name=, since=, limit=)``: charges and their summary.
charges = _Charges()
#: ``billing.add_credit(amount_usd, note=)``: adds credit to the balance.
add_credit = _AddCredit()
