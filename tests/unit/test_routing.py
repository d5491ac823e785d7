"""The tenant and key partition caches: answers as murmur2's, and bounded by count."""

from __future__ import annotations

import pytest

from processor.kafka import routing
from processor.kafka.routing import _partition, cache_sizes, partition_for, partition_for_key


def test_the_caches_never_hold_more_than_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stranger's stream of new tenant ids must not grow the worker's memory.
    monkeypatch.setattr(routing, "CACHED_KEYS", 8)
    # One partition count, as in a worker (the caches are per count).
    monkeypatch.setattr(routing, "_tenants", {})
    monkeypatch.setattr(routing, "_keys", {})
    for n in range(100):
        tenant = f"tenant-{n}"
        assert partition_for(tenant, 12) == _partition(tenant.encode(), 12)
        assert partition_for_key(f"key-{n}".encode(), 12) == _partition(f"key-{n}".encode(), 12)
        tenants, keys = cache_sizes()
        assert tenants <= 8 and keys <= 8


def test_a_partition_count_has_its_own_answers() -> None:
    for partitions in (1, 3, 12, 60):
        assert partition_for("acme", partitions) == _partition(b"acme", partitions)
        assert partition_for_key(b"acme", partitions) == _partition(b"acme", partitions)
