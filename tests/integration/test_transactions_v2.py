"""The worker's producers speak Kafka's transactions v2 on a broker that has it, and the
first protocol on one that does not; either way a read_committed consumer sees the
committed transactions whole, in order, and nothing of the aborted ones."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.dev.kafka_local.broker import LocalKafka
from processor.ops.reconcile import read_topic
from processor.worker.publisher import transactional_producer
from processor.worker.sizing import Limits
from tests.integration.conftest import starts_own_brokers

PRODUCE, ADD_PARTITIONS_TO_TXN, END_TXN = 0, 24, 26
PARTITIONS = 3
TRANSACTIONS = 30


async def _rounds(bootstrap: str, topic: str, transactional_id: str) -> tuple[bool, Counter[int]]:
    """Commit TRANSACTIONS transactions of a record per partition, aborting every tenth;
    return whether the producer spoke v2 and the requests it sent meanwhile, by API key."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = transactional_producer(bootstrap, transactional_id, Limits().batch_bytes(), {})
    await producer.start()
    sent: Counter[int] = Counter()
    send = producer.client.send

    async def counted(node_id: int, request: Any, **kwargs: Any) -> Any:
        sent[request.API_KEY] += 1
        return await send(node_id, request, **kwargs)

    producer.client.send = counted
    try:
        for n in range(TRANSACTIONS):
            await producer.begin_transaction()
            for p in range(PARTITIONS):
                await producer.send(topic, f"{n}".encode(), partition=p)
            if n % 10 == 9:
                await producer.abort_transaction()
            else:
                await producer.commit_transaction()
        return producer.transactions_v2, sent
    finally:
        await producer.stop()


def _committed() -> list[bytes]:
    return [f"{n}".encode() for n in range(TRANSACTIONS) if n % 10 != 9]


async def test_a_transaction_is_a_produce_and_its_end_on_a_v2_cluster(
    kafka: Any, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("")
    v2, sent = await _rounds(kafka.bootstrap, topic, topic_name("tid"))
    assert v2
    # No AddPartitionsToTxn: each produce adds its partitions (and a new epoch each time
    # means fresh sequence numbers, which the broker took).
    assert sent[ADD_PARTITIONS_TO_TXN] == 0
    assert sent[END_TXN] == TRANSACTIONS
    assert sent[PRODUCE] >= TRANSACTIONS
    records = await read_topic(kafka.bootstrap, topic)
    for p in range(PARTITIONS):
        assert [r.value for r in records if r.partition == p] == _committed()


@starts_own_brokers
async def test_a_cluster_without_v2_gets_the_first_protocol(
    local_kafka_factory: Callable[..., LocalKafka], topic_name: Callable[[str], str]
) -> None:
    # A cluster whose operator kept transaction.version 1 (or one still rolling to 4.0).
    broker = local_kafka_factory(format_args=["--feature", "transaction.version=1"])
    broker.start()
    topic = topic_name("")
    v2, sent = await _rounds(broker.bootstrap, topic, topic_name("tid"))
    assert not v2
    assert sent[ADD_PARTITIONS_TO_TXN] >= TRANSACTIONS
    records = await read_topic(broker.bootstrap, topic)
    for p in range(PARTITIONS):
        assert [r.value for r in records if r.partition == p] == _committed()
