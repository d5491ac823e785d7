"""The worker's garbage collector policy (processor/worker/collector.py): what survives a
pass is out of later passes' reach, is still freed when dropped, and what became
cyclic garbage among it is collected at the next renewal."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram

from processor.worker.collector import GC_THRESHOLDS, Collector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def collector(registry: CollectorRegistry) -> Iterator[Collector]:
    pauses = Histogram("gc_pause_seconds", "", ["generation"], registry=registry)
    installed = Collector(pauses)
    installed.install()
    try:
        yield installed
    finally:
        installed.uninstall()


def _in_a_generation(obj: object) -> bool:
    return any(o is obj for generation in range(3) for o in gc.get_objects(generation))


def test_install_sets_the_thresholds(collector: Collector) -> None:
    assert gc.get_threshold() == GC_THRESHOLDS


def test_what_survives_a_middle_pass_is_out_of_every_later_pass(collector: Collector) -> None:
    held = [Node() for _ in range(10)]
    assert _in_a_generation(held)
    gc.collect(1)
    assert gc.is_tracked(held)
    assert not _in_a_generation(held), "frozen: no pass walks it"
    gc.collect()
    assert not _in_a_generation(held), "still frozen after a full pass"


def test_a_frozen_object_is_freed_when_dropped(collector: Collector) -> None:
    node = Node()
    gc.collect(1)
    gone = weakref.ref(node)
    del node
    assert gone() is None


def test_frozen_cyclic_garbage_waits_for_the_renewal(collector: Collector) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect(1)
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is not None, "a frozen cycle is not collected by an ordinary pass"
    assert collector.renew() >= 2
    assert gone() is None


def test_a_renewal_freezes_what_is_left(collector: Collector) -> None:
    held = Node()
    gc.unfreeze()
    collector.renew()
    assert gc.is_tracked(held)
    assert not _in_a_generation(held)


def test_every_pass_is_observed_by_generation(
    collector: Collector, registry: CollectorRegistry
) -> None:
    def passes(generation: str) -> float:
        value = registry.get_sample_value("gc_pause_seconds_count", {"generation": generation})
        return value or 0.0

    before = passes("1"), passes("2")
    gc.collect(1)
    collector.renew()
    assert passes("1") == before[0] + 1
    assert passes("2") >= before[1] + 1


def test_uninstall_stops_watching_and_gives_the_frozen_back(registry: CollectorRegistry) -> None:
    pauses = Histogram("gc_pause_seconds", "", ["generation"], registry=registry)
    callbacks = len(gc.callbacks)
    collector = Collector(pauses)
    collector.install()
    collector.install()  # twice: still one callback
    try:
        assert len(gc.callbacks) == callbacks + 1
        gc.collect(1)
        collector.uninstall()
        assert gc.get_freeze_count() == 0
        assert len(gc.callbacks) == callbacks
    finally:
        collector.uninstall()


def test_a_renewal_is_made_at_most_once_in_its_interval(registry: CollectorRegistry) -> None:
    now = [1000.0]
    pauses = Histogram("gc_pause_seconds", "", ["generation"], registry=registry)
    collector = Collector(pauses, renew_every=3600.0, clock=lambda: now[0])
    try:
        assert collector.renew_if_due() is not None, "the first one is always made"
        now[0] += 3599.0
        assert collector.renew_if_due() is None, "a rolling restart's next rebalance"
        now[0] += 1.0
        assert collector.renew_if_due() is not None
    finally:
        gc.unfreeze()


def test_what_survives_a_young_pass_is_frozen_too(collector: Collector) -> None:
    held = [Node() for _ in range(10)]
    gc.collect(0)
    assert gc.is_tracked(held)
    assert not _in_a_generation(held)
