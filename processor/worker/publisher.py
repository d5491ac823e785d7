"""Producing a batch of records in bulk: one aiokafka record batch per partition.

Faust's `Topic.send` costs a future, a callback chain and a producer-buffer trip per
record; a batch of outputs instead goes out as one aiokafka record batch per
partition (`create_batch`/`send_batch`), and the caller waits once for all of them.

The worker publishes through `TransactionalPublisher`: each round's records go out in
one Kafka transaction per partition number, or per group of partition numbers the worker
owns whole (docs/guarantees.md), so a consumer reading `read_committed` sees a batch's
outputs and state together or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.errors import (
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.producer import sender as aiokafka_sender

from processor.kafka import glue
from processor.kafka.routing import partition_for_key
from processor.observability import metrics
from processor.worker.records import Out

log = logging.getLogger(__name__)

# aiokafka 0.14.0 (pinned; producer/sender.py) waits BACKOFF_OVERRIDE, 20 ms, before it
# retries an AddPartitionsToTxn that the broker refused with CONCURRENT_TRANSACTIONS,
# which it answers while it still writes the previous transaction's markers (about a
# millisecond on one broker): nearly every round paid those 20 ms
# (docs/performance.md). A shorter wait costs a retried request or two. Under
# transactions v2 the broker retries itself, and this is the wait before a produce the
# broker still refused that way goes again (processor/kafka/glue/transactions_v2.py).
TXN_RETRY_BACKOFF_SECONDS = 0.002

# A round's transaction must commit within this (rounds take milliseconds). Kafka
# Streams' default under exactly-once: a worker killed with a transaction open holds
# read_committed consumers back this long at most (its successor's producer aborts it
# at once).
TRANSACTION_TIMEOUT_MS = 10_000

# The groups of partition numbers that may share one transaction a round. Each level k
# has two kinds: the partition numbers with the same remainder modulo k (`g`, strided)
# and k contiguous blocks of them (`b`, the last one shorter when k does not divide the
# count); level 1 is all of them. A worker commits each partition number it owns in its
# group of the coarsest level where it owns one whole (transactional id
# `<app id>-g<k>.<remainder>` or `<app id>-b<k>.<block>`), else alone (`<app id>-p<p>`):
# a round's cost is mostly per transaction (docs/performance.md, "Partition numbers
# sharing a transaction"). k workers that join together get strided groups whole
# (Faust assigns round robin); a worker joining one that owns everything gets a block
# (Faust's sticky assignment keeps the highest numbers where they were and hands the
# lowest over). Part of the fencing protocol: every worker of an app must use the same
# groups (docs/guarantees.md).
TRANSACTION_LEVELS: Final = (1, 2, 3, 4)


def _groups(p: int, partitions: int) -> Iterator[tuple[str, range]]:
    """Partition number p's groups, each as its id's suffix and its members, coarser
    levels last (within a level, the block after the remainder group; they differ in
    size only when k does not divide the count)."""
    for k in reversed(TRANSACTION_LEVELS):
        yield f"g{k}.{p % k}", range(p % k, partitions, k)
        if k > 1:
            size = -(-partitions // k)
            block = p // size
            yield f"b{k}.{block}", range(block * size, min(partitions, (block + 1) * size))


# A topic and a partition.
_TP = tuple[str, int]


def own_transactional_id(app_id: str, partition: int) -> str:
    """The transactional id of a partition number's own transactions."""
    return f"{app_id}-p{partition}"


def transaction_routes(
    app_id: str, owned: frozenset[int], partitions: int | None
) -> tuple[dict[int, str], frozenset[str]]:
    """Which transactional id carries each owned partition number's records, and every id
    a new owner of them must start (fence) first: its own and its groups' at every
    level, any of which an earlier owner may have used. `partitions`: the topics'
    partition count (None: no groups, a transaction per partition number)."""
    route: dict[int, str] = {}
    fenced: set[str] = set()
    for p in owned:
        alone = own_transactional_id(app_id, p)
        fenced.add(alone)
        route[p] = alone
        if partitions is None:
            continue
        for suffix, members in _groups(p, partitions):  # the last whole one is taken
            shared = f"{app_id}-{suffix}"
            fenced.add(shared)
            if owned.issuperset(members):
                route[p] = shared
    return route, frozenset(fenced)


# The broker (or the producer) refused one record as too large.
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# For a record refused as too large, alone in its batch: the record to produce
# instead, or None to fail the publish (`intake.minimal_rejection`).
Fallback = Callable[[Out], Out | None]


def transactional_producer(
    bootstrap: str, transactional_id: str, batch_bytes: int, options: Mapping[str, Any]
) -> glue.TransactionsV2Producer:
    """A partition number's producer (not started): its record batches hold up to
    `batch_bytes` (`sizing.Limits.batch_bytes`), so a round's records for one partition
    go in one batch, one produce request. It speaks Kafka's transactions v2 where the
    cluster has them: a transaction is its produce and EndTxn."""
    return glue.TransactionsV2Producer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        max_batch_size=batch_bytes,
        **options,
    )


class _Sender:
    """Groups records by topic partition and sends each group as record batches."""

    def __init__(self) -> None:
        self._partitions: dict[str, int] = {}
        self._spread = itertools.count()

    async def send(
        self, producer: Any, records: Iterable[Out], alone: frozenset[_TP] = frozenset()
    ) -> list[_Sent]:
        """Hand every record to `producer`; each batch's future resolves as the broker
        acks it, and names the records it holds (to find a lone one refused for size).
        `alone`: the topic partitions whose records go in a batch each."""
        sent: list[_Sent] = []
        for (topic, partition), group in (await self._group(producer, records)).items():
            batch = producer.create_batch()
            members: list[Out] = []
            one_each = (topic, partition) in alone
            for r in group:
                headers = list(r.headers) if r.headers else []
                if not (one_each and members) and (
                    batch.append(key=r.key, value=r.value, timestamp=None, headers=headers)
                    is not None
                ):
                    members.append(r)
                    continue
                # The batch is full, or holds its one record: send it, start the next.
                if batch.record_count():
                    future = await producer.send_batch(batch, topic, partition=partition)
                    sent.append(_Sent(future, members, topic, partition))
                    batch, members = producer.create_batch(), []
                if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
                    # Larger than a whole batch: the producer sends it on its own.
                    try:
                        future = await producer.send(
                            topic, r.value, key=r.key, partition=partition, headers=headers
                        )
                        sent.append(_Sent(future, [r], topic, partition))
                    except TOO_LARGE as exc:
                        sent.append(_Sent(_failed(exc), [r], topic, partition, numbered=False))
                    batch = producer.create_batch()
                else:
                    members.append(r)
            if batch.record_count():
                future = await producer.send_batch(batch, topic, partition=partition)
                sent.append(_Sent(future, members, topic, partition))
        return sent

    async def pack(self, producer: Any, records: Iterable[Out]) -> list[glue.Batch] | None:
        """The records in record batches, in order, for a transaction sent straight
        (`glue.produce_round`); None if one is larger than a batch (the producer's own
        path sends those)."""
        batches: list[glue.Batch] = []
        for (topic, partition), group in (await self._group(producer, records)).items():
            if not glue.pack_group(producer, topic, partition, group, batches):
                return None
        return batches

    async def _group(self, producer: Any, records: Iterable[Out]) -> dict[_TP, list[Out]]:
        """The records by topic partition, in order."""
        groups: dict[_TP, list[Out]] = defaultdict(list)
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
        return groups


class _Sent:
    """One batch handed to the producer: its delivery future, where it went and its
    records; `numbered`: the producer gave its records sequence numbers (it was not
    refused before it was queued)."""

    __slots__ = ("future", "members", "numbered", "partition", "topic")

    def __init__(
        self,
        future: asyncio.Future[Any],
        members: list[Out],
        topic: str,
        partition: int,
        numbered: bool = True,
    ) -> None:
        self.future = future
        self.members = members
        self.topic = topic
        self.partition = partition
        self.numbered = numbered


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What the broker made of a transaction's batches."""

    # For each lone record refused as too large, the record standing in for it.
    stand_ins: dict[int, Out]
    # Where a batch of several records was refused as too large: to go again one
    # record a batch.
    crowded: frozenset[_TP]
    # The batches the broker appended nothing of, numbered by the producer.
    refused: list[_Sent]

    @property
    def complete(self) -> bool:
        """Every record is in: nothing to send again."""
        return not (self.refused or self.stand_ins)


async def _outcome(sent: list[_Sent], fallback: Fallback | None, split: bool = False) -> _Outcome:
    """Wait for every batch. Raises the first failure other than a refusal for size (or
    its consequence): nothing may pass for sent. `split`: a batch of several records
    refused as too large is `crowded` (its topic partition), else such a refusal
    raises too."""
    results = await asyncio.gather(*(s.future for s in sent), return_exceptions=True)
    if not any(isinstance(result, BaseException) for result in results):
        return _Outcome({}, frozenset(), [])  # every round's usual case
    too_large = {
        (batch.topic, batch.partition)
        for batch, result in zip(sent, results, strict=True)
        if isinstance(result, TOO_LARGE)
    }
    stand_ins: dict[int, Out] = {}
    refused: list[_Sent] = []
    crowded: set[_TP] = set()
    for batch, result in zip(sent, results, strict=True):
        if not isinstance(result, BaseException):
            continue
        if batch.numbered:
            refused.append(batch)
        if isinstance(result, OutOfOrderSequenceNumber) and (
            (batch.topic, batch.partition) in too_large
        ):
            # Numbered after a batch of its partition that was refused: refused in turn.
            continue
        if split and isinstance(result, TOO_LARGE) and len(batch.members) > 1:
            crowded.add((batch.topic, batch.partition))
            continue
        refused_record = batch.members[0]
        stand_in = (
            fallback(refused_record)
            if fallback is not None and len(batch.members) == 1 and isinstance(result, TOO_LARGE)
            else None
        )
        if stand_in is None:
            raise result
        # Carried by the same transaction as the record it stands for.
        stand_ins[id(refused_record)] = Out(
            stand_in.topic,
            stand_in.key,
            stand_in.value,
            stand_in.headers,
            stand_in.partition,
            stand_in.state,
            refused_record.owner,
        )
    return _Outcome(stand_ins, frozenset(crowded), refused)


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
        stand_ins = (await _outcome(sent, self.fallback)).stand_ins
        if stand_ins:
            # Minimal rejections; one refused in turn fails the publish.
            await _outcome(await self._sender.send(self._producer(), stand_ins.values()), None)


class TransactionalPublisher:
    """`Publisher` that commits each round in one transaction per partition number, or
    per group of them that this worker owns whole (`transaction_routes`).

    A tenant's records all come from, and all its state goes to, one partition number
    p (the input topics, the re-route and timer topics and the changelogs are
    co-partitioned), so p's transaction holds everything its records caused: outputs,
    re-routes, rejections and the account values and marks. A worker that is assigned p
    starts the producers of p's transactional ids (its own and its groups') before it
    reads p's changelog, which fences any earlier owner (a zombie) and aborts whatever
    transaction it left open, so nothing the zombie writes afterwards is ever committed
    (Kafka's epoch fencing).
    """

    atomic = True

    def __init__(
        self,
        app_id: str,
        make_producer: Callable[[str], Any],
        fallback: Fallback | None = None,
        before_commit: Callable[[str], Awaitable[None]] | None = None,
        unnumber: Callable[[Any, str, int, int], None] = glue.unnumber,
        partitions: int | None = None,
    ) -> None:
        self.fallback = fallback
        # Takes back the sequence numbers of a batch the broker refused (tests record it).
        self._unnumber = unnumber
        aiokafka_sender.BACKOFF_OVERRIDE = TXN_RETRY_BACKOFF_SECONDS
        self._app_id = app_id
        self._make_producer = make_producer
        # The topics' partition count, which the groups are drawn from.
        self._partition_count = partitions
        # Each owned partition number's transactional id, and the producers by id.
        self._routes: dict[int, str] = {}
        self._producers: dict[str, Any] = {}
        self._sender = _Sender()
        # Serialises rounds and re-assignments: a producer is never stopped mid-round.
        self._lock = asyncio.Lock()
        # The rebalance generation and partitions of the last assignment: every table's
        # store asks for the same one, and it is carried out once.
        self._assigned: tuple[int, frozenset[int]] | None = None
        # A test's hook between a transaction's sends and its commit (a crash there),
        # given the transaction's id.
        self._before_commit = before_commit

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._routes)

    def producer_ids(self) -> set[int]:
        """The producer ids of the started producers: recovery reads what their next
        commit will make readable (processor/kafka/changelog.py)."""
        return {glue.producer_id(p) for p in self._producers.values()}

    @property
    def routes(self) -> dict[int, str]:
        """Each owned partition number's transactional id."""
        return dict(self._routes)

    async def assign(self, partitions: Iterable[int], generation: int | None = None) -> None:
        """Own exactly these partition numbers, each with newly started producers.

        A partition kept through the rebalance gets a new producer too: if this worker
        was a zombie, another took the partition over in between and fenced the old
        one, which could never commit again.
        """
        wanted = frozenset(partitions)
        async with self._lock:
            if generation is not None and self._assigned == (generation, wanted):
                return
            self._assigned = None if generation is None else (generation, wanted)
            await self._stop(set(self._producers))
            self._routes = {}
            routes, fenced = transaction_routes(self._app_id, wanted, self._partition_count)
            used = set(routes.values())
            for tid in sorted(fenced):
                # InitProducerId: bumps the epoch of this transactional id, fencing the
                # previous owner, and waits until its open transaction is aborted.
                await self._start(tid)
                if tid not in used:
                    # Only fenced: an earlier owner may have used it; this worker won't.
                    await self._stop({tid})
            self._routes = routes

    async def release(self, partitions: Iterable[int]) -> None:
        """Stop the producers of these partitions (a revoke): a round in flight ends first,
        and records staged for them afterwards are not produced, so the next owner's
        producer never fences a transaction of ours in the middle. A kept partition
        whose group's producer stopped goes on with its own until the next assignment."""
        async with self._lock:
            revoked = set(partitions) & set(self._routes)
            stopped = {self._routes.pop(p) for p in revoked}
            await self._stop(stopped)
            for p in sorted(p for p, tid in self._routes.items() if tid in stopped):
                tid = own_transactional_id(self._app_id, p)
                await self._start(tid)
                self._routes[p] = tid
            self._assigned = None

    async def stop(self) -> None:
        await self.assign(())

    async def _start(self, transactional_id: str) -> None:
        producer = self._make_producer(transactional_id)
        await producer.start()
        self._producers[transactional_id] = producer

    async def _stop(self, transactional_ids: Iterable[str]) -> None:
        for tid in sorted(transactional_ids):
            with contextlib.suppress(Exception):  # a fenced producer may refuse
                await self._producers.pop(tid).stop()

    async def publish(self, records: Sequence[Out]) -> None:
        async with self._lock:
            groups: dict[str, list[Out]] = defaultdict(list)
            unowned: dict[int, int] = defaultdict(int)
            routes = self._routes
            for r in records:
                tid = routes.get(r.owner)
                if tid is None:
                    unowned[r.owner] += 1
                else:
                    groups[tid].append(r)
            for partition, count in unowned.items():
                # Not (or no longer) ours: its new owner does this work again, and a
                # transaction under its ids from here would fence that owner. What
                # reaches here is a timer's tick staged before a rebalance moved the
                # partition; input records are flushed before a revoke.
                log.warning(
                    "dropped %d records for partition %d, which this worker no longer owns",
                    count,
                    partition,
                )
                metrics.UNOWNED_DROPPED.inc(count)
            # Raises the first failure; the caller treats the whole round as failed.
            if len(groups) == 1:
                # A worker owning every partition: no task and gather, two turns of the
                # loop fewer (docs/performance.md, "A round's transaction sent straight").
                [(tid, group)] = groups.items()
                await self._commit(tid, group)
            else:
                await asyncio.gather(*(self._commit(t, g) for t, g in groups.items()))

    async def _commit(self, transactional_id: str, records: list[Out]) -> None:
        producer = self._producers[transactional_id]
        if glue.speaks_v2(producer):
            batches = await self._sender.pack(producer, records)
            if batches is not None:
                try:
                    await glue.produce_round(producer, batches)
                except glue.RoundRefused:
                    pass  # aborted: sent again below, where refusals are handled
                else:
                    if self._before_commit is not None:
                        await self._before_commit(transactional_id)
                    await glue.end_round(producer, commit=True)
                    metrics.TRANSACTIONS.inc()
                    return
        await producer.begin_transaction()
        # A refusal for size leaves the transaction to be aborted and the records sent
        # again: a batch each for those of a topic partition where a batch of several
        # was refused (its topic takes less than when the worker started), then with
        # minimal rejections in place of lone records refused; the round fails if one
        # of those is refused.
        alone: frozenset[_TP] = frozenset()
        fallback = self.fallback
        while True:
            sent = await self._sender.send(producer, records, alone)
            try:
                outcome = await _outcome(sent, fallback, split=True)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.abort_transaction()
                raise
            if outcome.complete:
                break
            await producer.abort_transaction()
            for batch in outcome.refused:
                self._unnumber(producer, batch.topic, batch.partition, len(batch.members))
            await producer.begin_transaction()
            if outcome.crowded:
                alone |= outcome.crowded
            else:
                records = [outcome.stand_ins.get(id(r), r) for r in records]
                fallback = None
        if self._before_commit is not None:
            await self._before_commit(transactional_id)
        await producer.commit_transaction()
        metrics.TRANSACTIONS.inc()
