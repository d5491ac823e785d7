"""How many ledger entries per second `meter ledger-sink` writes into each database.

    python -m bench.sink [--entries 50000] [--tenants 1000] [--partitions 6]

Starts a private Kafka broker and a private PostgreSQL server (tests/support/postgres.py),
produces N ledger entries in transactions of 1,000 (as the workers write them), then
for each backend (SQLite in a tmp dir, PostgreSQL) runs the sink's own consumer loop
(`processor.sink.service.LedgerSink`, the code `meter ledger-sink` runs) from an
empty database until every entry is a row. The clock runs from the consumer's start
(group join included) to the last batch's commit; `steady_entries_per_second` leaves
out the time to the first batch. Prints one JSON line per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.workload import create_topics
from processor.dev.kafka_local import LocalKafka
from processor.sink.service import LedgerSink, SinkTopics, group_id
from processor.sink.store import LedgerStore, database_url
from tests.support.ledger_records import LedgerStream
from tests.support.postgres import LocalPostgres


async def produce(bootstrap: str, topic: str, entries: int, tenants: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"bench-{uuid.uuid4().hex[:6]}"
    )
    await producer.start()
    try:
        stream = LedgerStream(tenants=tenants, seed=1)
        for start in range(0, entries, 1000):
            await producer.begin_transaction()
            for entry in stream.entries(min(1000, entries - start)):
                await producer.send(topic, entry.to_json(), key=entry.tenant_id.encode())
            await producer.commit_transaction()
    finally:
        await producer.stop()


async def drain(bootstrap: str, topics: SinkTopics, url: str, entries: int) -> dict[str, Any]:
    store = await LedgerStore.open(url)
    sink = LedgerSink(store, bootstrap, topics, group_id(f"bench-{uuid.uuid4().hex[:6]}"))
    stop = asyncio.Event()
    began = time.perf_counter()
    task = asyncio.create_task(sink.run(stop))
    first: tuple[float, int] | None = None
    try:
        while sink.stats.rows < entries:
            if first is None and sink.stats.rows:
                first = (time.perf_counter(), sink.stats.rows)
            if task.done():
                task.result()
                raise RuntimeError("the sink stopped early")
            await asyncio.sleep(0.01)
        ended = time.perf_counter()
        seconds = ended - began
        rows = await store.count("ledger")
        # Steady state: after the first batch (the group join and the first fetch).
        assert first is not None
        steady = (rows - first[1]) / (ended - first[0]) if ended > first[0] else 0.0
    finally:
        stop.set()
        await task
        await store.close()
    return {
        "entries": rows,
        "seconds": round(seconds, 2),
        "entries_per_second": round(rows / seconds),
        "steady_entries_per_second": round(steady),
        "batches": sink.stats.batches,
    }


async def main(entries: int, tenants: int, partitions: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    broker = LocalKafka(root / "kafka")
    await broker.astart()
    postgres = LocalPostgres().start()
    try:
        topics = SinkTopics(
            "bench.credits.ledger", "bench.credits.recharge-requests", "bench.credits.commands"
        )
        await create_topics(broker.bootstrap, list(topics.all()), partitions)
        t = time.perf_counter()
        await produce(broker.bootstrap, topics.ledger, entries, tenants)
        print(json.dumps({"produced": entries, "seconds": round(time.perf_counter() - t, 2)}))
        for backend, url in (
            ("sqlite", database_url(None, root / "sqlite")),
            ("postgresql", database_url(postgres.create_database(), root)),
        ):
            result = await drain(broker.bootstrap, topics, url, entries)
            print(json.dumps({"backend": backend, "partitions": partitions, **result}))
    finally:
        postgres.stop()
        await broker.astop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.tenants, args.partitions))
