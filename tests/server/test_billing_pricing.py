"""Pricing: a container's share of a worker, and what its containers are billed as."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from apothic.server.billing import charge_kind, container_share, offer_price
from apothic.server.models import FunctionSpecRecord

OFFER = {"cpu_cores": 8.0, "memory_mb": 16_000, "gpus": [{"name": "A100", "count": 4, "vram_mb": 80_000}]}


def share(cpu: float = 0.0, memory_mb: float = 0.0, gpus: int = 0, offer: dict = OFFER, capacity: int = 32) -> float:
    return container_share(cpu=cpu, memory_mb=memory_mb, gpus=gpus, offer=offer, capacity=capacity)


def test_share_is_the_largest_requested_fraction() -> None:
    assert share(cpu=2) == pytest.approx(0.25)
    assert share(memory_mb=8_000) == pytest.approx(0.5)
    assert share(cpu=1, memory_mb=4_000) == pytest.approx(0.25)
    assert share(cpu=1, gpus=1) == pytest.approx(0.25)
    assert share(cpu=1, memory_mb=1_000, gpus=3) == pytest.approx(0.75)


def test_share_is_clamped_to_the_whole_worker() -> None:
    assert share(cpu=64) == 1.0
    assert share(memory_mb=10**9) == 1.0
    assert share(gpus=8) == 1.0
    # GPUs asked of a worker that reports none: the whole worker.
    assert share(gpus=1, offer={"cpu_cores": 8.0}) == 1.0


def test_nothing_requested_is_one_container_slot() -> None:
    assert share() == pytest.approx(1 / 32)
    assert share(capacity=8) == pytest.approx(1 / 8)
    assert share(cpu=0, memory_mb=0, gpus=0, offer={}, capacity=0) == 1.0
    # A resource the worker does not report adds no term.
    assert share(cpu=2, offer={}, capacity=4) == pytest.approx(1 / 4)
    assert 0 < share(cpu=1e-9) <= 1


def test_offer_price() -> None:
    assert offer_price({"cost_per_hour": 2.5}) == 2.5
    for free in (
        {},
        {"cost_per_hour": 0},
        {"cost_per_hour": -1},
        {"cost_per_hour": float("nan")},
        {"cost_per_hour": "x"},
    ):
        assert offer_price(free) == 0.0


def _spec(**kw: object) -> FunctionSpecRecord:
    base = FunctionSpecRecord(
        name="f",
        module="m",
        qualname="f",
        pickled_function=b"",
        timeout_s=1.0,
        startup_timeout_s=1.0,
        max_containers=0,
        scaledown_window_s=1.0,
        options_json="{}",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_charge_kind_markers() -> None:
    assert charge_kind("app", _spec()) == "function"
    assert charge_kind("app", _spec(options_json=json.dumps({"web": {"kind": "asgi"}}))) == "service"
    cls_spec = _spec(name="Counter", qualname="Counter_dispatch", options_json=json.dumps({"serialized": True}))
    assert charge_kind("app", cls_spec) == "cls"
    assert charge_kind("app", replace(cls_spec, options_json="{}")) == "function"
    gen_spec = replace(cls_spec, name="Counter__gen", qualname="Counter__gen")
    assert charge_kind("app", gen_spec) == "cls"  # a class's generator methods
    agent = _spec(name="serve", module="apothic._sandbox_agent", qualname="serve")
    assert charge_kind("sandbox-0123456789abcdef", agent) == "sandbox"
    assert charge_kind("my-app", agent) == "function"
