"""Histogram values observed at once come out as if observed one at a time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from processor.observability.metrics import observe_all

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


def test_every_alert_kind_is_counted_from_zero() -> None:
    """A kind's first alert after a start must show in increase() (rules and panels)."""
    from processor.core.outputs import AlertKind
    from processor.observability.metrics import REGISTRY

    for kind in AlertKind:
        assert REGISTRY.get_sample_value("meter_alerts_total", {"alert": kind.value}) is not None
