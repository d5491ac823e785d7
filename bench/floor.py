"""The latency harness's own floor: a plain aiokafka relay in place of the worker.

    python -m bench.floor [--rate 1800] [--passes 2]

Item 3 of the benchmark times a usage record from the producer to its ledger entry
being readable. With the broker, the harness and the worker on the same two cores,
part of that is the path itself. Here one consumer reads the usage topics and, per
record, produces an entry carrying its `cause_id` to the ledger topic, nothing else;
`measures.latency` then times it exactly as it times the worker. The first pass warms
the broker's new topics up (its JIT, the log segments); the later ones are the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from bench import measures
from bench.workload import Workload, create_topics, producer
from processor.dev import simulator as sim
from processor.dev.kafka_local import LocalKafka

PARTITIONS = 12
EVENTS = 6000


async def relay(bootstrap: str, inputs: list[str], ledger: str, ready: asyncio.Event) -> None:
    """Each usage record becomes one ledger record naming it, as fast as plain aiokafka."""
    consumer = AIOKafkaConsumer(
        *inputs,
        bootstrap_servers=bootstrap,
        group_id=f"floor-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="latest",
        fetch_max_wait_ms=20,  # as the worker asks (processor/worker/consumer.py)
    )
    prod = producer(bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await prod.start()
    try:
        # Ready once the group gave this consumer its partitions and their "latest"
        # positions are resolved: a record sent before that would be skipped.
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        for tp in consumer.assignment():
            await consumer.position(tp)
        ready.set()
        while True:
            fetched = await consumer.getmany(timeout_ms=100)
            sends = []
            for records in fetched.values():
                for r in records:
                    entry = {"cause_id": orjson.loads(r.value).get("event_id")}
                    sends.append(await prod.send(ledger, orjson.dumps(entry), key=r.key))
            if sends:
                await asyncio.gather(*sends)
    finally:
        await consumer.stop()
        await prod.stop()


async def measure(rate: float, passes: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="floor-"))
    broker = LocalKafka(root / "kafka")
    await broker.astart()
    try:
        tag = uuid.uuid4().hex[:6]
        prefix = f"floor-{tag}."
        inputs = [prefix + t for t in (sim.USAGE_CALLS, sim.USAGE_CONFERENCING)]
        ledger = prefix + "credits.ledger"
        await create_topics(broker.bootstrap, [*inputs, ledger], PARTITIONS)
        ready = asyncio.Event()
        task = asyncio.create_task(relay(broker.bootstrap, inputs, ledger, ready))
        try:
            await asyncio.wait_for(ready.wait(), 60)
            work = Workload(10_000, seed=6, run_tag=tag)
            for n in range(passes):
                events = list(work.usage(EVENTS))
                lat = await measures.latency(
                    broker.bootstrap, prefix, ledger, events, rate, PARTITIONS
                )
                print(
                    f"pass {n + 1} at {rate:,.0f}/s: p50 {lat.p50_ms:.1f} p99 {lat.p99_ms:.1f} "
                    f"p99.9 {lat.p999_ms:.1f} ms (growth {lat.backlog_growth_ms:+.1f} ms)"
                )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await broker.astop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1800.0, help="events/s sent")
    parser.add_argument("--passes", type=int, default=2, help="timed passes (first warms)")
    args = parser.parse_args()
    asyncio.run(measure(args.rate, args.passes))


if __name__ == "__main__":
    main()
