"""The placement evaluator on its own: options become offer filters; offers meet them or not."""

from __future__ import annotations

import json

from apothic.options import _options_doc, validate_options
from apothic.server.placement import OfferFilter, describe_offer, function_filters, unmet

OFFER = {
    "cpu_cores": 2.0,
    "memory_mb": 24_000,
    "disk_mb": 50_000,
    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "count": 1, "vram_mb": 81_000}],
    "arch": "x86_64",
    "region": "eu-west",
    "cost_per_hour": 0.5,
    "verified": True,
    "labels": {"zone": "a"},
    "hostname": "h1",
    "executor": "process",
}


def filters(**options: object) -> tuple[OfferFilter, ...]:
    return function_filters(json.dumps(_options_doc(validate_options(**options)), default=repr))


def test_named_options_become_filters() -> None:
    got = filters(cpu=1.5, memory_mb=512, disk_mb=1024, region="eu-west", labels={"zone": "a"})
    assert [str(f) for f in got] == [
        "cpu_cores >= 1.5",
        "memory_mb >= 512",
        "disk_mb >= 1024",
        "region == 'eu-west'",
        "labels.zone == 'a'",
    ]
    assert unmet(got, OFFER) is None


def test_the_first_unmet_filter_is_named() -> None:
    got = filters(memory_mb=10**9, disk_mb=10**9)
    miss = unmet(got, OFFER)
    assert str(miss) == "memory_mb >= 1000000000"
    assert miss is not None and describe_offer(miss, OFFER) == "24000"
    assert str(unmet(filters(arch="arm64"), OFFER)) == "arch == 'arm64'"
    assert unmet(filters(max_cost_per_hour=0.1), OFFER) is not None
    assert unmet(filters(verified=True), OFFER) is None


def test_gpus_match_by_name_and_count() -> None:
    assert unmet(filters(gpu="H100"), OFFER) is None
    assert unmet(filters(gpu="any"), OFFER) is None
    assert unmet(filters(gpu="h100:2"), OFFER) is not None
    assert unmet(filters(gpu="A100"), OFFER) is not None
    assert describe_offer(OfferFilter("gpu", "gte", "A100:1"), OFFER) == "1x NVIDIA H100 80GB HBM3"


def test_explicit_offer_filters_and_missing_fields() -> None:
    got = filters(offer_filters=[("labels.zone", "in", ["a", "b"]), ("cpu_cores", "gt", 1)])
    assert unmet(got, OFFER) is None
    assert unmet(filters(offer_filters=[("labels.zone", "notin", ["a"])]), OFFER) is not None
    assert unmet(filters(offer_filters=[("labels.rack", "eq", "r1")]), OFFER) is not None
    assert unmet(filters(offer_filters=[("labels.rack", "neq", "r1")]), OFFER) is None
    assert unmet(filters(offer_filters=[("cpu_cores", "gt", "two")]), OFFER) is not None  # incomparable: unmet
