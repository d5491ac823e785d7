"""Metric updates batched per flush come out as if made one at a time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from processor.observability.metrics import Batched, observe_all

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# On a bound, between bounds, past the last, zero, repeated.
VALUES = [0.001, 0.0005, 0.05, 0.1, 7.0, 0.0, 0.05, 1.0, 0.0100001]


def _histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("h_seconds", "h", ["phase"], buckets=BUCKETS, registry=registry)


def test_observe_all_gives_the_exposition_of_one_observe_per_value() -> None:
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    a, b = _histogram(one_by_one).labels("x"), _histogram(at_once).labels("x")
    for v in VALUES:
        a.observe(v)
    observe_all(b, VALUES)
    assert generate_latest(at_once) == generate_latest(one_by_one)


def test_batched_updates_reach_the_registry_only_when_applied() -> None:
    registry = CollectorRegistry()
    counter = Counter("c_total", "c", ["kind"], registry=registry)
    histogram = Histogram("plain_seconds", "p", buckets=BUCKETS, registry=registry)
    batch = Batched()
    batch.inc(counter.labels("debit"))
    batch.inc(counter.labels("debit"), 2.5)
    batch.inc(counter.labels("credit"))
    for v in VALUES:
        batch.observe(histogram, v)
    assert registry.get_sample_value("c_total", {"kind": "debit"}) == 0.0
    batch.apply()
    assert registry.get_sample_value("c_total", {"kind": "debit"}) == 3.5
    assert registry.get_sample_value("c_total", {"kind": "credit"}) == 1.0
    assert registry.get_sample_value("plain_seconds_count") == len(VALUES)
    assert registry.get_sample_value("plain_seconds_bucket", {"le": "0.01"}) == 3
    batch.apply()  # nothing new: nothing added twice
    assert registry.get_sample_value("c_total", {"kind": "debit"}) == 3.5
