"""The bulk changelog read behind recovery, on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from processor.kafka import glue
from processor.kafka.changelog import ChangelogReader
from processor.worker.publisher import transactional_producer
from tests.integration.conftest import KafkaEndpoint

# NOT_LEADER_OR_FOLLOWER: a new topic's partition before the broker leads it.
NOT_LEADER = 6


async def _topic(bootstrap: str, name: str, partitions: int) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def _until_taken(
    producer: glue.TransactionsV2Producer, batches: Callable[[], list[glue.Batch]]
) -> None:
    """Send a round until the broker takes it. Right after a topic is created the broker
    may refuse produces to it (NOT_LEADER_OR_FOLLOWER) until its own metadata catches
    up; a refused round is aborted and wrote nothing, so it is sent again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await glue.produce_round(producer, batches())
            return
        except glue.RoundRefused as refused:
            if set(refused.errors.values()) != {NOT_LEADER} or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def test_reads_every_record_in_order_and_says_where_it_stopped(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    topic = await _topic(kafka.bootstrap, topic_name("changelog"), 3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        # Partition 0: a key written twice, then deleted; partition 1: 500 keys;
        # partition 2: empty.
        for value in (b"v1", b"v2", None):
            await producer.send_and_wait(topic, value, key=b"k", partition=0)
        for i in range(500):
            producer_batch = await producer.send(topic, b"%d" % i, key=b"t%d" % i, partition=1)
        await producer_batch
    finally:
        await producer.stop()

    seen: list[tuple[int, bytes | None, bytes | None]] = []
    reader = ChangelogReader(kafka.bootstrap, {}, within=60.0)
    read_to = await reader.read(
        [TP(topic, p) for p in range(3)], lambda p, k, v: seen.append((p, k, v))
    )

    assert read_to == {TP(topic, 0): 2, TP(topic, 1): 499, TP(topic, 2): -1}
    assert [(k, v) for p, k, v in seen if p == 0] == [(b"k", b"v1"), (b"k", b"v2"), (b"k", None)]
    assert [v for p, _, v in seen if p == 1] == [b"%d" % i for i in range(500)]
    assert all(p in (0, 1) for p, _, _ in seen)


async def test_reads_past_the_last_stable_offset_what_its_own_producers_left_open(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    """A transaction whose markers the broker lost (docs/guarantees.md) is, to a reader,
    a transaction still open: its records wait past the last stable offset. Those of the
    worker's own producers are read, for their next commit makes them readable; another
    producer's, and an aborted transaction's, are not."""
    topic = await _topic(kafka.bootstrap, topic_name("pending"), 2)
    producer = transactional_producer(kafka.bootstrap, topic_name("tid"), 100_000, {})
    await producer.start()
    try:

        def batches(values: dict[int, bytes]) -> list[glue.Batch]:
            out: list[glue.Batch] = []
            for partition, value in values.items():
                batch = producer.create_batch()
                batch.append(key=b"k%d" % partition, value=value, timestamp=None)
                out.append((topic, partition, batch))
            return out

        # Aborted, so nothing of it is ever read: it only waits until both are led.
        await _until_taken(producer, lambda: batches({0: b"warm-up", 1: b"warm-up"}))
        await glue.end_round(producer, commit=False)
        await glue.produce_round(producer, batches({0: b"committed"}))
        await glue.end_round(producer, commit=True)
        await glue.produce_round(producer, batches({0: b"aborted"}))
        await glue.end_round(producer, commit=False)
        # Left open: past the last stable offset, as a transaction without its markers.
        await glue.produce_round(producer, batches({0: b"open", 1: b"open too"}))
        own = glue.producer_id(producer)

        async def read(producers: set[int] | None) -> list[tuple[int, bytes | None]]:
            seen: list[tuple[int, bytes | None]] = []
            reader = ChangelogReader(
                kafka.bootstrap,
                {},
                within=30.0,
                producers=None if producers is None else (lambda: producers),
            )
            await reader.read(
                [TP(topic, 0), TP(topic, 1)], lambda p, _key, value: seen.append((p, value))
            )
            return sorted(seen)

        assert await read(None) == [(0, b"committed")]
        assert await read({own + 1}) == [(0, b"committed")]
        assert await read({own}) == [(0, b"committed"), (0, b"open"), (1, b"open too")]
        await glue.end_round(producer, commit=False)
    finally:
        await producer.stop()
