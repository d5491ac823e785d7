"""Fuzz a running `meter worker`: over 10,000 malformed records among valid traffic.

The malformed records (tests/support/malformed.py, seeded, every kind in equal shares,
including a few of 900 KB: just under the broker's 1 MB default) are interleaved with
a few hundred valid events on usage.calls, usage.conferencing and credits.commands.
Then: the worker is alive and ready, credits.rejected holds exactly one record per
malformed record (matched by source topic, partition and offset) with a reason the
defect allows, and every balance is what the valid events alone imply.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor.config.settings import Settings
from processor.core.dedupe import DedupeWindow
from processor.core.engine import Engine
from processor.core.state import RechargePolicy
from processor.core.stored import Position
from processor.kafka import glue
from processor.kafka.topics import TopicNames
from processor.kafka.usage_wire import read_call, read_conference
from processor.ops.reconcile import read_topic, reconcile
from processor.worker.sizing import MAX_REJECTED_PAYLOAD
from schemas import decode_command, parse_timestamp
from tests.integration.harness import Deployment, Worker, eventually
from tests.support import malformed
from tests.support.malformed import CALLS, COMMANDS, CONFERENCING, TENANTS, Malformed

pytestmark = pytest.mark.integration

MALFORMED = 10_200
LARGE = 5
LARGE_SIZE = 900_000
VALID_USAGE = 300
SEED = 20261125

Coords = tuple[str, int, int]


@pytest.fixture
async def deployment(kafka: Any, tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(kafka.bootstrap, tmp_path / "fuzz")
    d.root.mkdir(parents=True)
    workers: list[Worker] = []
    d.workers = workers
    yield d
    for w in workers:
        w.stop()
        print(f"--- worker {w.index} ---\n{w.log_tail(40)}")  # shown when the test failed


def valid_traffic(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """Funds and settings for every tenant, then usage with ~5% re-sent duplicates."""
    out: list[tuple[str, dict[str, Any]]] = []
    for t in TENANTS:
        out.append((COMMANDS, malformed.valid_command(rng, f"ok-f-{t}", t, ("funds_added",))))
        out.append(
            (COMMANDS, malformed.valid_command(rng, f"ok-a-{t}", t, ("auto_recharge_configured",)))
        )
    for n in range(VALID_USAGE):
        topic = CALLS if n % 4 else CONFERENCING
        out.append((topic, malformed.valid_body(rng, topic, f"ok-{n}", rng.choice(TENANTS))))
        if rng.random() < 0.05:
            out.append(out[-1])
    return out


def expected_balances(valid: list[tuple[str, dict[str, Any]]]) -> dict[str, Decimal]:
    """The balances the valid events alone imply, from the pure core."""
    decoders = {CALLS: read_call, CONFERENCING: read_conference, COMMANDS: decode_command}
    accounts: dict[str, Any] = {}
    engine = Engine(
        malformed.CARD, RechargePolicy(timedelta(hours=1)), DedupeWindow(7), accounts, {}
    )
    now = datetime.now(UTC)
    for offset, (topic, body) in enumerate(valid):
        event = decoders[topic](malformed.dumps(body))
        position = Position(f"{topic}:0", offset)
        if topic == COMMANDS:
            # arg-type: the decoder's union of commands/usage, split by topic here
            engine.command(event, topic, now, position)  # type: ignore[arg-type]
        else:
            # arg-type: the decoder's union of commands/usage, split by topic here
            engine.usage(event, topic, now, position)  # type: ignore[arg-type]
    return {t: a.account.balance for t, a in accounts.items()}


async def test_worker_rejects_every_malformed_record_once_and_keeps_exact_balances(
    deployment: Deployment,
) -> None:
    d = deployment
    worker = Worker(d, 0).start()
    d.workers.append(worker)
    await worker.wait_ready()

    rng = random.Random(SEED)
    bad = malformed.generate(MALFORMED - LARGE, SEED)
    huge = malformed.large_value((LARGE_SIZE,))
    for _ in range(LARGE):
        m = malformed.make(malformed.Kind("large_value", huge), rng)
        assert m.value is not None and MAX_REJECTED_PAYLOAD < len(m.value) <= LARGE_SIZE
        bad.append(m)
    rng.shuffle(bad)
    valid = valid_traffic(rng)
    # Valid events at random places among the malformed ones, in their own order.
    slots = sorted(rng.sample(range(len(bad) + len(valid)), len(valid)))
    stream: list[tuple[str, bytes | None, bytes | None, Malformed | None]] = []
    bad_iter, valid_iter = iter(bad), iter(valid)
    slot_set = set(slots)
    for i in range(len(bad) + len(valid)):
        if i in slot_set:
            topic, body = next(valid_iter)
            key = body["tenant_id"].encode() if rng.random() < 0.9 else None
            stream.append((topic, key, malformed.dumps(body), None))
        else:
            m = next(bad_iter)
            # aiokafka refuses a record with neither key nor value; an empty key is
            # as keyless for the processor (no tenant in it).
            key = b"" if m.key is None and m.value is None else m.key
            stream.append((m.topic, key, m.value, m))

    producer = AIOKafkaProducer(bootstrap_servers=d.bootstrap, linger_ms=5, acks="all")
    await producer.start()
    started = time.monotonic()
    try:
        futures = [
            (await producer.send(d.topic(topic), value, key=key), m)
            for topic, key, value, m in stream
        ]
        sent: dict[Coords, Malformed] = {}
        for fut, maybe in futures:
            meta = await fut
            if maybe is not None:
                sent[(meta.topic, meta.partition, meta.offset)] = maybe
    finally:
        await producer.stop()
    produced = time.monotonic() - started
    assert len(sent) == MALFORMED

    # Counting the end offsets is cheap; reading 10,000 records on every poll is not.
    consumer = AIOKafkaConsumer(bootstrap_servers=d.bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        topic = d.topic("credits.rejected")
        cluster = await glue.fetch_metadata(consumer)
        tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        assert tps, "the worker did not create credits.rejected"

        async def all_rejected() -> int | str:
            n = sum((await consumer.end_offsets(tps)).values())
            return n if n >= MALFORMED else f"not yet: {n} of {MALFORMED}"

        await eventually(all_rejected, timeout=150, interval=0.5, what="every rejection")
    finally:
        await consumer.stop()
    caught_up = time.monotonic() - started

    expected = expected_balances(valid)

    async def balances() -> dict[str, str] | None:
        got: dict[str, str] = {}
        for tenant in expected:
            status, body = await worker.get(f"/tenants/{tenant}/account")
            got[tenant] = body["balance"] if status == 200 else f"HTTP {status}"
        want = {t: format(b, "f") for t, b in expected.items()}
        return got if got == want else None

    await eventually(balances, timeout=60, what="balances the valid events imply")

    # Still alive and serving after all of it.
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    status, _ = await worker.get("/ready")
    assert status == 200

    rows = await read_topic(d.bootstrap, d.topic("credits.rejected"), within=60)
    rejected = [json.loads(r.value) for r in rows if r.value is not None]
    by_coords = Counter(
        (r["source_topic"], r["source_partition"], r["source_offset"]) for r in rejected
    )
    assert [c for c, n in by_coords.items() if n > 1] == [], "rejected more than once"
    assert set(by_coords) == set(sent), (
        f"missing {len(set(sent) - set(by_coords))}, extra {len(set(by_coords) - set(sent))}"
    )
    reasons: Counter[str] = Counter()
    truncated = 0
    for r in rejected:
        m = sent[(r["source_topic"], r["source_partition"], r["source_offset"])]
        assert r["reason"] in m.reasons, (m.kind, r["reason"], r["detail"])
        assert r["detail"]
        reasons[r["reason"]] += 1
        if r.get("payload_truncated"):
            truncated += 1
            assert m.value is not None and r["payload_size"] == len(m.value)
    assert truncated >= LARGE

    # Zero discrepancies between the inputs, the ledger and the live balances, and
    # nothing in the ledger caused by a malformed record.
    names = TopicNames.from_settings(
        Settings(_env_file=None, topic_prefix=d.prefix, app_id=d.app_id)
    )
    report = await reconcile(d.bootstrap, names, malformed.CARD, worker.url)
    assert report.discrepancies == 0, report.render()
    ledger = [json.loads(r.value) for r in await read_topic(d.bootstrap, names.ledger) if r.value]
    assert ledger and all(e["cause_id"].startswith("ok-") for e in ledger)

    stamps = sorted(parse_timestamp(r["rejected_at"]) for r in rejected)
    worker_span = max((stamps[-1] - stamps[0]).total_seconds(), 1e-3)
    print(
        f"\nmalformed records: {MALFORMED} ({LARGE} of {LARGE_SIZE} bytes) among "
        f"{len(valid)} valid; produced in {produced:.1f}s, all rejected {caught_up:.1f}s "
        f"after the first send\nrejection throughput: {MALFORMED / worker_span:.0f}/s in the "
        f"worker (first to last rejected_at, {worker_span:.1f}s), "
        f"{MALFORMED / caught_up:.0f}/s end to end\nby reason: {dict(reasons.most_common())}; "
        f"truncated payloads: {truncated}; crashes 0; ready 200; "
        f"reconcile discrepancies: {report.discrepancies}; tenants {len(expected)}"
    )
