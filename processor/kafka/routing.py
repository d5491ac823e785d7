"""Which partition a tenant lives on.

Every topic the processor reads has the same partition count, and a tenant's records
must all arrive on one partition number so that its account has one owner. Kafka's
default partitioner (murmur2 of the key) decides that number; a record that a producer
placed elsewhere (no key, another key, another partitioner) is re-routed first.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Final

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


_cached_key = lru_cache(maxsize=CACHED_KEYS)(_partition)


@lru_cache(maxsize=CACHED_KEYS)
def _cached_tenant(tenant_id: str, partitions: int) -> int:
    return _cached_key(tenant_id.encode(), partitions)


def partition_for_key(key: bytes, partitions: int) -> int:
    if len(key) > MAX_CACHED_KEY_BYTES:
        return _partition(key, partitions)
    return _cached_key(key, partitions)


def _partition_for(tenant_id: str, partitions: int) -> int:
    if len(tenant_id) > MAX_CACHED_KEY_BYTES or not tenant_id.isascii():
        return _partition(tenant_id.encode(), partitions)
    return _cached_tenant(tenant_id, partitions)


# Typed as loosely as the lru_cache it replaces (callers pass a table's `partitions`,
# typed int | None by Faust, always set by then).
partition_for: Callable[..., int] = _partition_for


def cache_sizes() -> tuple[int, int]:
    """Entries held by the tenant cache and the key cache (for tests and metrics)."""
    return _cached_tenant.cache_info().currsize, _cached_key.cache_info().currsize
