"""The benchmark's input: a realistic usage mix over many tenants, preloaded once.

The records come from processor.dev.simulator's generators, so they are exactly the
contract JSON the telephony simulator sends (rateable numbers, realistic durations,
Zipf-like tenant popularity). Seeded, so two runs meter the same traffic.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.dev import simulator as sim
from processor.kafka.routing import partition_for

CURRENCY = "USD"  # the example rate card's currency
CONFERENCE_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class Event:
    topic: str  # logical, unprefixed
    key: bytes
    value: bytes
    event_id: str
    charged: bool  # a positive duration: the processor writes a ledger entry for it


class Workload:
    """Deterministic generator of setup commands and usage events."""

    def __init__(self, tenants: int, seed: int, run_tag: str) -> None:
        self.rng = random.Random(seed)
        self.tenants = sim.generate_tenants(tenants, self.rng)
        total = 0.0
        self._cum: list[float] = []
        for t in self.tenants:
            total += t.weight
            self._cum.append(total)
        self.run_tag = run_tag
        self._seq = 0

    def setup(self) -> list[Event]:
        """One manual top-up per tenant, so usage debits real balances."""
        now = datetime.now(UTC)
        out = []
        for t in self.tenants:
            self._seq += 1
            cid = f"adm-{self.run_tag}-{self._seq}"
            cmd = sim.make_funds_added(t.tenant_id, t.initial_funds, CURRENCY, now, cid)
            out.append(Event(sim.COMMANDS, t.tenant_id.encode(), sim.encode(cmd), cid, True))
        return out

    def usage(self, count: int) -> Iterator[Event]:
        rng = self.rng
        for _ in range(count):
            tenant = rng.choices(self.tenants, cum_weights=self._cum)[0]
            self._seq += 1
            eid = f"ev-{self.run_tag}-{self._seq}"
            # occurred_at is "now" so the dedupe window and event-lag metric see live traffic.
            now = datetime.now(UTC)
            if rng.random() < CONFERENCE_SHARE:
                topic = sim.USAGE_CONFERENCING
                event = sim.make_conference_usage(tenant, rng, now, eid)
            else:
                topic = sim.USAGE_CALLS
                event = sim.make_call_usage(tenant, rng, now, eid)
            yield Event(
                topic,
                tenant.tenant_id.encode(),
                sim.encode(event),
                eid,
                event["duration_seconds"] > 0,
            )


async def create_topics(
    bootstrap: str, names: list[str], partitions: int, *, compact: frozenset[str] = frozenset()
) -> None:
    """Create the topics up front: the worker would create them too, but only once it
    runs, and the preload must land on 12 partitions before it does."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                n,
                partitions,
                1,
                topic_configs={"cleanup.policy": "compact"} if n in compact else {},
            )
            for n in names
            if n not in existing
        ]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


def producer(bootstrap: str, **options: object) -> AIOKafkaProducer:
    # Big lingering batches: the preload is throughput, not latency.
    defaults: dict[str, object] = {
        "linger_ms": 20,
        "max_batch_size": 512 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "acks": 1,
    }
    defaults.update(options)
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **defaults)


async def produce_keyed(
    bootstrap: str, records: Iterable[tuple[str, bytes, bytes]], partitions: int
) -> None:
    """Produce (topic, key, value) records, each to its key's partition by the
    processor's own routing, waiting for acks every 20,000 records."""
    prod = producer(bootstrap)
    await prod.start()
    try:
        pending: list[asyncio.Future[object]] = []
        for topic, key, value in records:
            partition = partition_for(key.decode(), partitions)
            pending.append(await prod.send(topic, value, key=key, partition=partition))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await prod.stop()


async def preload(
    bootstrap: str, prefix: str, events: Iterator[Event] | list[Event], partitions: int
) -> dict[str, int]:
    """Produce every event, keyed and partitioned as the processor expects.

    The partition is chosen explicitly with the processor's own routing, so no record
    takes the reroute path (that would measure a different, rarer code path).
    """
    counts: dict[str, int] = {}

    def counted() -> Iterator[tuple[str, bytes, bytes]]:
        for ev in events:
            counts[ev.topic] = counts.get(ev.topic, 0) + 1
            yield prefix + ev.topic, ev.key, ev.value

    await produce_keyed(bootstrap, counted(), partitions)
    return counts


def clock() -> float:
    return time.perf_counter()
