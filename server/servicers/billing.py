"""BillingService: the caller's balance, charges and credits (see apothic.server.billing).

Who may add credit: any API key of the account. A self-hosted install has no sign-up: the
operator creates every account and key (``apothic up``/``apothic server`` write them), so
holding an API key already means the operator's trust, and credit is how the operator
funds an account's use of priced workers. A container's credential (``ct-…``) may not: code
running in a container, which may be a user's untrusted code, must never mint money; the
auth interceptor refuses it with PERMISSION_DENIED before this servicer runs.
"""

from __future__ import annotations

from datetime import UTC

import grpc.aio

from apothic._proto.v1 import billing_service_pb2 as b_pb
from apothic._proto.v1 import billing_service_pb2_grpc as b_grpc
from apothic.server.auth import current_account
from apothic.server.billing import CLS, FUNCTION, SANDBOX, SERVICE, Billing
from apothic.server.servicers import convert
from apothic.server.store_billing import ChargeRow, ChargeSummaryRow

KIND_CODES = {
    FUNCTION: b_pb.CHARGE_KIND_FUNCTION,
    SERVICE: b_pb.CHARGE_KIND_SERVICE,
    CLS: b_pb.CHARGE_KIND_CLS,
    SANDBOX: b_pb.CHARGE_KIND_SANDBOX,
}


def _charge(row: ChargeRow) -> b_pb.Charge:
    return b_pb.Charge(
        charge_id=row.charge_id,
        time=convert.timestamp(row.time),
        amount_usd=row.amount,
        seconds=row.seconds,
        price_per_hour=row.price_per_hour,
        share=row.share,
        app_name=row.app_name,
        function_name=row.function_name,
        kind=KIND_CODES.get(row.kind, b_pb.CHARGE_KIND_UNSPECIFIED),
        container_id=row.container_id,
        worker_id=row.worker_id,
    )


def _summary(row: ChargeSummaryRow) -> b_pb.ChargeSummary:
    return b_pb.ChargeSummary(
        app_name=row.app_name,
        function_name=row.function_name,
        kind=KIND_CODES.get(row.kind, b_pb.CHARGE_KIND_UNSPECIFIED),
        amount_usd=row.amount,
        seconds=row.seconds,
        charges=row.charges,
    )


class BillingServicer(b_grpc.BillingServiceServicer):
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def GetBalance(
        self, request: b_pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> b_pb.GetBalanceResponse:
        row = await self.billing.balance(current_account.get())
        return b_pb.GetBalanceResponse(
            balance_usd=row.balance, total_charged_usd=row.total_charged, total_credited_usd=row.total_credited
        )

    async def ListCharges(
        self, request: b_pb.ListChargesRequest, context: grpc.aio.ServicerContext
    ) -> b_pb.ListChargesResponse:
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        rows, summary = await self.billing.charges(
            current_account.get(),
            app_name=request.app_name,
            function_name=request.function_name,
            since=since,
            limit=request.limit,
        )
        return b_pb.ListChargesResponse(charges=[_charge(r) for r in rows], summary=[_summary(s) for s in summary])

    async def AddCredit(
        self, request: b_pb.AddCreditRequest, context: grpc.aio.ServicerContext
    ) -> b_pb.AddCreditResponse:
        credit_id, balance = await self.billing.add_credit(current_account.get(), request.amount_usd, request.note)
        return b_pb.AddCreditResponse(credit_id=credit_id, balance_usd=balance)
