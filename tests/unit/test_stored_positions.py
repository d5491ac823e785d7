"""The rebalance listener of the consumers whose positions live in a database (the
ledger sink, the notifier). Their integration tests run it against Kafka and
PostgreSQL; here, what it asks of the consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from processor.kafka.stored_positions import SeekToStored


class Consumer:
    def __init__(self) -> None:
        self.seeks: dict[TopicPartition, int] = {}
        self.from_beginning: list[TopicPartition] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.from_beginning.extend(tps)


class Store:
    def __init__(self, held: dict[tuple[str, str, int], int]) -> None:
        self.held = held

    async def positions(
        self, group: str, tps: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        return {(t, p): self.held[group, t, p] for t, p in tps if (group, t, p) in self.held}


@dataclass
class Service:
    consumer: Any
    store: Store
    group: str = "sink"
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    assigned_once: asyncio.Event = field(default_factory=asyncio.Event)


def seeker(consumer: Consumer, store: Store, writing: asyncio.Lock | None = None) -> SeekToStored:
    service = Service(consumer, store)
    if writing is not None:
        service.writing = writing
    return SeekToStored(service, "test")


async def test_an_assignment_resumes_where_the_database_says_and_reads_the_rest_anew() -> None:
    consumer = Consumer()
    # Another group's position for the same partition is not this one's.
    store = Store({("sink", "ledger", 0): 41, ("sink", "ledger", 2): 7, ("other", "ledger", 1): 99})
    listener = seeker(consumer, store)
    assigned = [TopicPartition("ledger", p) for p in range(3)]

    await listener.on_partitions_assigned(set(assigned))

    assert consumer.seeks == {assigned[0]: 41, assigned[2]: 7}
    assert consumer.from_beginning == [assigned[1]]
    assert listener.service.assigned_once.is_set()


async def test_a_revocation_waits_for_the_batch_being_written() -> None:
    writing = asyncio.Lock()
    listener = seeker(Consumer(), Store({}), writing)
    await writing.acquire()
    revoked = asyncio.create_task(listener.on_partitions_revoked(set()))
    await asyncio.sleep(0)
    assert not revoked.done()

    writing.release()
    await asyncio.wait_for(revoked, 1.0)


async def test_an_empty_assignment_still_makes_the_service_ready() -> None:
    consumer: Any = Consumer()
    listener = seeker(consumer, Store({}))
    await listener.on_partitions_assigned(set())
    assert listener.service.assigned_once.is_set()
    assert consumer.seeks == {} and consumer.from_beginning == []
