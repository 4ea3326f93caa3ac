"""Billing on the real runtime: a priced worker charges every kind of container (function,
class, web service, sandbox) seconds x price x share; an exhausted balance refuses work
and stops what runs; credit restores it; bad input is refused; the CLI prints JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from typer.testing import CliRunner

import apothic
from apothic import billing
from apothic._proto.v1 import billing_service_pb2 as b_pb
from apothic._proto.v1 import billing_service_pb2_grpc as b_grpc
from apothic.cli.main import app as cli
from apothic.config import ClientConfig
from apothic.exceptions import FailedPreconditionError, InvalidArgumentError, InvalidConfigError, JobFailedError
from apothic.runtime import LocalRuntime
from apothic.server.settings import BillingSettings
from apothic.testing import unique_name, wait_for

#: USD per hour of the priced worker: 0.01 USD per second of the whole worker.
PRICE = 36.0
runner = CliRunner()


@pytest.fixture(scope="module")
def paid() -> Iterator[LocalRuntime]:
    """A runtime whose only worker is priced, charging every 0.2 s."""
    runtime = LocalRuntime(workers=0, billing=BillingSettings(interval_s=0.2)).start()
    try:
        runtime.run_coroutine(runtime.add_worker("workers:paid", cost_per_hour=PRICE, region="test-1"))
        yield runtime
    finally:
        runtime.stop()


def new_account(runtime: LocalRuntime) -> ClientConfig:
    """A fresh account (balance 0) with its own API key."""
    assert runtime.plane is not None
    accounts = runtime.plane.accounts
    account = runtime.run_coroutine(accounts.ensure_account(unique_name("acct")))
    key = runtime.run_coroutine(accounts.create_key(account))
    return ClientConfig(base_url=runtime.address, api_key=key, profile="billing-test")


def check_charge(c: billing.Charge, share: float | None = None) -> None:
    assert c.seconds > 0 and 0 < c.share <= 1 and c.worker_id == "workers:paid"
    assert c.price_per_hour == pytest.approx(PRICE * c.share)
    assert c.amount_usd == pytest.approx(c.seconds * c.price_per_hour / 3600)
    if share is not None:
        assert c.share == pytest.approx(share)


def test_worker_offers_its_price_and_region(paid: LocalRuntime) -> None:
    assert paid.plane is not None
    offer = paid.plane.scheduler.workers["workers:paid"].offer
    assert offer["cost_per_hour"] == PRICE and offer["region"] == "test-1"


def test_every_kind_of_container_is_charged(paid: LocalRuntime) -> None:
    cfg = new_account(paid)
    assert billing.add_credit(100, note="start", client=cfg).balance_usd == pytest.approx(100)
    app = apothic.App(unique_name("kinds"), client=cfg)

    @app.function(cpu=0.5, scaledown_window_s=0.5)
    def plain(x: int) -> int:
        return x + 1

    @app.cls(scaledown_window_s=0.5)
    class Counter:
        @apothic.method()
        def add(self, n: int) -> int:
            return n + 1

    @app.endpoint(scaledown_window_s=0.5)
    def hello(name: str = "x") -> dict[str, str]:
        return {"hello": name}

    app.deploy()
    try:
        assert plain.remote(1) == 2
        assert Counter().add.remote(2) == 3
        r = httpx.get(hello.get_web_url(), params={"name": "b"}, timeout=60)
        assert r.status_code == 200 and r.json() == {"hello": "b"}
        sandbox = apothic.Sandbox.create(timeout_s=60, client=cfg)
        try:
            assert sandbox.exec("true").wait() == 0
        finally:
            sandbox.terminate()

        def kinds() -> set[str]:
            return {c.kind for c in billing.charges(limit=1000, client=cfg).charges}

        wait_for(lambda: kinds() >= {"function", "cls", "service", "sandbox"}, timeout=30, what="a charge per kind")
    finally:
        app.stop()
    found = billing.charges(limit=1000, client=cfg)
    cores = paid.plane.scheduler.workers["workers:paid"].offer["cpu_cores"]  # type: ignore[union-attr]
    for c in found.charges:
        check_charge(c, share=min(1.0, 0.5 / cores) if c.function_name == "plain" else None)
    by_kind = {s.kind: s for s in found.summary}
    assert by_kind["function"].function_name == "plain" and by_kind["cls"].function_name == "Counter"
    assert by_kind["service"].function_name == "hello" and by_kind["sandbox"].function_name == "serve"
    assert [c.time for c in found.charges] == sorted((c.time for c in found.charges), reverse=True)
    only = billing.charges(app_name=app.name, function_name="plain", client=cfg)
    assert only.charges and {c.function_name for c in only.charges} == {"plain"}
    assert [s.function_name for s in only.summary] == ["plain"]
    # Every container has ended: the balance is what was credited minus every charge.
    wait_for(lambda: not _containers(paid, cfg), timeout=20, what="the account's containers to end")
    final = billing.charges(limit=1000, client=cfg)
    bal = billing.balance(client=cfg)
    assert bal.total_credited_usd == pytest.approx(100)
    assert bal.total_charged_usd == pytest.approx(sum(s.amount_usd for s in final.summary))
    assert bal.balance_usd == pytest.approx(100 - bal.total_charged_usd) and bal.total_charged_usd > 0


def _containers(runtime: LocalRuntime, cfg: ClientConfig) -> list:  # type: ignore[type-arg]
    assert runtime.plane is not None
    account = runtime.run_coroutine(runtime.plane.accounts.verify(cfg.api_key))
    return [c for c in list(runtime.plane.scheduler.containers.values()) if c.pool.deployment.account == account]


def test_exhausted_balance_refuses_work_until_credit_is_added(paid: LocalRuntime) -> None:
    cfg = new_account(paid)
    app = apothic.App(unique_name("broke"), client=cfg)

    @app.function(scaledown_window_s=0.5)
    def work() -> str:
        return "done"

    app.deploy()
    try:
        with pytest.raises(FailedPreconditionError, match=r"balance is exhausted .*apothic billing credit"):
            work.remote()
        with pytest.raises(FailedPreconditionError, match="balance is exhausted"):
            work.spawn()
        with pytest.raises(FailedPreconditionError, match="balance is exhausted"):
            apothic.Sandbox.create(timeout_s=30, client=cfg)
        assert billing.charges(client=cfg).charges == ()
        billing.add_credit(5, client=cfg)
        assert work.remote() == "done"
    finally:
        app.stop()


def test_running_containers_stop_when_the_balance_runs_out(paid: LocalRuntime) -> None:
    cfg = new_account(paid)
    # About 0.5 s of one container slot on this worker.
    slot = 1 / paid.plane.scheduler.workers["workers:paid"].capacity  # type: ignore[union-attr]
    billing.add_credit(PRICE * slot * 0.5 / 3600, client=cfg)
    app = apothic.App(unique_name("runout"), client=cfg)

    @app.function(timeout_s=60)
    def long() -> str:
        time.sleep(30)
        return "finished"

    @app.endpoint(keep_warm_s=60)
    def ping() -> str:
        return "pong"

    app.deploy()
    try:
        started = time.monotonic()
        with pytest.raises(JobFailedError, match=r"balance is exhausted.*was stopped"):
            long.remote()
        assert time.monotonic() - started < 15
        wait_for(lambda: not _containers(paid, cfg), timeout=10, what="the account's containers to stop")
        assert billing.balance(client=cfg).balance_usd <= 0
        # The service cannot start now either: the ingress answers with the reason.
        r = httpx.get(ping.get_web_url(), timeout=30)
        assert r.status_code == 503 and "balance is exhausted" in r.text
        billing.add_credit(10, client=cfg)
        r = httpx.get(ping.get_web_url(), timeout=60)
        assert r.status_code == 200 and r.json() == "pong"
    finally:
        app.stop()


def test_bad_input_is_refused(paid: LocalRuntime) -> None:
    cfg = new_account(paid)
    for bad in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(InvalidConfigError, match="amount_usd"):
            billing.add_credit(bad, client=cfg)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="at most 1,000,000"):
        billing.add_credit(2_000_000, client=cfg)
    with pytest.raises(InvalidArgumentError, match="note"):
        billing.add_credit(1, note="x" * 501, client=cfg)
    with pytest.raises(InvalidConfigError, match="limit"):
        billing.charges(limit=0, client=cfg)
    from datetime import UTC, datetime, timedelta

    with pytest.raises(InvalidArgumentError, match="in the future"):
        billing.charges(since=datetime.now(UTC) + timedelta(days=1), client=cfg)
    # Straight over gRPC: what other-language clients see.
    with grpc.insecure_channel(paid.address) as channel:
        stub = b_grpc.BillingServiceStub(channel)
        metadata = [("authorization", f"Bearer {cfg.api_key}")]
        for request in (b_pb.AddCreditRequest(amount_usd=0), b_pb.AddCreditRequest(amount_usd=float("nan"))):
            with pytest.raises(grpc.RpcError) as err:
                stub.AddCredit(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "amount_usd" in err.value.details()
        for limit in (-1, 1001):
            with pytest.raises(grpc.RpcError) as err:
                stub.ListCharges(b_pb.ListChargesRequest(limit=limit), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in err.value.details()
        assert stub.GetBalance(b_pb.GetBalanceRequest(), metadata=metadata).balance_usd == 0


def test_a_container_credential_cannot_add_credit(paid: LocalRuntime) -> None:
    cfg = new_account(paid)
    billing.add_credit(5, client=cfg)
    app = apothic.App(unique_name("mint"), client=cfg)

    @app.function()
    def mint() -> str:
        from apothic import billing
        from apothic.exceptions import AuthError

        try:
            billing.add_credit(1000)
        except AuthError as exc:
            return f"refused: {exc}"
        return "minted"

    app.deploy()
    try:
        answer = mint.remote()
    finally:
        app.stop()
    assert answer.startswith("refused: a container's credential cannot add credit") and "API key" in answer
    assert billing.balance(client=cfg).total_credited_usd == pytest.approx(5)


def test_cli_json(paid: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = new_account(paid)
    monkeypatch.setenv("APOTHIC_BASE_URL", cfg.base_url)
    monkeypatch.setenv("APOTHIC_API_KEY", cfg.api_key)

    def invoke(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert "exhausted" in invoke("billing", "balance") or "refused" in invoke("billing", "balance")
    credit = json.loads(invoke("billing", "credit", "2.5", "--note", "cli", "--json"))
    assert credit["balance_usd"] == pytest.approx(2.5) and credit["credit_id"].startswith("ledger:")
    bal = json.loads(invoke("billing", "balance", "--json"))
    assert bal == {"balance_usd": 2.5, "total_charged_usd": 0.0, "total_credited_usd": 2.5}
    assert json.loads(invoke("billing", "charges", "--json")) == {"charges": [], "summary": []}
    assert "charges" in invoke("billing", "charges")
    bad = runner.invoke(cli, ["billing", "credit", "--", "-3"])
    assert bad.exit_code == 1 and "amount_usd" in bad.output
    for args in (["billing", "--help"], ["billing", "charges", "--help"], ["billing", "credit", "--help"]):
        assert "Usage" in invoke(*args)


def test_worker_cli_checks_the_price() -> None:
    for bad in ("-1", "nan", "inf"):
        result = runner.invoke(
            cli, ["worker", "--base-url", "127.0.0.1:1", "--api-key", "ak-x.y", "--cost-per-hour", bad]
        )
        assert result.exit_code == 2 and "--cost-per-hour" in result.output, result.output
    assert "--cost-per-hour" in runner.invoke(cli, ["worker", "--help"]).output


def test_free_workers_post_no_charges(apothic_runtime: LocalRuntime) -> None:
    cfg = apothic_runtime.config
    app = apothic.App(unique_name("free"), client=cfg)

    @app.function(cpu=1)
    def work() -> int:
        return 1

    app.deploy()
    try:
        assert work.remote() == 1  # a balance of 0 is fine on a free worker
    finally:
        app.stop()
    assert billing.charges(app_name=app.name, client=cfg).charges == ()
    assert billing.balance(client=cfg).total_charged_usd == 0


def test_an_exhausted_account_runs_on_a_free_worker_when_one_qualifies() -> None:
    runtime = LocalRuntime(workers=0, billing=BillingSettings(interval_s=0.2)).start()
    try:
        runtime.run_coroutine(runtime.add_worker("workers:paid", cost_per_hour=PRICE))
        runtime.run_coroutine(runtime.add_worker("workers:free"))
        cfg = new_account(runtime)
        app = apothic.App(unique_name("fallback"), client=cfg)

        @app.function(max_containers=4)
        def where(_: int) -> str:
            import os

            return os.environ["APOTHIC_SOURCE_DIR"]

        app.deploy()
        try:
            assert all("workers_free" in d for d in where.map(range(6)))
        finally:
            app.stop()
        assert billing.charges(client=cfg).charges == ()
    finally:
        runtime.stop()
