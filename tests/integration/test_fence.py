"""The group fence (processor/kafka/fence.py) against the real broker: the group refuses
a transaction committed as a member it has moved on from, and a worker assigned a
partition waits until no transaction that could still write its state is open."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.kafka import glue
from processor.kafka.fence import GroupFence, GroupFenced
from tests.integration.harness import eventually


@dataclass
class Rig:
    fence: GroupFence
    producer: AIOKafkaProducer
    transactional_id: str
    member: tuple[int, str]
    state: str


@pytest.fixture
async def rig(kafka: Any) -> AsyncIterator[Rig]:
    tag = uuid.uuid4().hex[:8]
    source, fence_topic, state = f"in-{tag}", f"fence-{tag}", f"state-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 2, 1) for t in (source, fence_topic, state)])
    finally:
        await admin.close()
    group = f"group-{tag}"
    # A real member of the group: the fence is checked against its generation.
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()

    async def joined() -> bool:
        await consumer.getmany(timeout_ms=200)
        return bool(consumer.assignment())

    await eventually(joined, timeout=30, what="the consumer in its group")
    member = glue.consumer_member(consumer)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=f"t-{tag}")
    await producer.start()
    try:
        yield Rig(
            GroupFence(group, fence_topic, (state,), glue.producer_identity),
            producer,
            f"t-{tag}",
            member,
            state,
        )
    finally:
        await producer.stop()
        await consumer.stop()


async def _open_transaction(rig: Rig, partition: int, fenced: bool) -> None:
    await rig.producer.begin_transaction()
    if fenced:
        await rig.fence.enlist(rig.producer, rig.transactional_id)
    await (await rig.producer.send(rig.state, b"value", partition=partition))
    if fenced:
        await rig.fence.commit(rig.producer, rig.transactional_id, rig.member, [partition])


async def test_a_transaction_of_the_current_member_commits(rig: Rig) -> None:
    await _open_transaction(rig, 0, fenced=True)
    await rig.producer.commit_transaction()


async def test_the_group_refuses_a_member_of_an_older_generation(rig: Rig) -> None:
    await rig.producer.begin_transaction()
    await rig.fence.enlist(rig.producer, rig.transactional_id)
    await (await rig.producer.send(rig.state, b"late", partition=0))
    generation, member_id = rig.member
    with pytest.raises(GroupFenced):
        await rig.fence.commit(rig.producer, rig.transactional_id, (generation + 1, member_id), [0])
    with pytest.raises(GroupFenced):
        await rig.fence.commit(rig.producer, rig.transactional_id, (generation, "gone"), [0])
    await rig.producer.abort_transaction()


@pytest.mark.parametrize("fenced", [True, False], ids=["fence-offsets-pending", "records-open"])
async def test_an_assignment_waits_until_the_open_transaction_ends(rig: Rig, fenced: bool) -> None:
    await _open_transaction(rig, 1, fenced=fenced)
    waiting = asyncio.ensure_future(rig.fence.settled(rig.producer, {1}))
    # Still waiting after a few of its polls: the transaction could still commit.
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done
    await rig.producer.commit_transaction()
    await asyncio.wait_for(waiting, timeout=10)


async def test_an_assignment_does_not_wait_for_other_partitions(rig: Rig) -> None:
    await _open_transaction(rig, 1, fenced=True)
    await asyncio.wait_for(rig.fence.settled(rig.producer, {0}), timeout=10)
    await rig.producer.abort_transaction()
