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

from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from processor.handler import Out
from processor.routing import partition_for_key

# The broker (or the producer) refused one record as too large.
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


class KafkaPublisher:
    """`Publisher` on an aiokafka producer, got lazily (Faust starts it late).

    `fallback`: for a record refused as too large (alone in its batch), the record to
    produce instead, or None to fail the publish (`RecordHandler.minimal_rejection`).
    """

    def __init__(
        self,
        producer: Callable[[], Any],
        fallback: Callable[[Out], Out | None] | None = None,
    ) -> None:
        self._producer = producer
        self._partitions: dict[str, int] = {}
        self._spread = itertools.count()
        self.fallback = fallback

    async def publish(self, records: Sequence[Out]) -> None:
        await self._publish(records, self.fallback)

    async def _publish(
        self, records: Sequence[Out], fallback: Callable[[Out], Out | None] | None
    ) -> None:
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
        # The records of each future's batch, to find a lone record refused for size.
        batches: list[list[Out]] = []
        for (topic, partition), group in groups.items():
            batch = producer.create_batch()
            members: list[Out] = []
            for r in group:
                headers = list(r.headers) if r.headers else []
                if (
                    batch.append(key=r.key, value=r.value, timestamp=None, headers=headers)
                    is not None
                ):
                    members.append(r)
                    continue
                if batch.record_count():
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batches.append(members)
                    batch, members = producer.create_batch(), []
                if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
                    # Larger than a whole batch: the producer sends it on its own.
                    try:
                        sent.append(
                            await producer.send(
                                topic, r.value, key=r.key, partition=partition, headers=headers
                            )
                        )
                    except TOO_LARGE as exc:
                        sent.append(_failed(exc))
                    batches.append([r])
                    batch = producer.create_batch()
                else:
                    members.append(r)
            if batch.record_count():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
                batches.append(members)
        results = await asyncio.gather(*sent, return_exceptions=True)
        stand_ins: list[Out] = []
        for members, result in zip(batches, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            stand_in = (
                fallback(members[0])
                if fallback is not None and len(members) == 1 and isinstance(result, TOO_LARGE)
                else None
            )
            if stand_in is None:
                # The first delivery error: the caller must not treat the batch as sent.
                raise result
            stand_ins.append(stand_in)
        if stand_ins:
            # Minimal rejections; one refused in turn fails the publish.
            await self._publish(stand_ins, None)


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
