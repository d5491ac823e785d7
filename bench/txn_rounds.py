"""Transactions as the worker's flusher commits them, in isolation from the worker.

    python -m bench.txn_rounds [seconds] [events/s]

Events arrive at a fixed rate spread over 12 partitions; 12 transactional producers
(one per partition, as `TransactionalPublisher`) land them, each transaction writing
the partition's events to three topics (ledger, changelog, marks), either in rounds
that start together once the slowest committed ("together", the worker's flusher), or
in a chain per partition that goes on as soon as its own commit landed ("chains", the
design tried in issue 19). Reports each mode's latency from arrival to commit, the
transactions a second and this process's and the broker's CPU. Not part of
`make bench`; the figures are in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import procstat
from bench.standalone import on_private_broker
from processor.dev.kafka_local import LocalKafka
from processor.worker.publisher import TXN_RETRY_BACKOFF_SECONDS

PARTITIONS = 12
TOPICS = ("txn.ledger", "txn.state", "txn.marks")


async def measure(broker: LocalKafka, seconds: float, rate: float) -> None:
    from aiokafka.producer import sender

    sender.BACKOFF_OVERRIDE = TXN_RETRY_BACKOFF_SECONDS  # as the worker sets it
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in TOPICS])
    await admin.close()
    producers = []
    for p in range(PARTITIONS):
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, transactional_id=f"txn-rounds-{p}"
        )
        await producer.start()
        producers.append(producer)
    assert broker.pid is not None
    for mode in ("together", "together", "chains", "together", "chains"):  # 1st: warm-up
        await run(mode, producers, broker.pid, seconds, rate)
    for producer in producers:
        await producer.stop()


async def run(
    mode: str, producers: list[AIOKafkaProducer], broker_pid: int, seconds: float, rate: float
) -> None:
    queues: list[list[float]] = [[] for _ in range(PARTITIONS)]
    latencies: list[float] = []
    transactions = 0
    end = time.perf_counter() + seconds

    async def commit(p: int, arrived: list[float]) -> None:
        nonlocal transactions
        transactions += 1
        producer = producers[p]
        await producer.begin_transaction()
        futures = []
        for topic in TOPICS:
            batch = producer.create_batch()
            for _ in arrived:
                batch.append(key=b"k", value=b"x" * 200, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
        await producer.commit_transaction()
        now = time.perf_counter()
        latencies.extend((now - a) * 1000 for a in arrived)

    async def arrive() -> None:
        start, i = time.perf_counter(), 0
        while time.perf_counter() < end:
            delay = start + i / rate - time.perf_counter()
            if delay > 0.001:
                await asyncio.sleep(delay)
            queues[i % PARTITIONS].append(time.perf_counter())
            i += 1

    def take(p: int) -> list[float]:
        taken, queues[p] = queues[p], []
        return taken

    async def together() -> None:
        while time.perf_counter() < end or any(queues):
            ready = [p for p in range(PARTITIONS) if queues[p]]
            if not ready:
                await asyncio.sleep(0.0005)
                continue
            await asyncio.gather(*(commit(p, take(p)) for p in ready))

    async def chain(p: int) -> None:
        while time.perf_counter() < end or queues[p]:
            if not queues[p]:
                await asyncio.sleep(0.0005)
                continue
            await commit(p, take(p))

    cpu, broker_cpu, wall = (
        time.process_time(),
        procstat.cpu_seconds(broker_pid),
        time.perf_counter(),
    )
    if mode == "together":
        await asyncio.gather(arrive(), together())
    else:
        await asyncio.gather(arrive(), *(chain(p) for p in range(PARTITIONS)))
    wall = time.perf_counter() - wall
    cpu = (time.process_time() - cpu) / wall
    broker_cpu = (procstat.cpu_seconds(broker_pid) - broker_cpu) / wall
    lat = sorted(latencies)
    n = len(lat)
    print(
        f"{mode:8s} at {rate:,.0f}/s: arrival to commit p50 {statistics.median(lat):5.1f} "
        f"p99 {lat[int(0.99 * n)]:6.1f} p99.9 {lat[int(0.999 * n)]:6.1f} ms; "
        f"{transactions / wall:5.1f} transactions/s, {n / transactions:4.1f} events each; "
        f"CPU (cores) here {cpu:.2f}, broker {broker_cpu:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    seconds = float(args[0]) if args else 8.0
    rate = float(args[1]) if len(args) > 1 else 3000
    on_private_broker("txn-rounds-", lambda broker, _tag, _root: measure(broker, seconds, rate))
