"""Producing a batch of records in bulk: one aiokafka record batch per partition.

Faust's `Topic.send` costs a future, a callback chain and a producer-buffer trip per
record; a batch of outputs instead goes out as one aiokafka record batch per
partition (`create_batch`/`send_batch`), and the caller waits once for all of them.

The worker publishes through `TransactionalPublisher`: each round's records go out in
one Kafka transaction per partition number (docs/guarantees.md), so a consumer reading
`read_committed` sees a batch's outputs and state together or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from processor import metrics
from processor.handler import Out
from processor.routing import partition_for_key

log = logging.getLogger(__name__)


class _Sender:
    """Groups records by topic partition and sends each group as record batches."""

    def __init__(self) -> None:
        self._partitions: dict[str, int] = {}
        self._spread = itertools.count()

    async def send(self, producer: Any, records: Iterable[Out]) -> list[asyncio.Future[Any]]:
        """Hand every record to `producer`; the futures resolve as the broker acks."""
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
        return sent


class KafkaPublisher:
    """`Publisher` on one plain aiokafka producer, got lazily (Faust starts it late).

    Not atomic: the flusher sends a batch's outputs first and its state in the next
    round. Kept for tools and benchmarks that compare against the transactional path.
    """

    atomic = False

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer
        self._sender = _Sender()

    async def publish(self, records: Sequence[Out]) -> None:
        sent = await self._sender.send(self._producer(), records)
        # Raises the first delivery error: the caller must not treat the batch as sent.
        await asyncio.gather(*sent)


class TransactionalPublisher:
    """`Publisher` that commits each round in one transaction per partition number.

    A tenant's records all come from, and all its state goes to, one partition number
    p (the input topics, the re-route and timer topics and the changelogs are
    co-partitioned), so p's transaction holds everything its records caused: outputs,
    re-routes, rejections and the account values and marks. Each p has its own
    producer, with the transactional id `<app id>-p<p>`: a worker that is assigned p
    starts that producer before it reads p's changelog, which fences any earlier
    owner (a zombie) and aborts whatever transaction it left open, so nothing the
    zombie writes afterwards is ever committed (Kafka's epoch fencing).
    """

    atomic = True

    def __init__(
        self,
        app_id: str,
        make_producer: Callable[[str], Any],
        before_commit: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._app_id = app_id
        self._make_producer = make_producer
        self._producers: dict[int, Any] = {}
        self._sender = _Sender()
        # Serialises rounds and re-assignments: a producer is never stopped mid-round.
        self._lock = asyncio.Lock()
        # The rebalance generation and partitions of the last assignment: every table's
        # store asks for the same one, and it is carried out once.
        self._assigned: tuple[int, frozenset[int]] | None = None
        # A test's hook between a transaction's sends and its commit (a crash there).
        self._before_commit = before_commit

    def transactional_id(self, partition: int) -> str:
        return f"{self._app_id}-p{partition}"

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._producers)

    async def assign(self, partitions: Iterable[int], generation: int | None = None) -> None:
        """Own exactly these partition numbers, each with a newly started producer.

        A partition kept through the rebalance gets a new producer too: if this worker
        was a zombie, another took the partition over in between and fenced the old
        one, which could never commit again.
        """
        wanted = frozenset(partitions)
        async with self._lock:
            if generation is not None and self._assigned == (generation, wanted):
                return
            self._assigned = None if generation is None else (generation, wanted)
            for p in sorted(self._producers):
                with contextlib.suppress(Exception):  # a fenced producer may refuse
                    await self._producers.pop(p).stop()
            for p in sorted(wanted):
                producer = self._make_producer(self.transactional_id(p))
                # InitProducerId: bumps the epoch of this transactional id, fencing the
                # previous owner, and waits until its open transaction is aborted.
                await producer.start()
                self._producers[p] = producer

    async def stop(self) -> None:
        await self.assign(())

    async def publish(self, records: Sequence[Out]) -> None:
        groups: dict[int, list[Out]] = defaultdict(list)
        for r in records:
            groups[r.owner].append(r)
        async with self._lock:
            # Raises the first failure; the caller treats the whole round as failed.
            await asyncio.gather(*(self._commit(p, group) for p, group in groups.items()))

    async def _commit(self, partition: int, records: list[Out]) -> None:
        producer = self._producers.get(partition)
        if producer is None:
            # Not (or no longer) ours: its new owner does this work again, and a
            # transaction under its id from here would fence that owner. What reaches
            # here is a timer's tick or a forgotten mark's tombstone staged before a
            # rebalance moved the partition; input records are flushed before a revoke.
            log.warning(
                "dropped %d records for partition %d, which this worker no longer owns",
                len(records),
                partition,
            )
            metrics.UNOWNED_DROPPED.inc(len(records))
            return
        await producer.begin_transaction()
        sent = await self._sender.send(producer, records)
        await asyncio.gather(*sent)
        if self._before_commit is not None:
            await self._before_commit(partition)
        await producer.commit_transaction()
        metrics.TRANSACTIONS.inc()
