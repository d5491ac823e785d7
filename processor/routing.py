"""Which partition a tenant lives on.

Every topic the processor reads has the same partition count, and a tenant's records
must all arrive on one partition number so that its account has one owner. Kafka's
default partitioner (murmur2 of the key) decides that number; a record that a producer
placed elsewhere (no key, another key, another partitioner) is re-routed first.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


# murmur2 is pure Python (~6 us); every record asks it (its tenant's partition, and
# the partition of each output keyed by the tenant), hot tenants again and again.
@lru_cache(maxsize=1 << 17)
def partition_for_key(key: bytes, partitions: int) -> int:
    # Same arithmetic as the Java client's and aiokafka's DefaultPartitioner.
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=1 << 17)
def partition_for(tenant_id: str, partitions: int) -> int:
    return partition_for_key(tenant_id.encode(), partitions)
