"""Consumers whose positions live in a database, beside what they wrote.

The ledger sink and the notifier write each batch's rows and the offsets it reached in
one database transaction, so a restart or a new owner of a partition resumes right
after what was written, whatever Kafka's group offsets say (those are committed for
lag monitoring only). `SeekToStored` is the rebalance listener that makes it so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

log = logging.getLogger(__name__)


class PositionStore(Protocol):
    async def positions(
        self, group: str, tps: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The next offset to read of each topic-partition the database knows of."""
        ...


class Positioned(Protocol):
    """A service consuming with its positions in the database (read-only here)."""

    @property
    def consumer(self) -> AIOKafkaConsumer: ...

    @property
    def store(self) -> PositionStore: ...

    @property
    def group(self) -> str: ...

    @property
    def writing(self) -> asyncio.Lock:
        """Held by the service while it writes a batch (rows and positions)."""
        ...

    @property
    def assigned_once(self) -> asyncio.Event:
        """Set after the first assignment's seeks: the service is ready from then on."""
        ...


class SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On every assignment, the positions the database holds (not Kafka's)."""

    def __init__(self, service: Positioned, name: str) -> None:
        self.service = service
        self.name = name

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Let a batch being written finish first, so the partitions' next owner
        # starts from its positions rather than reading it again (which would be
        # harmless: rows are keyed and positions never move back).
        async with self.service.writing:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        service = self.service
        tps: list[TopicPartition] = list(assigned)
        stored = await service.store.positions(
            service.group, [(tp.topic, tp.partition) for tp in tps]
        )
        fresh = []
        for tp in tps:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                fresh.append(tp)
            else:
                service.consumer.seek(tp, offset)
        if fresh:
            await service.consumer.seek_to_beginning(*fresh)
        log.info(
            "%s: assigned %d partitions; %d resume from the database's positions",
            self.name,
            len(tps),
            len(tps) - len(fresh),
        )
        service.assigned_once.set()
