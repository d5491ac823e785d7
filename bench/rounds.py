"""What one produce round costs the worker's process, by how many records it carries.

    python -m bench.rounds

A flusher round (processor/worker/flusher.py) is one `KafkaPublisher.publish` over every
partition its records touch: a ledger entry, an account value and a dedupe mark per
record land on three topics of 12 partitions each. This publishes rounds of a given
size spread over 3 x 12 partitions on a private broker and reports this process's CPU
per round and per record: the fixed part is why a busy worker should send few, large
rounds. Not part of `make bench`; the figures are in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.workload import create_topics, producer
from processor.dev.kafka_local import LocalKafka
from processor.worker.publisher import KafkaPublisher
from processor.worker.records import Out

TOPICS = ("rounds.a", "rounds.b", "rounds.c")
PARTITIONS = 12
SIZES = (3, 36, 120, 400, 1200)


async def measure() -> None:
    root = Path(tempfile.mkdtemp(prefix="rounds-"))
    broker = LocalKafka(root / "kafka")
    await broker.astart()
    try:
        await create_topics(broker.bootstrap, list(TOPICS), PARTITIONS)
        # As the worker's producer: acks=all, no linger.
        prod = producer(broker.bootstrap, acks="all", linger_ms=0)
        await prod.start()
        try:
            pub = KafkaPublisher(lambda: prod)
            for size in SIZES:
                records = [
                    Out(TOPICS[i % 3], b"k%d" % i, b"x" * 200, partition=(i // 3) % PARTITIONS)
                    for i in range(size)
                ]
                for _ in range(20):  # warm-up: metadata, connections, the broker's JIT
                    await pub.publish(records)
                rounds = 200 if size < 1000 else 50
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(rounds):
                    await pub.publish(records)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                print(
                    f"{size:5d} records/round: {1000 * cpu / rounds:5.2f} CPU ms per round, "
                    f"{1000 * wall / rounds:5.2f} ms wall, {1e6 * cpu / rounds / size:6.1f} us "
                    "CPU per record"
                )
        finally:
            await prod.stop()
    finally:
        await broker.astop()


if __name__ == "__main__":
    asyncio.run(measure())
