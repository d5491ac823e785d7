"""Faults, by force, on the real broker: the balances must still reconcile exactly.

The short forms run in CI; `METER_FAULT_CYCLES=20 make test-faults` runs the long form.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from processor.config.settings import Settings
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.kafka.topics import TopicNames
from processor.ops.reconcile import Report, read_topic, reconcile
from tests.integration.diagnose import explained
from tests.integration.harness import (
    Client,
    Deployment,
    InFlight,
    Worker,
    eventually,
    now_rfc3339,
    strike,
)

pytestmark = pytest.mark.integration

CYCLES = int(os.environ.get("METER_FAULT_CYCLES", "5"))
# A kill cycle (a random wait, then a restart until ready) takes about 8 s; the load is
# paced to last SECONDS_PER_CYCLE per cycle, so that every kill lands while records are
# in flight (each kill asserts it).
SECONDS_PER_CYCLE = 15
TENANTS = 200
DESTINATIONS = [
    "+14155550123",
    "+447700900123",
    "+442071234567",
    "+4915112345678",
    "+33612345678",
    "+61412345678",
    "+819012345678",
]


def traffic(events: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Usage for ~200 tenants with ~5% re-sent duplicates and a mix of commands."""
    rng = random.Random(seed)
    tenants = [f"t{i:03d}" for i in range(TENANTS)]
    now = now_rfc3339()
    out: list[tuple[str, dict[str, Any]]] = []
    for t in tenants:
        out.append(
            (
                "credits.commands",
                {
                    "type": "funds_added",
                    "command_id": f"open-{t}",
                    "tenant_id": t,
                    "occurred_at": now,
                    "amount": f"{rng.randint(5, 50)}.00",
                    "currency": "USD",
                    "source": "manual",
                },
            )
        )
        if rng.random() < 0.5:
            out.append(
                (
                    "credits.commands",
                    {
                        "type": "auto_recharge_configured",
                        "command_id": f"ar-{t}",
                        "tenant_id": t,
                        "occurred_at": now,
                        "enabled": True,
                        "recharge_amount": "25.00",
                        "trigger_balance": f"{rng.randint(2, 8)}.00",
                    },
                )
            )
    for n in range(events):
        t = (
            tenants[min(int(rng.paretovariate(1.2)) - 1, TENANTS - 1)]
            if rng.random() < 0.5
            else rng.choice(tenants)
        )
        if rng.random() < 0.02:
            out.append(
                (
                    "credits.commands",
                    {
                        "type": "funds_added",
                        "command_id": f"top-{n}",
                        "tenant_id": t,
                        "occurred_at": now,
                        "amount": "3.50",
                        "currency": "USD",
                        "source": "manual",
                    },
                )
            )
        elif rng.random() < 0.2:
            out.append(
                (
                    "usage.conferencing",
                    {
                        "event_id": f"cf-{n}",
                        "tenant_id": t,
                        "occurred_at": now,
                        "conference_id": "c",
                        "leg_type": "dial_out",
                        "number": "+14155550111",
                        "duration_seconds": rng.randint(0, 3600),
                    },
                )
            )
        else:
            out.append(
                (
                    "usage.calls",
                    {
                        "event_id": f"ev-{n}",
                        "tenant_id": t,
                        "occurred_at": now,
                        "call_id": f"k{n}",
                        "call_type": "outbound",
                        "source_number": "+14155550100",
                        "destination_number": rng.choice(DESTINATIONS),
                        "duration_seconds": rng.randint(0, 1200),
                    },
                )
            )
        if rng.random() < 0.05:
            out.append(out[-1])  # re-sent verbatim: a duplicate
    return out


@pytest.fixture
async def deployment(kafka: Any, tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(kafka.bootstrap, tmp_path / "d", partitions=4)
    d.root.mkdir(parents=True)
    d.workers = []
    yield d
    for w in d.workers:
        w.kill()
        print(f"--- worker {w.index} ---\n{w.log_tail(60)}")


async def produce(
    d: Deployment, records: list[tuple[str, dict[str, Any]]], per_second: float
) -> None:
    async with Client(d) as c:
        started = time.monotonic()
        for i, (topic, body) in enumerate(records):
            await c.send(topic, body)
            ahead = i / per_second - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)  # pacing the load, not waiting for readiness


async def reconciled(d: Deployment, url_of: Callable[[], str]) -> Report:
    cfg = Settings(_env_file=None, METER_TOPIC_PREFIX=d.prefix, METER_APP_ID=d.app_id)
    names = TopicNames.from_settings(cfg)
    card = load_rate_card(example_rate_card_path())
    last: list[Report] = []

    async def clean() -> Report | None:
        report = await reconcile(d.bootstrap, names, card, url_of())
        last[:] = [report]
        return report if report.discrepancies == 0 else None

    try:
        report: Report = await eventually(clean, timeout=180, interval=2, what="zero discrepancies")
        return report
    except AssertionError:
        failed = AssertionError(last[0].render() if last else "no report")
        raise await explained(d, failed) from None


async def one_request_per_tenant(d: Deployment) -> None:
    """No billing answers in these runs, so each tenant may have one request id at most."""
    ids: dict[str, set[str]] = defaultdict(set)
    import json

    for raw in await read_topic(d.bootstrap, d.topic("credits.recharge-requests")):
        body = json.loads(raw.value or b"{}")
        ids[body["tenant_id"]].add(body["request_id"])
    doubled = {t: v for t, v in ids.items() if len(v) > 1}
    assert not doubled, f"tenants with two recharge requests: {doubled}"


async def test_kill_9_at_random_moments_loses_and_doubles_nothing(deployment: Deployment) -> None:
    d = deployment
    worker = Worker(d, 0).start()
    d.workers.append(worker)
    await worker.wait_ready()
    records = traffic(events=6000, seed=11)
    per_second = min(400, len(records) / (CYCLES * SECONDS_PER_CYCLE))
    load = asyncio.create_task(produce(d, records, per_second=per_second))
    rng = random.Random(5)
    recoveries: list[float] = []
    strikes: list[InFlight] = []
    for n in range(CYCLES):
        await asyncio.sleep(rng.uniform(0.5, 2.5))  # a random moment to strike
        killed = await strike(d, worker.kill, total=len(records), what=f"kill -9 #{n + 1}")
        strikes.append(killed)
        restarted = time.monotonic()
        worker = Worker(d, 0).start()
        d.workers.append(worker)
        await worker.wait_ready()
        recoveries.append(time.monotonic() - restarted)
    await load
    report = await reconciled(d, lambda: worker.url)
    print(report.render())
    print(
        f"cycles: {CYCLES}, records sent: {len(records)} at {per_second:.0f}/s, "
        f"restart-to-ready seconds: {[round(r, 1) for r in recoveries]}, "
        f"at each kill: {[str(k) for k in strikes]}"
    )
    assert report.discrepancies == 0
    assert report.distinct_applied > 0 and report.ledger_entries == report.distinct_applied
    await one_request_per_tenant(d)


async def test_restart_with_an_empty_data_dir_continues_from_the_exact_balance(
    deployment: Deployment,
) -> None:
    d = deployment
    worker = Worker(d, 0).start()
    d.workers.append(worker)
    await worker.wait_ready()
    records = traffic(events=1500, seed=12)
    load = asyncio.create_task(produce(d, records, per_second=400))
    await asyncio.sleep(1.5)
    killed = await strike(d, worker.kill, total=len(records), what="kill -9")
    print(f"at the kill: {killed}")
    # As if on another machine: nothing local survives.
    import shutil

    shutil.rmtree(d.root / "worker-0", ignore_errors=True)
    worker = Worker(d, 0).start()
    d.workers.append(worker)
    await worker.wait_ready()
    await load
    report = await reconciled(d, lambda: worker.url)
    assert report.discrepancies == 0
