"""A round's transaction sent straight (processor/kafka/glue/rounds.py): read whole by a
read_committed consumer, numbered right when a partition has several batches, aborted
whole on a refusal, fenced by a new producer of its id, and followed by the producer's
own path at any time."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ProducerFenced
from aiokafka.structs import TopicPartition

from processor.kafka import glue
from processor.ops.reconcile import read_topic
from processor.worker.publisher import TransactionalPublisher, transactional_producer
from processor.worker.records import Out

PARTITIONS = 3
# Small batches, so that a round's records for a partition take several.
BATCH_BYTES = 2_000


async def _topic(bootstrap: str, name: str, **configs: str) -> str:
    """A new topic whose partitions' leaders answer: a round sent straight to a leader
    not ready yet is refused (the producer's own path, which the publisher falls back
    to, waits for it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1, topic_configs=configs)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        # Answered by each partition's leader (aiokafka retries until it is).
        await consumer.end_offsets([TopicPartition(name, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return name


@pytest.fixture
def tid(topic_name: Callable[[str], str]) -> str:
    return topic_name("tid")


@pytest.fixture
async def producer(kafka: Any, tid: str) -> AsyncIterator[Any]:
    made = transactional_producer(kafka.bootstrap, tid, BATCH_BYTES, {})
    await made.start()
    assert made.transactions_v2
    try:
        yield made
    finally:
        await made.stop()


def _batches(producer: Any, topic: str, values: dict[int, list[bytes]]) -> list[glue.Batch]:
    """Each partition's values in as many batches as they take, in order."""
    out: list[glue.Batch] = []
    for partition, vals in values.items():
        batch = producer.create_batch()
        for v in vals:
            if batch.append(key=None, value=v, timestamp=None) is None:
                out.append((topic, partition, batch))
                batch = producer.create_batch()
                assert batch.append(key=None, value=v, timestamp=None) is not None
        out.append((topic, partition, batch))
    return out


def _values(round_: int, partition: int, count: int) -> list[bytes]:
    return [f"{round_}.{partition}.{i}".encode() + b"x" * 100 for i in range(count)]


async def _by_partition(bootstrap: str, topic: str) -> dict[int, list[bytes | None]]:
    records = await read_topic(bootstrap, topic)  # read_committed
    return {p: [r.value for r in records if r.partition == p] for p in range(PARTITIONS)}


async def test_rounds_sent_straight_and_through_aiokafka_alternate_and_read_whole(
    kafka: Any, topic_name: Callable[[str], str], producer: Any
) -> None:
    topic = await _topic(kafka.bootstrap, topic_name(""))
    expected: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for n in range(6):
        # 40 records of ~110 bytes a partition: several 2,000-byte batches each.
        values = {p: _values(n, p, 40) for p in range(PARTITIONS)}
        if n % 2 == 0:
            batches = _batches(producer, topic, values)
            assert len(batches) > PARTITIONS
            await glue.produce_round(producer, batches)
            await glue.end_round(producer, commit=True)
        else:  # the producer's own path, under the epoch the last EndTxn returned
            await producer.begin_transaction()
            for p, vals in values.items():
                for v in vals:
                    await producer.send(topic, v, partition=p)
            await producer.commit_transaction()
        for p in range(PARTITIONS):
            expected[p] += values[p]
    # An aborted round straight: nothing of it is read.
    await glue.produce_round(producer, _batches(producer, topic, {0: _values(9, 0, 5)}))
    await glue.end_round(producer, commit=False)
    assert await _by_partition(kafka.bootstrap, topic) == expected


async def test_a_refused_batch_aborts_the_whole_round_and_the_producer_goes_on(
    kafka: Any, topic_name: Callable[[str], str], producer: Any
) -> None:
    # Partition 2 of the round gets a batch larger than this topic takes.
    small = await _topic(kafka.bootstrap, topic_name("small"), **{"max.message.bytes": "1000"})
    batches = _batches(producer, small, {0: _values(0, 0, 2), 1: _values(0, 1, 2)})
    big = producer.create_batch()
    for v in _values(0, 2, 12):
        assert big.append(key=None, value=v, timestamp=None) is not None
    with pytest.raises(glue.RoundRefused) as refused:
        await glue.produce_round(producer, [*batches, (small, 2, big)])
    assert {(tp.topic, tp.partition) for tp in refused.value.errors} == {(small, 2)}
    # The batches of partitions 0 and 1 were appended, and aborted with the round.
    after = _batches(producer, small, {0: _values(1, 0, 2), 2: _values(1, 2, 2)})
    await glue.produce_round(producer, after)
    await glue.end_round(producer, commit=True)
    assert await _by_partition(kafka.bootstrap, small) == {
        0: _values(1, 0, 2),
        1: [],
        2: _values(1, 2, 2),
    }


async def test_a_new_producer_of_the_id_fences_a_round_sent_straight(
    kafka: Any, topic_name: Callable[[str], str], producer: Any, tid: str
) -> None:
    topic = await _topic(kafka.bootstrap, topic_name(""))
    await glue.produce_round(producer, _batches(producer, topic, {0: _values(0, 0, 3)}))
    successor = transactional_producer(kafka.bootstrap, tid, BATCH_BYTES, {})
    await successor.start()  # aborts the round left open, and fences its producer
    try:
        with pytest.raises(ProducerFenced):
            await glue.end_round(producer, commit=True)
        with pytest.raises(ProducerFenced):
            await glue.produce_round(producer, _batches(producer, topic, {1: _values(1, 1, 3)}))
        await glue.produce_round(successor, _batches(successor, topic, {2: _values(2, 2, 3)}))
        await glue.end_round(successor, commit=True)
    finally:
        await successor.stop()
    assert await _by_partition(kafka.bootstrap, topic) == {0: [], 1: [], 2: _values(2, 2, 3)}


async def test_the_publisher_sends_rounds_straight_and_falls_back_on_a_refusal(
    kafka: Any, topic_name: Callable[[str], str]
) -> None:
    # A round whose batch of several records the topic refuses as too large: the
    # publisher's straight round is aborted, and its own path sends the partition's
    # records a batch each (processor/worker/publisher.py); every round commits once.
    small = await _topic(kafka.bootstrap, topic_name("small"), **{"max.message.bytes": "1000"})
    made: dict[str, Any] = {}

    def make(tid: str) -> Any:
        made[tid] = transactional_producer(kafka.bootstrap, tid, BATCH_BYTES, {})
        return made[tid]

    pub = TransactionalPublisher(topic_name("app"), make, partitions=PARTITIONS)
    await pub.assign(range(PARTITIONS), generation=1)
    sent: Counter[str] = Counter()
    try:
        # Every partition number owned: one producer, the group of all of them.
        [tid] = set(pub.routes.values())
        producer = made[tid]
        send = producer.client.send

        async def counted(node_id: int, request: Any, **kwargs: Any) -> Any:
            sent[type(request).__name__] += 1
            return await send(node_id, request, **kwargs)

        producer.client.send = counted
        rounds = [
            {p: _values(n, p, 12 if (n, p) == (1, 2) else 2) for p in range(PARTITIONS)}
            for n in range(3)
        ]
        for values in rounds:
            await pub.publish(
                [Out(small, None, v, partition=p, owner=p) for p, vs in values.items() for v in vs]
            )
    finally:
        await pub.stop()
    # Rounds 0 and 2 straight. Round 1 straight and aborted, then through aiokafka's
    # path: refused and aborted again, then committed with the refused partition's
    # records a batch each.
    assert sent["EndTxnV2"] == 5
    assert await _by_partition(kafka.bootstrap, small) == {
        p: [v for values in rounds for v in values[p]] for p in range(PARTITIONS)
    }
