"""Producing a batch of records through the worker's aiokafka producer, in bulk.

Faust's `Topic.send` costs a future, a callback chain and a producer-buffer trip per
record; a batch of outputs instead goes out as one aiokafka record batch per
partition (`create_batch`/`send_batch`), and the caller waits once for all of them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from processor.handler import Out
from processor.routing import partition_for_key


class KafkaPublisher:
    """`Publisher` on an aiokafka producer, got lazily (Faust starts it late)."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer
        self._partitions: dict[str, int] = {}
        self._spread = itertools.count()

    async def publish(self, records: Sequence[Out]) -> None:
        producer = self._producer()
        groups: dict[tuple[str, int], list[Out]] = defaultdict(list)
        counts = self._partitions
        for r in records:
            partition = r.partition
            if partition is None:
                count = counts.get(r.topic)
                if count is None:
                    count = counts[r.topic] = len(await producer.partitions_for(r.topic))
                if r.key is None:
                    partition = next(self._spread) % count
                else:
                    partition = partition_for_key(r.key, count)
            groups[(r.topic, partition)].append(r)
        sent: list[asyncio.Future[Any]] = []
        for (topic, partition), group in groups.items():
            batch = producer.create_batch()
            for r in group:
                headers = list(r.headers) if r.headers else []
                if (
                    batch.append(key=r.key, value=r.value, timestamp=None, headers=headers)
                    is not None
                ):
                    continue
                if batch.record_count():
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
                    # Larger than a whole batch: the producer sends it on its own.
                    sent.append(
                        await producer.send(
                            topic, r.value, key=r.key, partition=partition, headers=headers
                        )
                    )
                    batch = producer.create_batch()
            if batch.record_count():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
        # Raises the first delivery error: the caller must not treat the batch as sent.
        await asyncio.gather(*sent)
