"""Reading a table's changelog partitions in bulk, for recovery.

Faust's recovery turns every changelog record into an event and passes it through its
consumer, conductor and recovery loop: ~5,500 account values per second here, so a
worker holding 1,000,000 tenants would take three minutes to be ready. This reader
fetches the same partitions with a plain aiokafka consumer of its own (no group, manual
assignment) from their beginning to the end offsets they had when it started, and hands
each record's raw key and value to the store. The store then tells Faust's recovery it
has read up to there (`persisted_offset`), so Faust reads only what was appended since.

It reads `read_committed`, to the last stable offsets. What lies past them and will be
committed by the worker's own producers' next markers (a transaction whose markers the
broker lost) is read too, when the reader knows those producers (`producers`;
processor/kafka/glue/pending.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from processor.kafka import glue

log = logging.getLogger(__name__)

# One fetch returns up to this much per partition: a compacted changelog holds one
# value of a few hundred bytes per key, so this is thousands of records per round trip.
PARTITION_FETCH_BYTES = 16 * 1024 * 1024
FETCH_BYTES = 64 * 1024 * 1024

Apply = Callable[[int, bytes | None, bytes | None], None]


class ChangelogReader:
    """Reads changelog partitions to their current end through its own consumer."""

    def __init__(
        self,
        bootstrap: str,
        client_options: dict[str, Any],
        within: float,
        producers: Callable[[], Collection[int]] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        # The producer ids whose next commit will make their records past the last
        # stable offsets readable (the worker's transactional producers, fenced and
        # started before a rebalance's reads); None: read to the last stable offsets only.
        self.producers = producers
        self.client_options = client_options
        self.within = within

    async def read(self, tps: Iterable[TP], apply: Apply) -> dict[TP, int]:
        """Apply every record now in `tps`, in offset order per partition.

        `apply(partition, key, value)` gets each record's raw bytes. Returns, per
        partition, the offset of the last record read (Faust's convention: the end
        offset minus one; -1 for an empty partition).
        """
        wanted = sorted(set(tps))
        if not wanted:
            return {}
        began = time.perf_counter()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            # No group, so no committed offsets: every partition starts at its
            # beginning. (A seek instead costs the first fetch: an empty 500 ms wait.)
            auto_offset_reset="earliest",
            # Only what committed transactions wrote (processor/worker/publisher.py); the end
            # offsets are then the last stable offsets.
            isolation_level="read_committed",
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            fetch_max_bytes=FETCH_BYTES,
            **self.client_options,
        )
        await consumer.start()
        records = 0
        # Each value read adds a few objects that stay alive: the collector's full
        # passes over them would cost more than the read itself.
        collecting = gc.isenabled()
        gc.disable()
        try:
            parts = [TopicPartition(tp.topic, tp.partition) for tp in wanted]
            consumer.assign(parts)
            start = await consumer.beginning_offsets(parts)
            end = await consumer.end_offsets(parts)
            todo = {tp for tp in parts if end[tp] > start[tp]}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.within
            while todo:
                if loop.time() > deadline:
                    raise TimeoutError(f"changelog not read to its end within {self.within}s")
                batch = await consumer.getmany(*todo, timeout_ms=500)
                for tp, fetched in batch.items():
                    limit = end[tp]
                    partition = tp.partition
                    for r in fetched:
                        # Records appended after the start are Faust's to read.
                        if r.offset >= limit:
                            break
                        apply(partition, r.key, r.value)
                        records += 1
                # Compaction and transaction markers leave offsets with no record.
                for tp in list(todo):
                    if await consumer.position(tp) >= end[tp]:
                        todo.discard(tp)
            if self.producers is not None:
                records += await self._read_pending(consumer, end, apply)
        finally:
            if collecting:
                gc.enable()
            await consumer.stop()
        log.info(
            "read %d changelog records of %d partitions in %.1fs",
            records,
            len(wanted),
            time.perf_counter() - began,
        )
        return {TP(tp.topic, tp.partition): end[tp] - 1 for tp in parts}

    async def _read_pending(
        self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int], apply: Apply
    ) -> int:
        """Apply what the own producers' next commit will make readable past `end`."""
        assert self.producers is not None
        producers = set(self.producers())
        pending = await glue.pending_records(consumer, end, producers)
        count = 0
        for tp, rows in pending.items():
            for _offset, key, value in rows:
                apply(tp.partition, key, value)
            count += len(rows)
            if rows:
                log.warning(
                    "%s: read %d records past its last stable offset %d, committed or "
                    "left by this worker's producers without markers",
                    tp,
                    len(rows),
                    end[tp],
                )
        return count

    async def end_offsets(self, tps: Iterable[str]) -> dict[str, int]:
        """The end offsets of those `topic:partition`s that exist now."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, **self.client_options
        )
        await consumer.start()
        try:
            cluster = await glue.fetch_metadata(consumer)
            parts = []
            for tp in tps:
                topic, _, partition = tp.rpartition(":")
                if partition.isdigit() and int(partition) in (
                    cluster.partitions_for_topic(topic) or ()
                ):
                    parts.append(TopicPartition(topic, int(partition)))
            if not parts:
                return {}
            end = await consumer.end_offsets(parts)
            return {f"{tp.topic}:{tp.partition}": offset for tp, offset in end.items()}
        finally:
            await consumer.stop()
