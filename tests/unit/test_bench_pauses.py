"""`python -m bench.pauses`' own parts: the usage it spreads over the recovered tenants,
and the pauses it reads from the worker's histogram. (The run itself is a benchmark.)"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.pauses import pauses_from, spread_usage
from processor.kafka.usage_wire import read_call


def test_the_usage_reaches_the_recovered_tenants_and_is_valid() -> None:
    reached: set[str] = set()
    events = list(spread_usage(tenants=50, events=400, seed=1, tag="t", reached=reached))
    assert len(events) == 400
    tenants = {e.key.decode() for e in events}
    assert tenants == reached <= {f"t{i:07d}" for i in range(50)}
    assert len(tenants) > 40, "spread evenly, most tenants get an event"
    assert len({e.event_id for e in events}) == 400
    for e in events:
        assert read_call(e.value).tenant_id == e.key.decode()


def test_pauses_are_counted_by_generation_and_length() -> None:
    registry = CollectorRegistry()
    pauses = Histogram(
        "meter_gc_pause_seconds",
        "",
        ["generation"],
        buckets=(0.001, 0.05, 0.1, 0.5, 1.0, 5.0),
        registry=registry,
    )
    for seconds in (0.002, 0.07, 0.2):
        pauses.labels(generation="1").observe(seconds)
    pauses.labels(generation="2").observe(3.0)
    got = pauses_from(generate_latest(registry).decode())
    assert got["1"] == {
        "passes": 3.0,
        "seconds": 0.272,
        "over_0.05_s": 2.0,
        "over_0.1_s": 1.0,
        "over_1_s": 0.0,
    }
    assert got["2"]["over_1_s"] == 1.0
