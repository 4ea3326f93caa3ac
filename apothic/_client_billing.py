"""Billing calls of the client transport (BillingService)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from apothic._transport import Transport, _time
from apothic.billing import Balance, Charge, Charges, ChargeSummary, Credit

#: ChargeKind values by number (see billing_service.proto).
_KINDS = {1: "function", 2: "service", 3: "cls", 4: "sandbox"}


def _charge(msg: Any) -> Charge:
    return Charge(
        charge_id=msg.charge_id,
        time=_time(msg.time),
        amount_usd=msg.amount_usd,
        seconds=msg.seconds,
        price_per_hour=msg.price_per_hour,
        share=msg.share,
        app_name=msg.app_name,
        function_name=msg.function_name,
        kind=_KINDS.get(msg.kind, ""),
        container_id=msg.container_id,
        worker_id=msg.worker_id,
    )


def _summary(msg: Any) -> ChargeSummary:
    return ChargeSummary(
        app_name=msg.app_name,
        function_name=msg.function_name,
        kind=_KINDS.get(msg.kind, ""),
        amount_usd=msg.amount_usd,
        seconds=msg.seconds,
        charges=msg.charges,
    )


class BillingCalls(Transport):
    """BillingService RPCs; part of :class:`apothic._client.Client`."""

    def _billing_stub(self) -> Any:
        stub = self.__dict__.get("_billing_service")
        if stub is None:
            from apothic._proto.v1 import billing_service_pb2_grpc as b_grpc

            stub = self.__dict__["_billing_service"] = b_grpc.BillingServiceStub(self._channel)
        return stub

    async def get_balance(self) -> Balance:
        """The account's balance and totals."""
        from apothic._proto.v1 import billing_service_pb2 as b_pb

        resp = await self._unary(self._billing_stub().GetBalance, b_pb.GetBalanceRequest())
        return Balance(
            balance_usd=resp.balance_usd,
            total_charged_usd=resp.total_charged_usd,
            total_credited_usd=resp.total_credited_usd,
        )

    async def list_charges(self, *, app_name: str, function_name: str, since: datetime | None, limit: int) -> Charges:
        """The account's charges matching the filters, newest first, and their summary."""
        from google.protobuf.timestamp_pb2 import Timestamp

        from apothic._proto.v1 import billing_service_pb2 as b_pb

        req = b_pb.ListChargesRequest(app_name=app_name, function_name=function_name, limit=limit)
        if since is not None:
            ts = Timestamp()
            ts.FromDatetime(since if since.tzinfo is not None else since.replace(tzinfo=UTC))
            req.since.CopyFrom(ts)
        resp = await self._unary(self._billing_stub().ListCharges, req)
        return Charges(
            charges=tuple(_charge(c) for c in resp.charges), summary=tuple(_summary(s) for s in resp.summary)
        )

    async def add_credit(self, amount_usd: float, note: str) -> Credit:
        """Adds credit to the account's balance."""
        from apothic._proto.v1 import billing_service_pb2 as b_pb

        resp = await self._unary(
            self._billing_stub().AddCredit, b_pb.AddCreditRequest(amount_usd=amount_usd, note=note)
        )
        return Credit(credit_id=resp.credit_id, balance_usd=resp.balance_usd)
