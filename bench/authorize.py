"""Latency of call authorization (GET /tenants/{id}/authorize) on one worker.

    python -m bench.authorize [--rate 1000] [--seconds 10] [--tenants 8]

Starts a local broker and one real `meter worker` (bench/worker.py), seeds a few
tenants with funds (and one exhausted), then sends `--rate` requests a second for
`--seconds` to 127.0.0.1 with aiohttp, open loop: request i is due at start + i/rate
and its latency is counted from then, so a slow answer delays no later request and
queueing in the client counts against the figure (no coordinated omission). One
second of the same load first warms up. Prints p50/p90/p99/max and the errors.
The load generator runs on the same machine as the worker and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.worker import BenchWorker
from processor.dev.kafka_local import LocalKafka
from schemas.types import format_timestamp

PARTITIONS = 2
# (service, number): +1 per minute, +447 per second with a connect fee, a toll-free
# dial-in, and a number no table rates (no_rate).
QUERIES = (
    ("outbound", "%2B14155550100"),
    ("outbound", "%2B447700900123"),
    ("conferencing_toll_free_dial_in", "%2B18005550100"),
    ("conferencing_dial_out", "%2B14155550100"),
    ("toll_free_inbound", "%2B14155550100"),
)


def log(message: str) -> None:
    print(f"[bench.authorize] {message}", flush=True)


async def seed(bootstrap: str, prefix: str, tenants: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        now = format_timestamp(datetime.now(UTC))
        for i, tenant in enumerate(tenants):
            # The last tenant gets a cent less than a minute of +1: exhausted answers.
            amount = "0.0100" if i == len(tenants) - 1 else f"{10 + i}.0000"
            command = {
                "type": "funds_added",
                "command_id": f"seed-{tenant}",
                "tenant_id": tenant,
                "occurred_at": now,
                "amount": amount,
                "currency": "USD",
                "source": "manual",
            }
            await producer.send_and_wait(
                prefix + "credits.commands", json.dumps(command).encode(), key=tenant.encode()
            )
    finally:
        await producer.stop()


async def wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def load(
    http: aiohttp.ClientSession, url: str, tenants: list[str], rate: float, seconds: float
) -> tuple[list[float], dict[str, int]]:
    """Open-loop load: latencies (s) of every request, and counts per outcome."""
    total = int(rate * seconds)
    latencies: list[float] = []
    outcomes: dict[str, int] = {}

    async def one(i: int, due: float) -> None:
        tenant = tenants[i % len(tenants)]
        service, number = QUERIES[i % len(QUERIES)]
        path = f"/tenants/{tenant}/authorize?service={service}&number={number}"
        try:
            async with http.get(url + path) as resp:
                body = await resp.read()
                key = str(resp.status)
                if resp.status == 200:
                    answer = json.loads(body)
                    key = "allowed" if answer["allowed"] else answer["reason"]
        except (aiohttp.ClientError, TimeoutError) as exc:
            key = type(exc).__name__
        latencies.append(time.perf_counter() - due)
        outcomes[key] = outcomes.get(key, 0) + 1

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return latencies, outcomes


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    broker = LocalKafka(root / "kafka")
    await broker.astart()
    worker: BenchWorker | None = None
    try:
        app_id = f"bench-authorize-{uuid.uuid4().hex[:6]}"
        prefix = f"{app_id}."
        worker = BenchWorker(broker.bootstrap, app_id, prefix, PARTITIONS, root)
        worker.start()
        url = f"http://127.0.0.1:{worker.port}"
        tenants = [f"tenant-{i}" for i in range(args.tenants)]
        connector = aiohttp.TCPConnector(limit=args.connections)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def ready() -> bool:
                assert worker is not None
                worker.check_alive()
                try:
                    async with http.get(url + "/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, 120, "the worker to be ready")
            await seed(broker.bootstrap, prefix, tenants)

            async def seeded() -> bool:
                for tenant in tenants:
                    async with http.get(f"{url}/tenants/{tenant}/account") as resp:
                        if resp.status != 200:
                            return False
                return True

            await wait_for(seeded, 60, "the seeded tenants")
            log(f"worker ready, {len(tenants)} tenants seeded; warming up")
            await load(http, url, tenants, args.rate, 1.0)
            log(f"measuring: {args.rate:g} requests/s for {args.seconds:g} s")
            latencies, outcomes = await load(http, url, tenants, args.rate, args.seconds)
        latencies.sort()
        ms = [v * 1000 for v in latencies]
        result = {
            "rate": args.rate,
            "seconds": args.seconds,
            "requests": len(ms),
            "outcomes": dict(sorted(outcomes.items())),
            "p50_ms": round(percentile(ms, 0.50), 2),
            "p90_ms": round(percentile(ms, 0.90), 2),
            "p99_ms": round(percentile(ms, 0.99), 2),
            "max_ms": round(ms[-1], 2),
            "mean_ms": round(statistics.fmean(ms), 2),
        }
        return result
    finally:
        if worker is not None:
            worker.stop()
        await broker.astop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.authorize", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to measure")
    parser.add_argument("--tenants", type=int, default=8, help="tenants to seed")
    parser.add_argument("--connections", type=int, default=64, help="client connection pool")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-authorize-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(result, indent=2))
    print(
        f"authorize at {result['rate']:g} req/s: p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms ({result['requests']} requests)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
