"""The bulk changelog read behind recovery, on the real broker."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from processor.kafka.changelog import ChangelogReader
from tests.integration.conftest import KafkaEndpoint


async def test_reads_every_record_in_order_and_says_where_it_stopped(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("changelog")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
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
