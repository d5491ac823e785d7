"""Hostile input on the real broker: every record it accepted ends applied or rejected.

Keys and values at the broker's maximum on every input topic, a 600 KB key with the
value `not json`, a ~900 KB valid call (an unknown `padding` field) under a wrong key,
a value at the maximum under a wrong key (its re-route cannot fit), an event dated
8999-12-31, one older than the dedupe window, and a key named twice, all on the good
tenant's partition of each input topic. Then the good tenant's ordinary records on
the same partitions must be applied: nothing stalled the partition. Finally
`meter replay-rejected --force-too-old` applies the too-old event on the operator's
word. And a rejection the broker refuses for its size becomes a minimal one.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from processor.config.settings import Settings
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.ops.replay import replay_rejected
from schemas.types import format_timestamp
from tests.integration.harness import Client, Deployment, Worker, eventually
from tests.integration.test_fuzz_worker import expected_balances
from tests.support import malformed
from tests.support.malformed import CALLS, COMMANDS, CONFERENCING

pytestmark = pytest.mark.integration

PARTITIONS = 4
GOOD = "hostile-good"
# The worker's producer takes at most 1,000,000 bytes a record (Faust's default).
WORKER_MAX_REQUEST = 1_000_000


def _tenant_not_on(partition: int, prefix: str) -> str:
    for i in range(100):
        tenant = f"{prefix}-{i}"
        if partition_for(tenant, PARTITIONS) != partition:
            return tenant
    raise AssertionError("no tenant off the partition")


HOME = partition_for(GOOD, PARTITIONS)
AWAY = _tenant_not_on(HOME, "hostile-away")
BIG = _tenant_not_on(HOME, "hostile-big")


@pytest.fixture
async def deployment(kafka: Any, tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(kafka.bootstrap, tmp_path / "hostile", partitions=PARTITIONS)
    d.root.mkdir(parents=True)
    workers: list[Worker] = []
    d.workers = workers
    yield d
    for w in workers:
        w.stop()
        print(f"--- worker {w.index} ---\n{w.log_tail(60)}")  # shown when the test failed


async def max_message_bytes(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})]
        )
        return int({e[0]: e[1] for r in response.resources for e in r[4]}["max.message.bytes"])
    finally:
        await admin.close()


def size(key: bytes | None, value: bytes | None) -> int:
    n: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
    return n


def at_most(limit: int, key: bytes | None, make: Any) -> bytes:
    """The largest `make(n)` whose record with `key` stays within `limit` bytes."""
    n = limit - size(key, b"")
    while size(key, make(n)) > limit:
        n -= 1
    value: bytes = make(n)
    return value


def body(topic: str, ident: str, tenant: str, **extra: Any) -> dict[str, Any]:
    now = format_timestamp(datetime.now(UTC).replace(microsecond=0))
    rng = random.Random(ident)
    b = malformed.valid_body(rng, topic, ident, tenant, ("funds_added",))
    b["occurred_at"] = now
    if topic != COMMANDS:
        b["duration_seconds"] = 120
    return {**b, **extra}


def padded(topic: str, ident: str, tenant: str) -> Any:
    base = malformed.dumps(body(topic, ident, tenant, padding=""))

    def make(n: int) -> bytes:
        return malformed.dumps(body(topic, ident, tenant, padding="p" * max(0, n - len(base))))

    return make


async def test_no_record_the_broker_accepted_stalls_a_partition(deployment: Deployment) -> None:
    d = deployment
    worker = Worker(d, 0).start()
    d.workers.append(worker)
    await worker.wait_ready()
    limit = await max_message_bytes(d.bootstrap, d.topic(CALLS))

    # (topic, key, value, reasons it may end with; empty: applied)
    hostile: list[tuple[str, bytes | None, bytes, set[str], str]] = []
    for topic in (CALLS, CONFERENCING, COMMANDS):
        short = topic.split(".")[-1]
        key: bytes | None = at_most(limit, None, lambda n: b"K" * n)[: -len(b"not json") - 8]
        hostile.append((topic, key, b"not json", {"invalid_json"}, f"{short}: key at max"))
        wrong = b"wrong-key"
        value = at_most(limit, wrong, padded(topic, f"h-max-{short}", AWAY))
        hostile.append((topic, wrong, value, {"too_large"}, f"{short}: value at max, wrong key"))
        value = at_most(limit, GOOD.encode(), lambda n: b"\x01" * n)
        hostile.append((topic, GOOD.encode(), value, {"invalid_json"}, f"{short}: value at max"))
    hostile.append((CALLS, b"W" * 600_000, b"not json", {"invalid_json"}, "600 KB key"))
    big_call = padded(CALLS, "h-900k", BIG)(900_000)
    hostile.append((CALLS, b"not-the-tenant", big_call, set(), "900 KB call, wrong key"))
    far = body(CALLS, "h-far", GOOD, occurred_at="8999-12-31T00:00:00Z")
    hostile.append((CALLS, GOOD.encode(), malformed.dumps(far), {"invalid_event"}, "year 8999"))
    old_at = format_timestamp((datetime.now(UTC) - timedelta(days=8)).replace(microsecond=0))
    old = body(CALLS, "h-old", GOOD, occurred_at=old_at)
    hostile.append((CALLS, GOOD.encode(), malformed.dumps(old), {"too_old"}, "8 days old"))
    dup = malformed.dumps(body(COMMANDS, "h-dup", GOOD, amount="1.00"))
    dup = dup[:-1] + b',"amount":"999999.00"}'
    hostile.append((COMMANDS, GOOD.encode(), dup, {"invalid_event"}, "duplicate key"))
    for _topic, key, value, _, what in hostile:
        assert size(key, value) <= limit, what

    good = [
        (COMMANDS, body(COMMANDS, "g-funds", GOOD, amount="100.00")),
        (CALLS, body(CALLS, "g-call", GOOD)),
        (CONFERENCING, body(CONFERENCING, "g-conf", GOOD)),
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=d.bootstrap, acks="all", max_request_size=limit + 1024
    )
    await producer.start()
    sent: dict[tuple[str, int, int], tuple[set[str], str]] = {}
    try:
        # All on the good tenant's partition of each topic, the good records after them.
        for topic, key, value, reasons, what in hostile:
            meta = await producer.send_and_wait(d.topic(topic), value, key=key, partition=HOME)
            sent[(meta.topic, meta.partition, meta.offset)] = (reasons, what)
        for topic, b in good:
            await producer.send_and_wait(
                d.topic(topic), malformed.dumps(b), key=GOOD.encode(), partition=HOME
            )
    finally:
        await producer.stop()

    expected = expected_balances(good)[GOOD]
    big = expected_balances([(CALLS, json.loads(big_call))])[BIG]
    assert expected < 100 and big < 0

    async def balances() -> Any:
        got = {}
        for tenant in (GOOD, BIG):
            status, account = await worker.get(f"/tenants/{tenant}/account")
            got[tenant] = account["balance"] if status == 200 else f"HTTP {status}"
        want = {GOOD: format(expected, "f"), BIG: format(big, "f")}
        return got == want or f"not yet: {got} != {want}"

    # The good tenant's records came after every hostile one on each partition.
    await eventually(balances, timeout=90, what="the good tenant's balance")

    client = Client(d)
    rejected_topic = d.topic("credits.rejected")
    records = await client.read_records(rejected_topic)
    by_coords: dict[tuple[str, int, int], tuple[bytes | None, dict[str, Any], int]] = {}
    for r in records:
        b = json.loads(r.value)
        by_coords[(b["source_topic"], b["source_partition"], b["source_offset"])] = (
            r.key,
            b,
            len(r.value) + len(r.key or b""),
        )
    for coords, (reasons, what) in sent.items():
        if not reasons:
            assert coords not in by_coords, what
            continue
        assert coords in by_coords, f"{what}: no rejection"
        key, b, n = by_coords[coords]
        assert b["reason"] in reasons, (what, b["reason"], b["detail"])
        assert n < WORKER_MAX_REQUEST, what
        if b.get("key_truncated"):
            assert key is None or len(key) <= 1024, what
            assert b["key_size"] > 1024 and len(b["key_sha256"]) == 64, what
    reasons_by_what = {what: by_coords[c][1]["reason"] for c, (r, what) in sent.items() if r}
    print(f"\nrejections: {reasons_by_what}")
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()

    # The operator's word: the too-old call is applied by a forced replay, once.
    names = TopicNames.from_settings(
        Settings(_env_file=None, topic_prefix=d.prefix, app_id=d.app_id)
    )
    report = await replay_rejected(
        d.bootstrap, names, reasons=frozenset({"too_old"}), force_too_old=True, echo=print
    )
    assert sum(report.replayed.values()) == 1 and not report.problems, report.render()
    # Its charge, as if it were new (the engine would refuse it as too old).
    fresh = {**old, "occurred_at": format_timestamp(datetime.now(UTC).replace(microsecond=0))}
    expected += expected_balances([(CALLS, fresh)])[GOOD]  # minus the call's charge
    await eventually(balances, timeout=60, what="the too-old call applied on replay")


async def test_a_rejection_the_broker_refuses_for_size_becomes_a_minimal_one(
    deployment: Deployment,
) -> None:
    """credits.rejected shrinks below what the worker learned at start: the broker
    refuses a rejection the worker built to fit 1 MB, and the minimal rejection (no
    payload; sizes and hashes) takes its place instead of failing the flush."""
    d = deployment
    worker = await _ready_worker(d)
    rejected = d.topic("credits.rejected")
    await _shrink(d, rejected, 20_000)
    producer = AIOKafkaProducer(bootstrap_servers=d.bootstrap, acks="all")
    await producer.start()
    try:
        value = b"\xff" + b"y" * 300_000  # not UTF-8: a 256 KiB base64 payload
        bad = await producer.send_and_wait(d.topic(CALLS), value, key=GOOD.encode(), partition=HOME)
        good = await _good_call(d, producer, "g-after")
    finally:
        await producer.stop()
    await _applied(worker, good, "the good call after the refused rejection")
    rows = [json.loads(r.value) for r in await Client(d).read_records(rejected)]
    [minimal] = [r for r in rows if r.get("source_offset") == bad.offset]
    assert minimal["reason"] == "invalid_json" and minimal["payload"] is None
    assert minimal["payload_truncated"] is True and minimal["payload_size"] == len(value)
    assert minimal["payload_sha256"] == hashlib.sha256(value).hexdigest()
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()


async def test_rejections_that_together_pass_a_shrunk_limit_all_land_whole(
    deployment: Deployment,
) -> None:
    """credits.rejected shrinks below the record batches the worker fills, after the
    worker wrote a rejection there: a round's rejections, each under the new limit but
    together over it, are refused as one batch and go again a batch each, whole; one
    too large alone becomes a minimal rejection; the worker keeps running. (The broker
    refuses a producer's batches after a refused one as out of order unless their
    numbers are taken back.)"""
    d = deployment
    worker = await _ready_worker(d)
    rejected = d.topic("credits.rejected")
    producer = AIOKafkaProducer(bootstrap_servers=d.bootstrap, acks="all", linger_ms=50)
    await producer.start()
    try:
        first = await producer.send_and_wait(
            d.topic(CALLS), b"{not json, first", key=GOOD.encode(), partition=HOME
        )

        async def written() -> bool:
            rows = [json.loads(r.value) for r in await Client(d).read_records(rejected)]
            return any(r.get("source_offset") == first.offset for r in rows)

        await eventually(written, timeout=60, what="a rejection written before the shrink")
        await _shrink(d, rejected, 20_000)
        bad = [b"{not json " + bytes([65 + i]) * 6_000 for i in range(8)]
        huge = b"\xff" + b"z" * 30_000  # not UTF-8: its rejection no longer fits
        values = [*bad[:4], huge, *bad[4:]]
        sent = [
            await producer.send(d.topic(CALLS), value, key=GOOD.encode(), partition=HOME)
            for value in values
        ]
        offsets = [(await s).offset for s in sent]
        good = await _good_call(d, producer, "g-after-many")
    finally:
        await producer.stop()
    await _applied(worker, good, "the good call after the rejections")
    rows = {
        r["source_offset"]: r
        for r in (json.loads(x.value) for x in await Client(d).read_records(rejected))
        if "source_offset" in r
    }
    for offset, value in zip(offsets, values, strict=True):
        assert rows[offset]["reason"] == "invalid_json"
        if value is huge:
            assert rows[offset]["payload"] is None and rows[offset]["payload_size"] == len(huge)
        else:
            assert rows[offset]["payload"] == value.decode(), offset
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()


async def _good_call(d: Deployment, producer: AIOKafkaProducer, ident: str) -> dict[str, Any]:
    """An ordinary call of the good tenant, on the partition the hostile records took."""
    good = body(CALLS, ident, GOOD)
    await producer.send_and_wait(
        d.topic(CALLS), malformed.dumps(good), key=GOOD.encode(), partition=HOME
    )
    return good


async def _applied(worker: Worker, good: dict[str, Any], what: str) -> None:
    expected = format(expected_balances([(CALLS, good)])[GOOD], "f")

    async def applied() -> bool | str:
        status, account = await worker.get(f"/tenants/{GOOD}/account")
        return (status == 200 and account["balance"] == expected) or f"not yet: {account}"

    await eventually(applied, timeout=60, what=what)


async def _ready_worker(d: Deployment) -> Worker:
    worker = Worker(d, 0).start()
    d.workers.append(worker)
    await worker.wait_ready()
    return worker


async def _shrink(d: Deployment, topic: str, limit: int) -> None:
    """Lower the topic's max.message.bytes, and wait until the broker refuses a probe
    too large for it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=d.bootstrap, acks="all")
    await producer.start()
    try:

        async def refused() -> bool:
            probe = json.dumps({"type": "probe", "pad": "x" * 2 * limit}).encode()
            try:
                await producer.send_and_wait(topic, probe)
            except MessageSizeTooLargeError:
                return True
            return False

        await eventually(refused, timeout=30, what="the smaller max.message.bytes in force")
    finally:
        await producer.stop()
