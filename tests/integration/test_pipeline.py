"""The main path on the real broker with real `meter worker` processes."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processor.worker.marks_log import unpack_marks
from tests.integration.harness import (
    Client,
    Deployment,
    Worker,
    eventually,
    now_rfc3339,
    signed_sum,
)
from tests.support import events

pytestmark = pytest.mark.integration

NOW = now_rfc3339()  # event time within the dedupe window
call = partial(events.call, at=NOW)
conference = partial(events.conference, at=NOW)
funds = partial(events.funds, at=NOW)


def auto_recharge(command_id: str, tenant: str, amount: str, trigger: str) -> dict[str, Any]:
    return {
        "type": "auto_recharge_configured",
        "command_id": command_id,
        "tenant_id": tenant,
        "occurred_at": NOW,
        "enabled": True,
        "recharge_amount": amount,
        "trigger_balance": trigger,
    }


@pytest.fixture
async def deploy(kafka: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Deployment]]:
    workers: list[Worker] = []

    def factory(**kw: Any) -> Deployment:
        d = Deployment(
            kafka.bootstrap, tmp_path / f"d{len(workers)}-{random.randrange(10**6)}", **kw
        )
        d.root.mkdir(parents=True)
        d.workers = workers
        return d

    yield factory
    for w in workers:
        w.stop()
        # Shown by pytest only when the test failed.
        print(f"--- worker {w.index} of {w.deployment.app_id} ---\n{w.log_tail(80)}")


async def start_workers(d: Deployment, n: int) -> list[Worker]:
    started = [Worker(d, i).start() for i in range(n)]
    d.workers.extend(started)
    for w in started:
        await w.wait_ready()
    return started


async def account(worker: Worker, tenant: str) -> dict[str, Any] | None:
    status, body = await worker.get(f"/tenants/{tenant}/account")
    return body if status == 200 else None


async def test_low_balance_recharge_round_trip_is_exact(deploy: Callable[..., Deployment]) -> None:
    d = deploy()
    [w] = await start_workers(d, 1)
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant="acme", amount="1.00"))
        await c.send("credits.commands", auto_recharge("c2", "acme", "20.00", "0.80"))

        # Topics are read independently: a call sent after a command on another topic
        # may be applied before it. The tenant's settings are in place before its usage.
        async def configured() -> bool:
            acct = await account(w, "acme")
            return acct is not None and acct["auto_recharge"] is not None

        await eventually(configured, what="the funds and auto-recharge settings applied")
        for i in range(3):  # 0.1320 each: 1.0000 -> 0.8680 -> 0.7360 (< 0.80) -> 0.6040
            await c.send("usage.calls", call(f"e{i}", tenant="acme"))

        async def one_request() -> list[dict[str, Any]]:
            return await c.read_all("credits.recharge-requests")

        [request] = await eventually(one_request, what="a recharge request")
        assert request["tenant_id"] == "acme" and request["attempt"] == 1
        assert request["amount"] == "20.0000" and request["balance"] == "0.7360"

        async def settled() -> bool:
            acct = await account(w, "acme")
            return acct is not None and acct["balance"] == "0.6040"

        await eventually(settled, what="three calls applied")
        await c.send(
            "credits.commands",
            funds(
                "c3",
                tenant="acme",
                amount="20.00",
                source="auto_recharge",
                recharge_request_id=request["request_id"],
            ),
        )

        async def recharged() -> dict[str, Any] | None:
            acct = await account(w, "acme")
            return acct if acct and acct["balance"] == "20.6040" else None

        acct = await eventually(recharged, what="the recharge credited")
        assert acct["pending_recharge"] is None
        assert acct["status"] == "active"
        assert acct["auto_recharge"]["trigger_balance"] == "0.8000"

        ledger = await c.read_all("credits.ledger")
        assert [e["kind"] for e in ledger] == ["credit", "debit", "debit", "debit", "credit"]
        assert [e["balance_after"] for e in ledger] == [
            "1.0000",
            "0.8680",
            "0.7360",
            "0.6040",
            "20.6040",
        ]
        assert signed_sum(ledger, "acme") == Decimal("20.6040")
        assert len(await c.read_all("credits.recharge-requests")) == 1
        alerts = [a["alert"] for a in await c.read_all("credits.alerts")]
        # Added: the auto-recharge's funds closed the request, so recharge_succeeded.
        assert alerts == ["restored", "low_balance", "recharge_succeeded"]
        [succeeded] = [a for a in await c.read_all("credits.alerts") if a["alert"] == alerts[-1]]
        assert succeeded["request_id"] == request["request_id"]
        assert succeeded["amount"] == "20.0000" and succeeded["balance"] == "20.6040"


async def test_duplicates_and_miskeyed_records_apply_once(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy()
    [w] = await start_workers(d, 1)
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant="globex", amount="5.00"))
        await c.send(
            "credits.commands", funds("c1", tenant="globex", amount="5.00")
        )  # re-sent command
        for _ in range(3):
            await c.send(
                "usage.calls", call("dup-1", tenant="globex", seconds=120, dest="+14155550123")
            )
        # The same tenant's events with no key and a wrong key: processed for the body's tenant.
        await c.send(
            "usage.calls", call("nokey", tenant="globex", seconds=60, dest="+14155550123"), key=None
        )
        await c.send(
            "usage.conferencing", conference("wrongkey", tenant="globex", seconds=60), key="initech"
        )

        # 5.00 - 0.04 (2 min at 0.02) - 0.02 - 0.015 (conference dial-out) = 4.925
        async def settled() -> bool | str:
            acct = await account(w, "globex")
            return (acct is not None and acct["balance"] == "4.9250") or f"not yet: {acct}"

        await eventually(settled, what="globex at 4.9250")
        ledger = await c.read_all("credits.ledger")
        assert sorted(e["cause_id"] for e in ledger) == ["c1", "dup-1", "nokey", "wrongkey"]
        assert {e["cause_topic"] for e in ledger} == {
            d.topic("credits.commands"),
            d.topic("usage.calls"),
            d.topic("usage.conferencing"),
        } or {e["cause_topic"] for e in ledger} == {
            "credits.commands",
            "usage.calls",
            "usage.conferencing",
        }


async def test_marks_past_their_window_leave_the_worker_and_its_changelog(
    deploy: Callable[..., Deployment],
) -> None:
    """With a window of five seconds: the marks (one record per partition per round in
    the marks topic, what a restart reads back) leave the worker once past their window,
    and an event re-sent after that is not metered again: it is older than the window,
    so refused as too old."""
    d = deploy(env_extra={"METER_DEDUPE_DAYS": str(5 / 86400)})
    [w] = await start_workers(d, 1)
    async with Client(d) as c:
        # Stamped as sent: older than the window, they would be refused at once.
        now = now_rfc3339()
        resent = {
            **call("e1", tenant="globex", seconds=120, dest="+14155550123"),
            "occurred_at": now,
        }
        await c.send(
            "credits.commands", {**funds("c1", tenant="globex", amount="5.00"), "occurred_at": now}
        )
        await c.send("usage.calls", resent)

        def balance_is(expected: str) -> Callable[[], Awaitable[bool | str]]:
            async def check() -> bool | str:
                acct = await account(w, "globex")
                return (acct is not None and acct["balance"] == expected) or f"not yet: {acct}"

            return check

        await eventually(balance_is("4.9600"), what="globex at 4.9600")

        records = await c.read_records(f"{d.app_id}-dedupe-marks")
        held = [m for r in records for m in unpack_marks(r.value or b"")]
        assert len(held) == 2, held  # the command's mark and the call's

        async def forgotten() -> bool | str:
            # The counter, not the marks gauge: the gauge is set on the timer's turns, and
            # one taken before the marks were written still reads 0 while they are held
            # (a repeat then is a duplicate, which writes nothing).
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{w.url}/metrics") as resp,
            ):
                text = await resp.text()
            prefix = "meter_dedupe_marks_forgotten_total "
            counts = [line for line in text.splitlines() if line.startswith(prefix)]
            dropped = sum(float(line.removeprefix(prefix)) for line in counts)
            return dropped >= 2 or f"not yet: {counts}"

        await eventually(forgotten, what="both marks forgotten")
        await c.send("usage.calls", resent)

        async def refused() -> list[dict[str, Any]] | None:
            rows = await c.read_all("credits.rejected")
            return rows or None

        [rejection] = await eventually(refused, what="the re-sent call refused")
        assert rejection["reason"] == "too_old", rejection
        assert await balance_is("4.9600")() is True


async def test_marks_of_the_legacy_dedupe_changelog_still_catch_a_repeat(
    deploy: Callable[..., Deployment],
) -> None:
    """An upgrade in the middle of a window: a worker before the marks topic kept its
    marks in `<app id>-dedupe-changelog`. Here the call's mark is only there (the
    marks topic's records deleted), and the restarted worker still takes the call,
    re-sent at another offset, for a duplicate."""
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.records_to_delete import RecordsToDelete

    from processor.core.dedupe import dedupe_key
    from processor.core.stored import Mark, Position
    from processor.kafka.routing import partition_for
    from processor.worker.codec import dump_mark
    from processor.worker.marks import digest

    d = deploy()
    [w] = await start_workers(d, 1)
    tenant = "initech"
    first = call("u1", tenant=tenant, seconds=120, dest="+14155550123")
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant=tenant, amount="5.00"))
        await c.send("usage.calls", first)

        async def applied() -> bool | str:
            acct = await account(w, tenant)
            return (acct is not None and acct["balance"] == "4.9600") or f"not yet: {acct}"

        await eventually(applied, what="the call applied")
        marks_topic = f"{d.app_id}-dedupe-marks"
        key = dedupe_key(tenant, "call", "u1")
        held = [m for r in await c.read_records(marks_topic) for m in unpack_marks(r.value)]
        [(_, tp, offset, expires)] = [m for m in held if m[0] == digest(key)]
    w.stop()

    # What a worker of the old layout left: the mark in the legacy changelog, none in
    # the marks topic.
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:
        legacy = f"{d.app_id}-dedupe-changelog"
        await admin.create_topics(
            [NewTopic(legacy, d.partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
        ends = await _end_offsets(d.bootstrap, marks_topic, d.partitions)
        await admin.delete_records(
            {TopicPartition(marks_topic, p): RecordsToDelete(end) for p, end in ends.items()}
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=d.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            legacy,
            dump_mark(Mark(expires, Position(tp, offset))),
            key=key.encode(),
            partition=partition_for(tenant, d.partitions),
        )
    finally:
        await producer.stop()

    async with Client(d) as c:
        assert not [r for r in await c.read_records(marks_topic) if r.value]
        w2 = Worker(d, 1).start()
        d.workers.append(w2)
        await w2.wait_ready()
        await c.send("usage.calls", first)  # the same call again, at a new offset
        await c.send("usage.calls", call("u2", tenant=tenant, seconds=60, dest="+14155550123"))

        async def second_applied() -> bool | str:
            acct = await account(w2, tenant)
            return (acct is not None and acct["balance"] == "4.9400") or f"not yet: {acct}"

        await eventually(second_applied, what="the second call applied, the repeat not")
        entries = [e for e in await c.read_all("credits.ledger") if e["tenant_id"] == tenant]
        assert sorted(e["cause_id"] for e in entries) == ["c1", "u1", "u2"], entries


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def test_bad_input_is_rejected_with_reasons_and_processing_goes_on(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy()
    [w] = await start_workers(d, 1)
    async with Client(d) as c:
        await c.send("usage.calls", b'{"event_id": "x", "tenant_id": "acme"', key="acme")
        await c.send("usage.calls", b"\xc3\x28 not utf-8", key="acme")
        await c.send("usage.calls", call("neg", tenant="acme", seconds=-5))
        await c.send("usage.calls", call("norate", tenant="acme", dest="+999123456"))
        await c.send(
            "credits.commands", {**funds("eur", tenant="acme", amount="10.00"), "currency": "EUR"}
        )
        await c.send("usage.calls", call("good", tenant="acme", seconds=60, dest="+14155550123"))

        async def all_rejected() -> list[dict[str, Any]] | None:
            rows = await c.read_all("credits.rejected")
            return rows if len(rows) >= 5 else None

        rejected = await eventually(all_rejected, what="five rejections")
        assert sorted(r["reason"] for r in rejected) == sorted(
            ["invalid_json", "invalid_json", "invalid_event", "no_rate", "currency_mismatch"]
        )
        for r in rejected:
            assert r["detail"] and r["source_topic"].startswith(d.prefix)
            assert r["payload"]
        binary = [r for r in rejected if r.get("payload_encoding") == "base64"]
        assert len(binary) == 1

        async def good_applied() -> bool:
            acct = await account(w, "acme")
            return acct is not None and acct["balance"] == "-0.0200"

        await eventually(good_applied, what="the good call applied")
        assert w.proc is not None and w.proc.poll() is None


def scenario(
    tenants: int = 12, events: int = 240, seed: int = 7
) -> list[tuple[str, dict[str, Any]]]:
    """A deterministic mix of funds, settings and usage over several tenants."""
    rng = random.Random(seed)
    names = [f"tenant-{i:02d}" for i in range(tenants)]
    out: list[tuple[str, dict[str, Any]]] = []
    for i, t in enumerate(names):
        out.append(
            (
                "credits.commands",
                funds(f"f-{t}", tenant=t, amount=f"{rng.randint(1, 9)}.{rng.randint(0, 99):02d}"),
            )
        )
        if i % 2 == 0:
            out.append(("credits.commands", auto_recharge(f"a-{t}", t, "10.00", "2.50")))
    dests = ["+14155550123", "+447700900123", "+442071234567", "+4915112345678", "+33612345678"]
    for n in range(events):
        t = rng.choice(names)
        if rng.random() < 0.2:
            out.append(
                (
                    "usage.conferencing",
                    conference(f"cf-{n}", tenant=t, seconds=rng.randint(0, 1800)),
                )
            )
        else:
            out.append(
                (
                    "usage.calls",
                    call(f"ev-{n}", tenant=t, seconds=rng.randint(0, 900), dest=rng.choice(dests)),
                )
            )
        if rng.random() < 0.05:
            out.append(out[-1])  # a re-sent duplicate
    return out


def expected_balances(records: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """What the pure core says the balances must be, computed without Kafka."""
    from datetime import UTC, datetime, timedelta

    from processor.core.dedupe import DedupeWindow
    from processor.core.engine import Engine
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.core.state import RechargePolicy
    from processor.core.stored import Position
    from processor.kafka.usage_wire import read_call, read_conference
    from schemas import decode_command

    decoders = {
        "usage.calls": read_call,
        "usage.conferencing": read_conference,
        "credits.commands": decode_command,
    }
    card = load_rate_card(example_rate_card_path())
    accounts: dict[str, Any] = {}
    engine = Engine(card, RechargePolicy(timedelta(hours=1)), DedupeWindow(7), accounts, {})
    now = datetime.now(UTC)
    for offset, (topic, body) in enumerate(records):
        event = decoders[topic](json.dumps(body).encode())
        position = Position(f"{topic}:0", offset)
        if topic == "credits.commands":
            # arg-type: the decoder's union of commands/usage, split by topic here
            engine.command(event, topic, now, position)  # type: ignore[arg-type]
        else:
            # arg-type: the decoder's union of commands/usage, split by topic here
            engine.usage(event, topic, now, position)  # type: ignore[arg-type]
    return {t: format(a.account.balance, "f") for t, a in accounts.items()}


async def run_scenario(
    d: Deployment, workers: int
) -> tuple[list[Worker], dict[str, dict[str, Any]]]:
    started = await start_workers(d, workers)
    records = scenario()
    expected = expected_balances(records)
    async with Client(d) as c:
        for topic, body in records:
            await c.send(topic, body)

    async def balances() -> dict[str, dict[str, Any]] | None:
        got = {t: await account(started[-1], t) for t in expected}
        wrong = {
            t: (b, (got[t] or {}).get("balance"))
            for t, b in expected.items()
            if (got[t] or {}).get("balance") != b
        }
        if not wrong:
            # return-value: with nothing wrong, no account in `got` is None
            return got  # type: ignore[return-value]
        print("expected vs got:", wrong)
        return None

    return started, await eventually(balances, timeout=120, what="balances as the core computes")


async def test_two_workers_end_with_the_same_balances_as_one(
    deploy: Callable[..., Deployment],
) -> None:
    _, balances_one = await run_scenario(deploy(), 1)
    two, balances_two = await run_scenario(deploy(), 2)

    def strip(b: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in b.items() if k not in ("updated_at", "pending_recharge")}

    assert {t: strip(b) for t, b in balances_one.items()} == {
        t: strip(b) for t, b in balances_two.items()
    }
    # Both workers answer for every tenant, whichever owns it, and agree.
    for tenant in balances_two:
        a = await account(two[0], tenant)
        b = await account(two[1], tenant)
        assert a == b and a is not None
    for w in two:
        status, _ = await w.get("/tenants/never-seen/account")
        assert status == 404


async def test_first_start_on_inputs_that_already_hold_records(
    deploy: Callable[..., Deployment],
) -> None:
    """Telephony may publish before the processor ever ran: nothing may be rejected."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    d = deploy(partitions=12)
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(d.topic(t), d.partitions, 1)
                for t in ("usage.calls", "usage.conferencing", "credits.commands")
            ]
        )
    finally:
        await admin.close()
    tenants = [f"early-{i}" for i in range(40)]
    async with Client(d) as c:
        await c.send_all(
            "credits.commands", [funds(f"c-{t}", tenant=t, amount="5.00") for t in tenants]
        )
        await c.send_all(
            "usage.calls",
            [
                call(f"e{i}-{t}", tenant=t, seconds=60, dest="+14155550123")
                for i in range(50)
                for t in tenants
            ],
        )
    [w] = await start_workers(d, 1)

    async def applied() -> bool | str:
        balances = {t: (await account(w, t) or {}).get("balance") for t in tenants}
        wrong = {t: b for t, b in balances.items() if b != "4.0000"}
        return not wrong or f"not yet: {wrong}"

    # 50 one-minute calls at 0.02 each from 5.00.
    await eventually(applied, timeout=120, what="every tenant at 4.0000")
    async with Client(d) as c:
        assert await c.read_all("credits.rejected") == []
