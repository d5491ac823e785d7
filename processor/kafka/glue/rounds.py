"""A transaction v2 sent straight: its produce requests and EndTxn awaited in place.

Through aiokafka's producer a transaction's batches go into its accumulator, its sender
task wakes, starts a task for the produce, whose answer resolves each batch's future;
the commit wakes the sender again, which starts another task for EndTxn. About fifteen
turns of the event loop in a row, and in the worker each waits for whatever the loop is
doing (staging a fetch's records): the round's requests took three to four times as
long as the broker did (docs/performance.md, "A round's transaction sent straight").

Under transactions v2 a transaction is only its produce requests and EndTxn, and its
sequence numbers start from 0 under the epoch the last EndTxn returned, so nothing of
aiokafka's bookkeeping is needed between them: `produce_round` numbers the batches and
sends them to their leaders, `end_round` commits or aborts and takes the next epoch. The
producer's own transaction state stays idle throughout, so its usual path
(`begin_transaction`, `send_batch`, `commit_transaction`) can follow at any time, as
the publisher does after a refusal it has to handle record by record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.errors import ConcurrentTransactions, ProducerFenced, for_code
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.producer.transaction_manager import PidAndEpoch
from aiokafka.structs import TopicPartition

from processor.kafka.glue.transactions_v2 import (
    EndTxnV2,
    ProduceV2,
    TransactionsV2Producer,
    v1_code,
)

# Answered by the broker when it could not add a partition to the transaction (the
# last transaction's markers still being written there) or could not end it yet: sent
# again after aiokafka's BACKOFF_OVERRIDE, which the publisher sets (2 ms), as the v2
# sender's produce handler does.
_CONCURRENT = ConcurrentTransactions.errno
# The coordinator moved or is loading: found again, then sent again.
_COORDINATOR_MOVED = frozenset({14, 15, 16})
# INVALID_PRODUCER_EPOCH, as v1_code reads PRODUCER_FENCED: aiokafka raises ProducerFenced.
_FENCED = 47
# A record batch for a topic partition, as `AIOKafkaProducer.create_batch` builds it.
Batch = tuple[str, int, Any]


class Keyed(Protocol):
    """A record to produce, as `pack_group` reads it."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


# The C builder reads a record's headers from a list and keeps none: one empty list
# serves every record without headers.
_NO_HEADERS: list[tuple[str, bytes]] = []


def pack_group(
    producer: Any, topic: str, partition: int, records: Iterable[Keyed], into: list[Batch]
) -> bool:
    """Append one topic partition's records, in order, to record batches of
    `producer.create_batch()`, each batch to `into` as it fills, for `produce_round`.
    An empty batch takes any record, as `BatchBuilder.append`'s does (the broker may
    then refuse it); False if the builder refused one all the same (`into` then holds
    part of the group, and the caller sends the round the producer's own way).

    aiokafka's C builder (`BatchBuilder._builder`) is fed straight, and the batch told
    its count once: `BatchBuilder.append` costs two interpreted calls a record and
    serializes nothing here (the producer has no serializers).
    """
    batch = producer.create_batch()
    if batch._key_serializer is not None or batch._value_serializer is not None:
        raise TypeError("pack_group takes records already in bytes (no serializers)")
    append = batch._builder.append
    count = 0
    for r in records:
        headers = list(r.headers) if r.headers else _NO_HEADERS
        if append(count, None, key=r.key, value=r.value, headers=headers) is not None:
            count += 1
            continue
        if not count:
            return False  # larger than a whole batch
        batch._relative_offset = count  # full: the next one
        into.append((topic, partition, batch))
        batch = producer.create_batch()
        append = batch._builder.append
        if append(0, None, key=r.key, value=r.value, headers=headers) is None:
            return False
        count = 1
    batch._relative_offset = count
    into.append((topic, partition, batch))
    return True


class RoundRefused(Exception):
    """The broker refused batches of a round for a reason other than a concurrent
    transaction (too large, not the leader...). The round's transaction was aborted (or
    never begun): nothing of it is committed, and the producer can go on."""

    def __init__(self, errors: dict[TopicPartition, int]) -> None:
        super().__init__(f"batches refused: {errors}")
        self.errors = errors


async def produce_round(producer: TransactionsV2Producer, batches: Sequence[Batch]) -> None:
    """Produce a transaction's batches (several for a partition in their order), one batch
    a partition per request (an idempotent producer's produce may hold no more), each
    request to its partitions' leader. On a refusal the transaction is aborted and
    `RoundRefused` raised (`ProducerFenced` if another producer of the id fenced this
    one); on any other failure it is aborted if it can be, and the failure raised."""
    txn: Any = producer._txn_manager
    pid, epoch = txn.producer_id, txn.producer_epoch
    queued: dict[TopicPartition, list[bytes]] = {}
    sequence: dict[TopicPartition, int] = {}
    for topic, partition, batch in batches:
        tp = TopicPartition(topic, partition)
        base = sequence.get(tp, 0)
        batch._set_producer_state(pid, epoch, base)
        sequence[tp] = base + batch.record_count()
        queued.setdefault(tp, []).append(batch._build())
    leaders = await _leaders(producer, queued)
    if len(leaders) < len(queued):
        # Nothing sent: no transaction begun.
        raise RoundRefused({tp: -1 for tp in queued if tp not in leaders})
    try:
        while queued:
            heads = {tp: batches_.pop(0) for tp, batches_ in queued.items()}
            queued = {tp: rest for tp, rest in queued.items() if rest}
            by_leader: dict[int, dict[TopicPartition, bytes]] = {}
            for tp, data in heads.items():
                by_leader.setdefault(leaders[tp], {})[tp] = data
            refused: dict[TopicPartition, int] = {}
            if len(by_leader) == 1:  # one broker: no task and gather, two turns fewer
                [(node, sent)] = by_leader.items()
                refused.update(await _produce(producer, node, sent))
            else:
                for errors in await asyncio.gather(
                    *(_produce(producer, node, data) for node, data in by_leader.items())
                ):
                    refused.update(errors)
            if _FENCED in refused.values():
                raise ProducerFenced()  # another producer has the id now: no going on
            if refused:
                raise RoundRefused(refused)
    except BaseException:
        # Fenced or unreachable, the abort fails too: the failure above says what happened.
        with contextlib.suppress(Exception):
            await end_round(producer, commit=False)
        raise


async def _leaders(
    producer: TransactionsV2Producer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The partitions' leaders (the metadata of a topic not known yet asked for first),
    those known."""
    cluster = producer.client.cluster
    leaders = {tp: cluster.leader_for_partition(tp) for tp in partitions}
    for topic in {tp.topic for tp, leader in leaders.items() if leader is None}:
        await producer.partitions_for(topic)  # waits for the topic's metadata
    known = {tp: cluster.leader_for_partition(tp) for tp in leaders}
    return {tp: leader for tp, leader in known.items() if leader is not None and leader >= 0}


async def _produce(
    producer: TransactionsV2Producer, node: int, data: dict[TopicPartition, bytes]
) -> dict[TopicPartition, int]:
    """Produce these batches to their leader until each is appended or refused; the
    refused ones' error codes."""
    txn: Any = producer._txn_manager
    timeout_ms: int = producer._sender._request_timeout_ms
    deadline = time.monotonic() + timeout_ms / 1000
    refused: dict[TopicPartition, int] = {}
    while data:
        topics: dict[str, list[tuple[int, bytes]]] = {}
        for tp, batch in data.items():
            topics.setdefault(tp.topic, []).append((tp.partition, batch))
        request = ProduceV2(txn.transactional_id, -1, timeout_ms, list(topics.items()))
        response = await producer.client.send(node, request)
        again: dict[TopicPartition, bytes] = {}
        for topic, partitions, _tags in response.topics:
            for p, error, *_rest in partitions:
                if not error:
                    continue
                tp = TopicPartition(topic, p)
                if error == _CONCURRENT and time.monotonic() < deadline:
                    again[tp] = data[tp]
                else:
                    refused[tp] = v1_code(error)
        data = again
        if data:
            await asyncio.sleep(aiokafka_sender.BACKOFF_OVERRIDE)
    return refused


async def end_round(producer: TransactionsV2Producer, commit: bool) -> None:
    """Commit (or abort) the transaction `produce_round` began; the producer takes the
    id and epoch of its next one. Raises the broker's error as aiokafka's producer would
    (`ProducerFenced` for a fenced epoch)."""
    txn: Any = producer._txn_manager
    sender: Any = producer._sender
    deadline = time.monotonic() + sender._request_timeout_ms / 1000
    while True:
        node = await sender._find_coordinator(CoordinationType.TRANSACTION, txn.transactional_id)
        request = EndTxnV2(txn.transactional_id, txn.producer_id, txn.producer_epoch, commit)
        response = await producer.client.send(node, request, group=ConnectionGroup.COORDINATION)
        error = v1_code(response.error_code)
        if not error:
            txn._pid_and_epoch = PidAndEpoch(response.producer_id, response.producer_epoch)
            txn._sequence_numbers.clear()
            return
        if time.monotonic() >= deadline:
            break
        if error in _COORDINATOR_MOVED:
            sender._coordinator_dead(CoordinationType.TRANSACTION)
        elif error != _CONCURRENT:
            break
        await asyncio.sleep(aiokafka_sender.BACKOFF_OVERRIDE)
    if error == _FENCED:
        raise ProducerFenced()
    raise for_code(error)()
