"""Billing: balances, ledger charges for containers on priced workers, and refusing work
when an account's balance is exhausted.

Every container the scheduler starts (a plain function's, a web service's, a class
instance's, a sandbox's) is metered when its worker's offer has a ``cost_per_hour`` above
zero. Its price per hour is that cost times its share of the worker (:func:`container_share`).
Time runs from when the scheduler starts the container (cold start included: the worker's
resources are held from then) until the scheduler lets go of it (it exited, was stopped or
its worker was lost). A running container is charged every ``interval_s`` and once more when
it ends; each charge is one ``ledger`` row committed with the balance change.

Free workers (``cost_per_hour`` 0, the default local setup) post no charges at all and never
need a balance.

Refusal: while an account's balance is zero or below, the scheduler starts none of its
containers on a priced worker (a free worker that qualifies is used instead; without one
its waiting inputs fail naming the balance), a call whose every qualifying worker is priced
fails at entry with FAILED_PRECONDITION, and its containers already running on priced
workers are stopped.

Balances are cached in memory (the hot path makes no database round trip) and refreshed
from the database every ``interval_s``; a refusal re-reads the balance before it is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from apothic.server import ids
from apothic.server.errors import FailedPrecondition, InvalidArgument
from apothic.server.models import FunctionSpecRecord, utcnow
from apothic.server.placement import function_filters, unmet
from apothic.server.sandboxes import AGENT_FUNCTION, AGENT_MODULE
from apothic.server.settings import BillingSettings
from apothic.server.store_billing import BalanceRow, ChargeRow, ChargeSummaryRow
from apothic.server.web import web_options

if TYPE_CHECKING:
    from apothic.server.scheduler import ContainerHandle, Scheduler, WorkerHandle
    from apothic.server.store import Store

log = logging.getLogger("apothic.server.billing")

#: What a charged container ran.
FUNCTION, SERVICE, CLS, SANDBOX = "function", "service", "cls", "sandbox"
KINDS = (FUNCTION, SERVICE, CLS, SANDBOX)
#: Charges one ListCharges call returns by default, and at most.
DEFAULT_CHARGES_LIMIT, MAX_CHARGES_LIMIT = 100, 1000
#: Longest credit note.
MAX_NOTE_CHARS = 500
#: How to add credit, for error messages.
ADD_CREDIT_HINT = "add credit with `apothic billing credit AMOUNT_USD` (or apothic.billing.add_credit)"


def offer_price(offer: Mapping[str, Any]) -> float:
    """A worker offer's cost per hour in USD (0 for a free worker)."""
    try:
        price = float(offer.get("cost_per_hour") or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return price if math.isfinite(price) and price > 0 else 0.0


def _offered_gpus(offer: Mapping[str, Any]) -> int:
    return sum(int(g.get("count") or 0) for g in offer.get("gpus") or () if isinstance(g, Mapping))


def _options(options_json: str) -> dict[str, Any]:
    try:
        opts = json.loads(options_json or "{}")
    except ValueError:
        return {}
    return opts if isinstance(opts, dict) else {}


def _requested(options_json: str) -> tuple[float, float, int]:
    """The cpu cores, memory (MB) and GPUs a function's options request (0: not requested)."""
    opts = _options(options_json)
    gpus = 0
    if opts.get("gpu"):
        _, _, count = str(opts["gpu"]).partition(":")
        gpus = int(count) if count.strip().isdigit() else 1
    return float(opts.get("cpu") or 0.0), float(opts.get("memory_mb") or 0.0), gpus


def container_share(*, cpu: float, memory_mb: float, gpus: int, offer: Mapping[str, Any], capacity: int) -> float:
    """The share of a worker one container is billed for, in (0, 1].

    It is the largest of what the container requests over what the worker offers: ``cpu /
    cpu_cores``, ``memory_mb / memory_mb`` and ``gpus / offered GPUs`` (a resource that is
    not requested, or not offered, adds no term; GPUs requested from a worker that reports
    none count as the whole worker). The result is clamped to at most 1. When nothing is
    requested (or every term is 0) the share is ``1 / capacity``: one of the containers the
    worker runs at once (``WorkerHandle.capacity``).

    Args:
        cpu: requested CPU cores (0: not requested).
        memory_mb: requested memory in MB (0: not requested).
        gpus: requested GPUs (0: not requested).
        offer: the worker's offer (``cpu_cores``, ``memory_mb``, ``gpus``).
        capacity: containers the worker runs at once.

    Returns:
        The share, greater than 0 and at most 1.
    """
    terms: list[float] = []
    cores = float(offer.get("cpu_cores") or 0.0)
    if cpu > 0 and cores > 0:
        terms.append(cpu / cores)
    memory = float(offer.get("memory_mb") or 0.0)
    if memory_mb > 0 and memory > 0:
        terms.append(memory_mb / memory)
    if gpus > 0:
        offered = _offered_gpus(offer)
        terms.append(gpus / offered if offered > 0 else 1.0)
    share = max(terms, default=0.0)
    if share <= 0:
        return 1.0 / max(1, capacity)
    return min(1.0, share)


def charge_kind(app_name: str, spec: FunctionSpecRecord) -> str:
    """What a function's containers are billed as: ``sandbox`` (the agent function of a
    hidden ``sandbox-…`` app), ``service`` (web options), ``cls`` (the dispatcher
    ``@app.cls`` deploys: serialized, qualname ``<Class>_dispatch``, or ``<Class>__gen`` for
    its generator methods), else ``function``."""
    if spec.module == AGENT_MODULE and spec.name == AGENT_FUNCTION and app_name.startswith("sandbox-"):
        return SANDBOX
    if web_options(spec) is not None:
        return SERVICE
    dispatcher = spec.qualname == f"{spec.name}_dispatch" or (
        spec.name.endswith("__gen") and spec.qualname == spec.name
    )
    if dispatcher and _options(spec.options_json).get("serialized") is True:
        return CLS
    return FUNCTION


def exhausted_message(balance: float, what: str) -> str:
    """The error naming an exhausted balance and how to add credit."""
    return (
        f"the account's balance is exhausted ({balance:.6f} USD), so {what}; {ADD_CREDIT_HINT}, "
        "or run it on a free worker (cost_per_hour 0)"
    )


@dataclass
class _Meter:
    """A running container on a priced worker and when it was last charged."""

    account: str
    app_name: str
    function_name: str
    kind: str
    container_id: str
    worker_id: str
    price_per_hour: float
    share: float
    #: Monotonic seconds up to which it has been charged.
    since: float


class Billing:
    """Meters containers on priced workers, posts their charges, and refuses work for
    accounts whose balance is exhausted.

    Args:
        store: the store (ledger rows and balances).
        scheduler: the scheduler whose containers are metered; :meth:`attach` hooks in.
        settings: the charge interval and credit limits.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        settings: BillingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.settings = settings
        self._clock = clock
        self._meters: dict[str, _Meter] = {}
        #: Balances by account, as of the last refresh plus what this replica posted since.
        self._balances: dict[str, float] = {}
        self._writes: set[asyncio.Task[None]] = set()
        #: Bumped by every posting: a refresh read while charges were posted is dropped.
        self._posted = 0
        self._loop_task: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Hooks into the scheduler: refusal, container start and end."""
        self.scheduler.refusal = self.refusal
        self.scheduler.container_started = self.container_started
        self.scheduler.container_ended = self.container_ended

    async def load(self) -> None:
        """Reads every account's balance."""
        self._balances = await self.store.account_balances()

    def start(self) -> None:
        """Starts the periodic charging loop."""
        self._loop_task = asyncio.create_task(self._run(), name="apothic-billing")

    async def close(self) -> None:
        """Stops the loop and charges running containers up to now (a container still
        running after a restart is metered afresh)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        self._post(list(self._meters.values()))
        self._meters.clear()
        await self._settle()

    # -- scheduler hooks ---------------------------------------------------------------

    def refusal(self, account: str, worker: WorkerHandle) -> str | None:
        """Why ``account`` may not start a container on ``worker`` (None when it may)."""
        price = offer_price(worker.offer)
        if price <= 0:
            return None
        balance = self._balances.get(account, 0.0)
        if balance > 0:
            return None
        return exhausted_message(balance, f"no container starts on priced worker {worker.worker_id} ({price:g} USD/h)")

    def container_started(self, container: ContainerHandle) -> None:
        """Starts metering a container on a priced worker."""
        worker = container.worker
        price = offer_price(worker.offer)
        if price <= 0:
            return
        pool = container.pool
        cpu, memory_mb, gpus = _requested(pool.spec.options_json)
        share = container_share(cpu=cpu, memory_mb=memory_mb, gpus=gpus, offer=worker.offer, capacity=worker.capacity)
        self._meters[container.container_id] = _Meter(
            account=pool.deployment.account,
            app_name=pool.deployment.app_name,
            function_name=pool.spec.name,
            kind=charge_kind(pool.deployment.app_name, pool.spec),
            container_id=container.container_id,
            worker_id=worker.worker_id,
            price_per_hour=price * share,
            share=share,
            since=self._clock(),
        )

    def container_ended(self, container: ContainerHandle) -> None:
        """Posts a container's last charge."""
        meter = self._meters.pop(container.container_id, None)
        if meter is not None:
            self._post([meter])

    # -- charging ----------------------------------------------------------------------

    def _post(self, meters: list[_Meter]) -> None:
        """Charges each meter from its ``since`` up to now, takes the amounts from the cached
        balances and commits the rows in one transaction (in the background)."""
        if not meters:
            return
        now, at = self._clock(), utcnow()
        charges: list[ChargeRow] = []
        for meter in meters:
            seconds = max(0.0, now - meter.since)
            meter.since = now
            if seconds <= 0:
                continue
            charges.append(
                ChargeRow(
                    charge_id=ids.new_id("ledger"),
                    account=meter.account,
                    time=at,
                    amount=seconds * meter.price_per_hour / 3600.0,
                    seconds=seconds,
                    price_per_hour=meter.price_per_hour,
                    share=meter.share,
                    app_name=meter.app_name,
                    function_name=meter.function_name,
                    kind=meter.kind,
                    container_id=meter.container_id,
                    worker_id=meter.worker_id,
                )
            )
        exhausted: set[str] = set()
        for charge in charges:
            balance = self._balances.get(charge.account, 0.0) - charge.amount
            self._balances[charge.account] = balance
            if balance <= 0:
                exhausted.add(charge.account)
        if charges:
            self._posted += 1
            task = asyncio.ensure_future(self._commit(charges))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        for account in exhausted:
            # Later, not now: a charge may be posted from inside the scheduler's own bookkeeping.
            asyncio.get_running_loop().call_soon(self._enforce, account)

    async def _commit(self, charges: list[ChargeRow]) -> None:
        try:
            await self.store.post_charges(charges)
        except Exception:
            log.exception("posting %d charge(s) failed", len(charges))

    async def _settle(self) -> None:
        """Waits until every charge posted so far has committed."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def _enforce(self, account: str) -> None:
        """Stops the account's containers on priced workers when its balance is exhausted."""
        balance = self._balances.get(account, 0.0)
        if balance > 0:
            return
        for container_id, meter in list(self._meters.items()):
            if meter.account != account:
                continue
            reason = exhausted_message(
                balance, f"container {container_id} on priced worker {meter.worker_id} was stopped"
            )
            log.info("billing: stopping %s of %s: balance exhausted", container_id, account)
            self.scheduler.end_container(container_id, reason)

    def tick(self) -> None:
        """Charges every metered container up to now."""
        self._post(list(self._meters.values()))

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.interval_s)
                self.tick()
                await self._settle()
                posted = self._posted
                try:
                    fresh = await self.store.account_balances()
                except Exception:
                    log.exception("billing: reading balances failed")
                    continue
                if posted == self._posted:  # else it may predate charges cached here: next time
                    self._balances.update(fresh)
                for account in {m.account for m in self._meters.values()}:
                    self._enforce(account)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug here must be loud
            log.exception("billing loop died")
            raise

    # -- call entry --------------------------------------------------------------------

    async def check_call(self, account: str, spec: FunctionSpecRecord, what: str) -> None:
        """Fails fast when the account's balance is exhausted and every connected worker that
        may run ``spec`` is priced (no worker yet, or a free one: the work may run).

        Raises:
            FailedPrecondition: the balance is exhausted; the message names it and the fix.
        """
        if self._balances.get(account, 0.0) > 0:
            return
        workers = list(self.scheduler.workers.values())
        if not any(offer_price(w.offer) > 0 for w in workers):
            return
        filters = function_filters(spec.options_json)
        host = self.scheduler.host_for(account, spec)
        qualifying = [
            w
            for w in workers
            if (host is None or w.offer.get("hostname") == host) and (not filters or unmet(filters, w.offer) is None)
        ]
        if not qualifying or any(offer_price(w.offer) <= 0 for w in qualifying):
            return
        # Final answer from the database: credit may have been added on another replica.
        await self._settle()
        balance = (await self.store.get_balance(account)).balance
        self._balances[account] = balance
        if balance > 0:
            return
        raise FailedPrecondition(
            exhausted_message(balance, f"{what} cannot run: every worker that may run it is priced")
        )

    # -- API ---------------------------------------------------------------------------

    async def balance(self, account: str) -> BalanceRow:
        """The account's balance and totals, with every charge posted so far included."""
        await self._settle()
        return await self.store.get_balance(account)

    async def charges(
        self, account: str, *, app_name: str, function_name: str, since: datetime | None, limit: int
    ) -> tuple[list[ChargeRow], list[ChargeSummaryRow]]:
        """The account's charges matching the filters (newest first) and their summary.

        Raises:
            InvalidArgument: a bad limit or a ``since`` in the future.
        """
        if limit < 0 or limit > MAX_CHARGES_LIMIT:
            raise InvalidArgument(
                f"limit must be between 0 and {MAX_CHARGES_LIMIT} (0: {DEFAULT_CHARGES_LIMIT}), got {limit}"
            )
        # A minute of slack: the caller's clock may run a little ahead of this one.
        if since is not None and since > utcnow() + timedelta(minutes=1):
            raise InvalidArgument(f"since ({since.isoformat()}) is in the future; pass an earlier time or none")
        await self._settle()
        filters = {"app_name": app_name, "function_name": function_name, "since": since}
        rows = await self.store.list_charges(account, **filters, limit=limit or DEFAULT_CHARGES_LIMIT)
        return rows, await self.store.charge_summary(account, **filters)

    async def add_credit(self, account: str, amount_usd: float, note: str) -> tuple[str, float]:
        """Adds credit to the account's balance; returns the credit's ledger id and the new
        balance. Containers already refused stay stopped; new work is admitted at once.

        Raises:
            InvalidArgument: the amount is not finite, not above zero or over the maximum, or
                the note is too long.
        """
        limit = self.settings.max_credit_usd
        if not math.isfinite(amount_usd) or amount_usd <= 0 or amount_usd > limit:
            raise InvalidArgument(
                f"amount_usd must be a finite number above 0 and at most {limit:,.2f}, got {amount_usd!r}"
            )
        if len(note) > MAX_NOTE_CHARS:
            raise InvalidArgument(f"the note is {len(note)} characters; at most {MAX_NOTE_CHARS} are kept")
        await self._settle()
        credit_id = ids.new_id("ledger")
        balance = await self.store.add_credit(credit_id, account, amount_usd, note, utcnow())
        self._balances[account] = balance
        return credit_id, balance
