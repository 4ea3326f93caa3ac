"""Billing across a control-plane restart, on the embedded ``surrealkv://`` store: the
ledger and the balance are durable."""

from __future__ import annotations

from pathlib import Path

import pytest

import apothic
from apothic import billing
from apothic.runtime import LocalRuntime
from apothic.server.settings import BillingSettings
from apothic.testing import unique_name, wait_for


def _runtime(state_dir: Path, api_key: str | None = None) -> LocalRuntime:
    return LocalRuntime(
        db_url="", state_dir=state_dir, workers=0, api_key=api_key, billing=BillingSettings(interval_s=0.2)
    ).start()


def test_charges_and_balance_survive_a_restart(tmp_path: Path) -> None:
    first = _runtime(tmp_path)
    try:
        first.run_coroutine(first.add_worker("workers:paid", cost_per_hour=36.0))
        billing.add_credit(10, note="before", client=first.config)
        app = apothic.App(unique_name("durable-bill"), client=first.config)

        @app.function(scaledown_window_s=0.2)
        def work(x: int) -> int:
            return x * 2

        app.deploy()
        assert work.remote(4) == 8
        wait_for(lambda: billing.charges(client=first.config).charges, timeout=20, what="a charge")
        app.stop()
    finally:
        first.stop()
    # Stopping charged the containers still running: what was read after is the whole ledger.
    second = _runtime(tmp_path, api_key=first.api_key)
    try:
        after = billing.charges(limit=1000, client=second.config)
        assert after.charges and {c.function_name for c in after.charges} == {"work"}
        balance = billing.balance(client=second.config)
        assert balance.total_credited_usd == pytest.approx(10)
        assert balance.total_charged_usd == pytest.approx(sum(c.amount_usd for c in after.charges))
        assert balance.balance_usd == pytest.approx(10 - balance.total_charged_usd) and balance.balance_usd < 10
        # The restarted control plane knows the balance: priced work is admitted at once.
        second.run_coroutine(second.add_worker("workers:paid", cost_per_hour=36.0))
        app2 = apothic.App(unique_name("durable-bill"), client=second.config)

        @app2.function()
        def more() -> int:
            return 10

        app2.deploy()
        try:
            assert more.remote() == 10
        finally:
            app2.stop()
    finally:
        second.stop()
