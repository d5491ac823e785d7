"""Which partition a tenant lives on.

Every topic the processor reads has the same partition count, and a tenant's records
must all arrive on one partition number so that its account has one owner. Kafka's
default partitioner (murmur2 of the key) decides that number; a record that a producer
placed elsewhere (no key, another key, another partitioner) is re-routed first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from aiokafka.partitioner import murmur2

# murmur2 is pure Python, slow (docs/performance.md, "Figures behind design choices"),
# and every record asks it (its tenant's partition, and the partition of each output
# keyed by the tenant), hot tenants again and again, so the answers are cached. The
# caches are keyed by input, so each is bounded by count and by the size of a key:
# only keys of at most a tenant id's length (64 ASCII characters, one byte each) are
# cached; any other (never a valid tenant id) is hashed every time. At most
# CACHED_KEYS entries of at most MAX_CACHED_KEY_BYTES each; what an entry costs in
# memory, and so the caches when full, is in docs/performance.md ("Figures behind
# design choices").
CACHED_KEYS: Final = 1 << 17
MAX_CACHED_KEY_BYTES: Final = 64


def _partition(key: bytes, partitions: int) -> int:
    # Same arithmetic as the Java client's and aiokafka's DefaultPartitioner.
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


# Plain dicts, one per partition count, emptied when full: a hit is one probe, where an
# lru_cache's was a call through its wrapper and a move in its list, several times a
# record (docs/performance.md, "Partitions cached in plain dicts"). A hot tenant is back
# in the cache with its next record.
_tenants: dict[int, dict[str, int]] = {}
_keys: dict[int, dict[bytes, int]] = {}


def _cache_of(caches: dict[int, dict[Any, int]], partitions: int) -> dict[Any, int]:
    cache = caches.get(partitions)
    if cache is None:
        cache = caches[partitions] = {}
    elif len(cache) >= CACHED_KEYS:
        cache.clear()
    return cache


def partition_for_key(key: bytes, partitions: int) -> int:
    cache = _keys.get(partitions)
    if cache is not None:
        found = cache.get(key)
        if found is not None:
            return found
    if len(key) > MAX_CACHED_KEY_BYTES:
        return _partition(key, partitions)
    found = _cache_of(_keys, partitions)[key] = _partition(key, partitions)
    return found


def _partition_for(tenant_id: str, partitions: int) -> int:
    cache = _tenants.get(partitions)
    if cache is not None:
        found = cache.get(tenant_id)
        if found is not None:
            return found
    if len(tenant_id) > MAX_CACHED_KEY_BYTES or not tenant_id.isascii():
        return _partition(tenant_id.encode(), partitions)
    found = partition_for_key(tenant_id.encode(), partitions)
    _cache_of(_tenants, partitions)[tenant_id] = found
    return found


# Typed as loosely as the lru_cache it replaced (callers pass a table's `partitions`,
# typed int | None by Faust, always set by then).
partition_for: Callable[..., int] = _partition_for


def cache_sizes() -> tuple[int, int]:
    """Entries held by the tenant cache and the key cache (for tests and metrics)."""
    return sum(map(len, _tenants.values())), sum(map(len, _keys.values()))
