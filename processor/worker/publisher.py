"""Producing a batch of records in bulk: one aiokafka record batch per partition.

Faust's `Topic.send` costs a future, a callback chain and a producer-buffer trip per
record; a batch of outputs instead goes out as one aiokafka record batch per
partition (`create_batch`/`send_batch`), and the caller waits once for all of them.

The worker publishes through `TransactionalPublisher`: each round's records go out in
one Kafka transaction (docs/guarantees.md), so a consumer reading `read_committed` sees
a batch's outputs and state together or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.producer import sender as aiokafka_sender

from processor.kafka.fence import Member
from processor.kafka.routing import partition_for_key
from processor.observability import metrics
from processor.worker.records import Out

log = logging.getLogger(__name__)

# aiokafka 0.14.0 (pinned; producer/sender.py) waits BACKOFF_OVERRIDE, 20 ms, before it
# retries an AddPartitionsToTxn that the broker refused with CONCURRENT_TRANSACTIONS,
# which it answers while it still writes the previous transaction's markers (about a
# millisecond on one broker): nearly every round paid those 20 ms
# (docs/performance.md). A shorter wait costs a retried request or two.
TXN_RETRY_BACKOFF_SECONDS = 0.002

# The broker (or the producer) refused one record as too large.
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# For a record refused as too large, alone in its batch: the record to produce
# instead, or None to fail the publish (`intake.minimal_rejection`).
Fallback = Callable[[Out], Out | None]


class _Sender:
    """Groups records by topic partition and sends each group as record batches."""

    def __init__(self) -> None:
        self._partitions: dict[str, int] = {}
        self._spread = itertools.count()

    async def send(self, producer: Any, records: Iterable[Out]) -> list[_Sent]:
        """Hand every record to `producer`; each batch's future resolves as the broker
        acks it, and names the records it holds (to find a lone one refused for size)."""
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
        # aiokafka holds one batch per partition until it is sent, and sends one request
        # at a time per broker: a partition's next batch waits a round trip. The
        # partitions are handed over side by side, so a round waits for its longest
        # partition, not for the sum of them (docs/performance.md, "One transaction a
        # round").
        handed = await asyncio.gather(
            *(self._send_group(producer, tp, group) for tp, group in groups.items())
        )
        return [s for group_sent in handed for s in group_sent]

    async def _send_group(
        self, producer: Any, tp: tuple[str, int], group: list[Out]
    ) -> list[_Sent]:
        topic, partition = tp
        sent: list[_Sent] = []
        batch = producer.create_batch()
        members: list[Out] = []
        for r in group:
            headers = list(r.headers) if r.headers else []
            if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is not None:
                members.append(r)
                continue
            if batch.record_count():
                future = await producer.send_batch(batch, topic, partition=partition)
                sent.append(_Sent(future, members))
                batch, members = producer.create_batch(), []
            if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
                # Larger than a whole batch: the producer sends it on its own.
                try:
                    future = await producer.send(
                        topic, r.value, key=r.key, partition=partition, headers=headers
                    )
                except TOO_LARGE as exc:
                    future = _failed(exc)
                sent.append(_Sent(future, [r]))
                batch = producer.create_batch()
            else:
                members.append(r)
        if batch.record_count():
            future = await producer.send_batch(batch, topic, partition=partition)
            sent.append(_Sent(future, members))
        return sent


class _Sent:
    """One batch handed to the producer: its delivery future and its records."""

    __slots__ = ("future", "members")

    def __init__(self, future: asyncio.Future[Any], members: list[Out]) -> None:
        self.future = future
        self.members = members


async def _stand_ins(sent: list[_Sent], fallback: Fallback | None) -> dict[int, Out]:
    """Wait for every batch; for each lone record refused as too large, its stand-in
    (by the record's id). Raises the first other failure: nothing may pass for sent."""
    results = await asyncio.gather(*(s.future for s in sent), return_exceptions=True)
    stand_ins: dict[int, Out] = {}
    for batch, result in zip(sent, results, strict=True):
        if not isinstance(result, BaseException):
            continue
        refused = batch.members[0]
        stand_in = (
            fallback(refused)
            if fallback is not None and len(batch.members) == 1 and isinstance(result, TOO_LARGE)
            else None
        )
        if stand_in is None:
            raise result
        # Carried by the same transaction as the record it stands for.
        stand_ins[id(refused)] = Out(
            stand_in.topic,
            stand_in.key,
            stand_in.value,
            stand_in.headers,
            stand_in.partition,
            stand_in.state,
            refused.owner,
        )
    return stand_ins


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


class KafkaPublisher:
    """`Publisher` on one plain aiokafka producer, got lazily (Faust starts it late).

    Not atomic: the flusher sends a batch's outputs first and its state in the next
    round. Kept for tools and benchmarks that compare against the transactional path.
    """

    atomic = False

    def __init__(self, producer: Callable[[], Any], fallback: Fallback | None = None) -> None:
        self._producer = producer
        self._sender = _Sender()
        self.fallback = fallback

    async def publish(self, records: Sequence[Out]) -> None:
        sent = await self._sender.send(self._producer(), records)
        stand_ins = await _stand_ins(sent, self.fallback)
        if stand_ins:
            # Minimal rejections; one refused in turn fails the publish.
            await _stand_ins(await self._sender.send(self._producer(), stand_ins.values()), None)


class Fence(Protocol):
    """What keeps a zombie's transactions out (processor/kafka/fence.py `GroupFence`)."""

    async def enlist(self, producer: Any, transactional_id: str) -> None: ...

    async def commit(
        self, producer: Any, transactional_id: str, member: Member, partitions: Iterable[int]
    ) -> None: ...

    async def settled(self, producer: Any, partitions: set[int]) -> None: ...


class TransactionalPublisher:
    """`Publisher` that commits each round in one Kafka transaction.

    The worker has one transactional producer, whose id stays the worker's across its
    restarts (a restart fences its previous self and aborts what it left open). A
    round's records all go out in one transaction, whatever their partition numbers,
    and the transaction commits the group fence (processor/kafka/fence.py) as the group
    member this worker was when it was assigned those partitions: the group refuses a
    worker it has since moved on from (a zombie), which then aborts and fails. A worker
    assigned partitions waits until no transaction that could still commit state for
    them is open (`Fence.settled`) before its stores read that state.
    """

    atomic = True

    def __init__(
        self,
        transactional_id: str,
        make_producer: Callable[[str], Any],
        fence: Fence,
        member: Callable[[], Member],
        fallback: Fallback | None = None,
        before_commit: Callable[[frozenset[int]], Awaitable[None]] | None = None,
    ) -> None:
        self.fallback = fallback
        aiokafka_sender.BACKOFF_OVERRIDE = TXN_RETRY_BACKOFF_SECONDS
        self.transactional_id = transactional_id
        self._make_producer = make_producer
        self._fence = fence
        self._member_now = member
        self._producer: Any = None
        self._sender = _Sender()
        # The partition numbers this worker owns, and the group member it was assigned
        # them as: the transactions commit the fence as that member.
        self._owned: frozenset[int] = frozenset()
        self._member: Member = (-1, "")
        # Serialises rounds and re-assignments: no round runs across an assignment.
        self._lock = asyncio.Lock()
        # The rebalance generation and partitions of the last assignment: every table's
        # store asks for the same one, and it is carried out once.
        self._assigned: tuple[int, frozenset[int]] | None = None
        # A test's hook between a transaction's sends and its commit (a crash there).
        self._before_commit = before_commit

    @property
    def partitions(self) -> frozenset[int]:
        return self._owned

    async def assign(self, partitions: Iterable[int], generation: int | None = None) -> None:
        """Own exactly these partition numbers, once no transaction that could still
        commit their state is open.

        Each new assignment starts the producer anew: if this worker was a zombie, the
        broker may have aborted its open transaction and fenced the producer meanwhile.
        """
        wanted = frozenset(partitions)
        async with self._lock:
            if generation is not None and self._assigned == (generation, wanted):
                return
            self._assigned = None if generation is None else (generation, wanted)
            self._owned = frozenset()
            await self._stop_producer()
            producer = self._make_producer(self.transactional_id)
            # InitProducerId: aborts what an earlier run under this id left open.
            await producer.start()
            self._producer = producer
            await self._fence.settled(producer, set(wanted))
            self._member = self._member_now()
            self._owned = wanted

    async def release(self, partitions: Iterable[int]) -> None:
        """Stop producing for these partitions (a revoke): a round in flight ends first,
        and records staged for them afterwards are not produced."""
        async with self._lock:
            self._owned = self._owned - frozenset(partitions)
            self._assigned = None

    async def stop(self) -> None:
        async with self._lock:
            self._owned = frozenset()
            self._assigned = None
            await self._stop_producer()

    async def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # a fenced producer may refuse
                await producer.stop()

    async def publish(self, records: Sequence[Out]) -> None:
        async with self._lock:
            owned = self._owned
            mine = [r for r in records if r.owner in owned]
            if len(mine) < len(records):
                self._drop([r for r in records if r.owner not in owned])
            if mine:
                # Raises the first failure; the caller treats the whole round as failed.
                await self._commit(mine)

    def _drop(self, records: list[Out]) -> None:
        # Not (or no longer) ours: their new owner does this work again. What reaches
        # here is a timer's tick staged before a rebalance moved its partition; input
        # records are flushed before a revoke.
        log.warning(
            "dropped %d records for partitions %s, which this worker no longer owns",
            len(records),
            sorted({r.owner for r in records}),
        )
        metrics.UNOWNED_DROPPED.inc(len(records))

    async def _commit(self, records: list[Out]) -> None:
        producer = self._producer
        partitions = frozenset(r.owner for r in records)
        await producer.begin_transaction()
        try:
            stand_ins = await self._send(producer, records, partitions, self.fallback)
            if stand_ins:
                # A record the broker refused for its size leaves the transaction to be
                # aborted; the round goes again with minimal rejections in its place,
                # and fails if one of those is refused in turn.
                await producer.abort_transaction()
                await producer.begin_transaction()
                again = [stand_ins.get(id(r), r) for r in records]
                await self._send(producer, again, partitions, None)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise
        if self._before_commit is not None:
            await self._before_commit(partitions)
        await producer.commit_transaction()
        metrics.TRANSACTIONS.inc()

    async def _send(
        self,
        producer: Any,
        records: list[Out],
        partitions: frozenset[int],
        fallback: Fallback | None,
    ) -> dict[int, Out]:
        """Send `records` in the open transaction and commit the fence alongside."""
        await self._fence.enlist(producer, self.transactional_id)
        sent = await self._sender.send(producer, records)
        # Both run to their end before the caller may abort the transaction: a fence
        # request after the abort would open another one on the broker.
        stand_ins, joined = await asyncio.gather(
            _stand_ins(sent, fallback),
            self._fence.commit(producer, self.transactional_id, self._member, partitions),
            return_exceptions=True,
        )
        for outcome in (stand_ins, joined):
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(stand_ins, dict)
        return stand_ins
