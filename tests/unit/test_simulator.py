"""The simulator's generated traffic and billing, and the live view's screen.

No Kafka: everything deciding what is sent is pure. The contract rules are checked
by hand here (not through the schemas package) so the simulator is judged against
CONTRACT.md itself.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import pytest

from processor.dev.liveview import ViewState, render, summary_line
from processor.dev.simulator import (
    COMMANDS,
    EXPECTED_REJECT_REASON,
    GARBAGE_KINDS,
    RECHARGE_REQUESTS,
    SIMULATOR_TOPICS,
    USAGE_CALLS,
    USAGE_CONFERENCING,
    AutoRecharge,
    BillingBook,
    CallGate,
    DuplicateScheduler,
    OutRecord,
    SimulatorConfig,
    SimulatorStats,
    TokenBucket,
    TrafficGenerator,
    generate_tenants,
    make_auto_recharge_configured,
    make_call_usage,
    make_conference_usage,
    make_funds_added,
    make_garbage,
    make_recharge_failed,
)

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
TENANT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
PRINTABLE_ID = re.compile(r"^[ -~]{1,128}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
NOW = datetime(2026, 11, 23, 10, 0, 0, 123000, tzinfo=UTC)

# What the example rate card prices; garbage aside, nothing may fall outside.
CONFERENCE_DIAL_OUT_CODES = ("+1", "+44", "+353", "+49", "+33", "+61", "+81")
TOLL_FREE_PREFIXES = ("+1800", "+1888", "+44800")


# ------------------------------------------------------------- contract checks


def _timestamp_ok(value: Any) -> bool:
    if not isinstance(value, str) or not value.endswith("Z"):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None and parsed.utcoffset() is not None


def _money_ok(value: Any, *, positive: bool = True) -> bool:
    if not isinstance(value, str):
        return False
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return False
    return amount.is_finite() and (amount > 0 if positive else amount >= 0)


def _duration_ok(value: Any) -> bool:
    return type(value) is int and 0 <= value <= 86400


def _common_problems(event: Any, keys: set[str], optional: set[str]) -> list[str]:
    if not isinstance(event, dict):
        return ["not an object"]
    problems = [f"missing {k}" for k in sorted(keys - event.keys())]
    problems += [f"unknown {k}" for k in sorted(event.keys() - keys - optional)]
    if not (isinstance(event.get("tenant_id"), str) and TENANT_ID.match(event["tenant_id"])):
        problems.append("tenant_id")
    if not _timestamp_ok(event.get("occurred_at")):
        problems.append("occurred_at")
    return problems


def call_problems(event: Any) -> list[str]:
    keys = {"event_id", "tenant_id", "occurred_at", "call_id", "call_type",
            "source_number", "destination_number", "duration_seconds"}  # fmt: skip
    problems = _common_problems(event, keys, {"user_id"})
    if problems == ["not an object"]:
        return problems
    if not (isinstance(event.get("event_id"), str) and PRINTABLE_ID.match(event["event_id"])):
        problems.append("event_id")
    if not isinstance(event.get("call_id"), str) or not event.get("call_id"):
        problems.append("call_id")
    if "user_id" in event and not isinstance(event["user_id"], str):
        problems.append("user_id")
    if event.get("call_type") not in ("outbound", "toll_free_inbound"):
        problems.append("call_type")
    for k in ("source_number", "destination_number"):
        if not (isinstance(event.get(k), str) and E164.match(event[k])):
            problems.append(k)
    if not _duration_ok(event.get("duration_seconds")):
        problems.append("duration_seconds")
    return problems


def conference_problems(event: Any) -> list[str]:
    keys = {"event_id", "tenant_id", "occurred_at", "conference_id", "leg_type",
            "number", "duration_seconds"}  # fmt: skip
    problems = _common_problems(event, keys, {"participant_id"})
    if problems == ["not an object"]:
        return problems
    if not (isinstance(event.get("event_id"), str) and PRINTABLE_ID.match(event["event_id"])):
        problems.append("event_id")
    if event.get("leg_type") not in ("dial_out", "toll_free_dial_in"):
        problems.append("leg_type")
    if not (isinstance(event.get("number"), str) and E164.match(event["number"])):
        problems.append("number")
    if not _duration_ok(event.get("duration_seconds")):
        problems.append("duration_seconds")
    return problems


def command_problems(cmd: Any, currency: str = "USD") -> list[str]:
    base = {"type", "command_id", "tenant_id", "occurred_at"}
    if not isinstance(cmd, dict):
        return ["not an object"]
    kind = cmd.get("type")
    if kind == "funds_added":
        problems = _common_problems(
            cmd, base | {"amount", "currency", "source"}, {"recharge_request_id", "attempt"}
        )
        if not _money_ok(cmd.get("amount")) or Decimal(cmd["amount"]) > 1_000_000:
            problems.append("amount")
        if cmd.get("currency") != currency or not CURRENCY.match(str(cmd.get("currency"))):
            problems.append("currency")
        if cmd.get("source") not in ("manual", "auto_recharge"):
            problems.append("source")
        if cmd.get("source") == "auto_recharge" and not isinstance(
            cmd.get("recharge_request_id"), str
        ):
            problems.append("recharge_request_id")
    elif kind == "auto_recharge_configured":
        problems = _common_problems(
            cmd, base | {"enabled", "recharge_amount", "trigger_balance"}, set()
        )
        if type(cmd.get("enabled")) is not bool:
            problems.append("enabled")
        if not _money_ok(cmd.get("recharge_amount")):
            problems.append("recharge_amount")
        if not _money_ok(cmd.get("trigger_balance"), positive=False):
            problems.append("trigger_balance")
    elif kind == "recharge_failed":
        problems = _common_problems(cmd, base | {"recharge_request_id", "reason"}, {"attempt"})
        if not isinstance(cmd.get("reason"), str) or not cmd.get("reason"):
            problems.append("reason")
    else:
        return ["type"]
    if "attempt" in cmd and not (type(cmd["attempt"]) is int and cmd["attempt"] >= 1):
        problems.append("attempt")
    if not (isinstance(cmd.get("command_id"), str) and PRINTABLE_ID.match(cmd["command_id"])):
        problems.append("command_id")
    return problems


def record_problems(record: OutRecord, currency: str = "USD") -> list[str]:
    """Contract problems of a produced record; empty for a valid one."""
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return ["invalid_json"]
    if record.topic == USAGE_CALLS:
        return call_problems(value)
    if record.topic == USAGE_CONFERENCING:
        return conference_problems(value)
    if record.topic == COMMANDS:
        return command_problems(value, currency)
    return [f"unexpected topic {record.topic}"]


# --------------------------------------------------------------------- fixtures


def _generator(seed: int = 7, **overrides: Any) -> TrafficGenerator:
    config = SimulatorConfig(bootstrap="unused:9092", seed=seed, **overrides)
    return TrafficGenerator(config, random.Random(seed), run_tag="t3st")


# ---------------------------------------------------------------------- tenants


def test_tenant_generation_is_deterministic_with_a_seed() -> None:
    assert generate_tenants(36, random.Random(42)) == generate_tenants(36, random.Random(42))
    assert generate_tenants(36, random.Random(42)) != generate_tenants(36, random.Random(43))


@pytest.mark.parametrize("n", [1, 36, 120])
def test_tenants_are_unique_and_within_the_contract(n: int) -> None:
    tenants = generate_tenants(n, random.Random(1))
    ids = [t.tenant_id for t in tenants]
    assert len(ids) == n and len(set(ids)) == n
    for t in tenants:
        assert TENANT_ID.match(t.tenant_id), t.tenant_id
        assert t.dids and all(E164.match(d) for d in t.dids)
        assert t.toll_free and all(n.startswith(TOLL_FREE_PREFIXES) for n in t.toll_free)
        assert all(E164.match(n) for n in t.toll_free)
        assert Decimal("5.00") <= t.initial_funds <= Decimal("200.00")
        assert t.initial_funds == t.initial_funds.quantize(Decimal("0.01"))
        if t.auto_recharge is not None and t.auto_recharge.enabled:
            assert Decimal(20) <= t.auto_recharge.recharge_amount <= Decimal(100)
            assert Decimal(5) <= t.auto_recharge.trigger_balance <= Decimal(25)


def test_tenants_mix_settings_and_skewed_activity() -> None:
    tenants = generate_tenants(36, random.Random(3))
    enabled = [t for t in tenants if t.auto_recharge is not None and t.auto_recharge.enabled]
    others = [t for t in tenants if t.auto_recharge is None or not t.auto_recharge.enabled]
    assert len(enabled) > len(tenants) / 2 and others
    weights = sorted((t.weight for t in tenants), reverse=True)
    # Skewed: the busiest five tenants carry a large share of the traffic.
    assert sum(weights[:5]) > 0.4 * sum(weights)
    assert any(t.tenant_id in ("acme-corp", "globex", "initech.eu") for t in tenants)


# ----------------------------------------------------------------------- usage


def test_usage_events_follow_the_contract() -> None:
    gen = _generator(miskey_ratio=0.0)
    counts: Counter[str] = Counter()
    destinations: set[str] = set()
    durations: list[int] = []
    event_ids: set[str] = set()
    for _ in range(3000):
        record, _ = gen.next_usage(NOW)
        assert record_problems(record) == [], orjson.loads(record.value)
        event = orjson.loads(record.value)
        assert record.key == event["tenant_id"].encode("utf-8")
        assert event["occurred_at"] == "2026-11-23T10:00:00.123Z"
        assert event["event_id"] not in event_ids
        event_ids.add(event["event_id"])
        durations.append(event["duration_seconds"])
        if record.topic == USAGE_CALLS:
            counts[event["call_type"]] += 1
            if event["call_type"] == "outbound":
                destinations.add(event["destination_number"])
            else:
                assert event["destination_number"].startswith(TOLL_FREE_PREFIXES)
        else:
            counts[event["leg_type"]] += 1
            if event["leg_type"] == "dial_out":
                assert event["number"].startswith(CONFERENCE_DIAL_OUT_CODES)
            else:
                assert event["number"].startswith(TOLL_FREE_PREFIXES)
    assert counts["outbound"] > counts["toll_free_inbound"] > 0
    assert counts["dial_out"] > 0 and counts["toll_free_dial_in"] > 0
    assert counts["outbound"] > counts["dial_out"]
    for code in ("+1", "+447", "+49", "+33", "+34", "+39", "+31", "+61", "+81", "+91",
                 "+52", "+55", "+65", "+353"):  # fmt: skip
        assert any(d.startswith(code) for d in destinations), code
    # Unanswered calls, a bulk of a few minutes, and a long tail up to an hour.
    assert durations.count(0) > 50
    assert sum(1 for d in durations if 30 <= d <= 600) > len(durations) / 3
    assert max(durations) <= 3600 and any(d > 1800 for d in durations)


def test_single_event_builders() -> None:
    tenant = generate_tenants(1, random.Random(5))[0]
    rng = random.Random(5)
    call = make_call_usage(tenant, rng, NOW, "ev-1", "toll_free_inbound")
    assert call_problems(call) == [] and call["call_type"] == "toll_free_inbound"
    leg = make_conference_usage(tenant, rng, NOW, "ev-2", "dial_out")
    assert conference_problems(leg) == [] and leg["leg_type"] == "dial_out"


def test_mis_keyed_records_name_their_tenant_in_the_body() -> None:
    gen = _generator(miskey_ratio=0.5)
    miskeyed = 0
    for _ in range(400):
        record, flagged = gen.next_usage(NOW)
        body_tenant = orjson.loads(record.value)["tenant_id"].encode()
        if flagged:
            miskeyed += 1
            assert record.key != body_tenant
        else:
            assert record.key == body_tenant
    assert 100 < miskeyed < 300


# -------------------------------------------------------------------- commands


def test_setup_gives_every_tenant_funds_then_settings() -> None:
    gen = _generator()
    records = gen.setup_records(NOW)
    seen_funds: set[str] = set()
    configured = 0
    for record in records:
        assert record.topic == COMMANDS
        assert record_problems(record) == []
        cmd = orjson.loads(record.value)
        assert record.key == cmd["tenant_id"].encode()
        if cmd["type"] == "funds_added":
            assert cmd["source"] == "manual" and "recharge_request_id" not in cmd
            assert re.fullmatch(r"\d+\.\d{2}", cmd["amount"])
            seen_funds.add(cmd["tenant_id"])
        else:
            assert cmd["type"] == "auto_recharge_configured"
            assert cmd["tenant_id"] in seen_funds  # funds first, then settings
            configured += 1
    assert seen_funds == {t.tenant_id for t in gen.tenants}
    assert configured == sum(1 for t in gen.tenants if t.auto_recharge is not None)
    ids = [orjson.loads(r.value)["command_id"] for r in records]
    assert len(set(ids)) == len(ids)


def test_admin_actions_are_valid_commands() -> None:
    gen = _generator()
    kinds: Counter[str] = Counter()
    for _ in range(300):
        record = gen.admin_action(NOW)
        assert record_problems(record) == []
        kinds[orjson.loads(record.value)["type"]] += 1
    assert kinds["funds_added"] > 0 and kinds["auto_recharge_configured"] > 0


def test_command_builders() -> None:
    settings = AutoRecharge(True, Decimal("50"), Decimal("10"))
    cmd = make_auto_recharge_configured("acme-corp", settings, NOW, "c1")
    assert cmd["recharge_amount"] == "50.00" and cmd["trigger_balance"] == "10.00"
    assert command_problems(cmd) == []
    failed = make_recharge_failed("acme-corp", "req-1", "card_declined", NOW, "c2")
    assert command_problems(failed) == []
    with pytest.raises(ValueError, match="recharge_request_id"):
        make_funds_added("acme-corp", Decimal(1), "USD", NOW, "c3", source="auto_recharge")


# --------------------------------------------------------------------- garbage


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
def test_garbage_records_are_really_invalid(kind: Any) -> None:
    tenants = generate_tenants(4, random.Random(9))
    rng = random.Random(11)
    for i in range(60):
        record = make_garbage(kind, tenants[i % 4], rng, NOW, f"bad-{i}")
        assert record.key is not None
        expected = EXPECTED_REJECT_REASON[kind]
        if expected == "invalid_json":
            with pytest.raises((orjson.JSONDecodeError, UnicodeDecodeError)):
                orjson.loads(record.value)
                record.value.decode("utf-8")
            if kind == "invalid_utf8":
                with pytest.raises(UnicodeDecodeError):
                    record.value.decode("utf-8")
        elif expected == "invalid_event":
            assert record_problems(record), orjson.loads(record.value)
        elif expected == "no_rate":
            # Valid in shape; only the rate card cannot price it.
            assert record_problems(record) == []
            value = orjson.loads(record.value)
            number = value.get("destination_number") or value.get("number")
            assert number.startswith("+999")
        else:
            assert record.topic == COMMANDS
            assert record_problems(record) == ["currency"]
            assert orjson.loads(record.value)["currency"] == "EUR"


def test_garbage_ratio_is_roughly_respected() -> None:
    gen = _generator(garbage_ratio=0.1)
    kinds = Counter(gen.next_traffic(NOW)[1] for _ in range(5000))
    assert 350 < kinds["garbage"] < 650


# ------------------------------------------------------------------- call gate


def _status(tenant: str, alert: str, seq: int | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "balance_alert", "tenant_id": tenant, "alert": alert}
    if seq is not None:
        value["status_seq"] = seq
    return value


def test_gate_blocks_an_exhausted_tenant_until_it_is_restored() -> None:
    gate = CallGate(["a", "b"])
    assert gate.allows("a") and gate.allows("b")  # no alert yet: nothing to go by
    gate.observe(_status("a", "exhausted", 1))
    assert not gate.allows("a") and gate.allows("b")
    assert gate.exhausted() == ["a"]
    gate.observe(_status("a", "restored", 2))
    assert gate.allows("a") and gate.exhausted() == []


def test_gate_goes_by_the_highest_status_seq_not_the_last_arrival() -> None:
    gate = CallGate(["a"])
    gate.observe(_status("a", "exhausted", 3))
    gate.observe(_status("a", "restored", 2))  # an older alert re-delivered late
    assert not gate.allows("a")
    gate.observe(_status("a", "restored", 3))  # the same number again changes nothing
    assert not gate.allows("a")
    gate.observe(_status("a", "restored", 4))
    assert gate.allows("a")


def test_gate_ranks_unnumbered_alerts_below_numbered_ones() -> None:
    gate = CallGate(["a"])
    gate.observe(_status("a", "exhausted"))
    assert not gate.allows("a")
    gate.observe(_status("a", "restored"))  # among unnumbered, the last one counts
    assert gate.allows("a")
    gate.observe(_status("a", "exhausted", 1))
    gate.observe(_status("a", "restored"))
    assert not gate.allows("a")


def test_live_view_shows_the_status_of_the_highest_status_seq() -> None:
    # The console's terminal view follows the same consumer rule as the gate and the sink.
    state = ViewState()
    state.apply("alerts", _status("globex", "exhausted", 3))
    state.apply("alerts", _status("globex", "restored", 2))  # an older one, re-delivered
    assert state.tenants["globex"].status == "exhausted"
    assert state.exhausted == 1
    state.apply("alerts", _status("globex", "restored", 4))
    assert state.tenants["globex"].status == "active"
    assert state.tenants["globex"].last_alert == "restored"


@pytest.mark.parametrize(
    "alert",
    [
        _status("a", "low_balance", 9),
        _status("a", "recharge_failed", 9),
        _status("stranger", "exhausted", 1),
        {"alert": "exhausted", "tenant_id": 7, "status_seq": 1},
        {"alert": "exhausted", "status_seq": 1},
    ],
)
def test_gate_ignores_other_alerts_and_other_tenants(alert: dict[str, Any]) -> None:
    gate = CallGate(["a"])
    gate.observe(alert)
    assert gate.allows("a") and gate.allows("stranger")
    assert gate.exhausted() == []


def test_traffic_places_no_call_for_a_tenant_the_gate_blocks() -> None:
    config = SimulatorConfig(bootstrap="unused:9092", seed=7, garbage_ratio=0.0, miskey_ratio=0.0)
    tenants = generate_tenants(config.tenants, random.Random(1))
    gate = CallGate(t.tenant_id for t in tenants)
    blocked = {t.tenant_id for t in tenants[::2]}
    for tenant in blocked:
        gate.observe(_status(tenant, "exhausted", 1))
    gen = TrafficGenerator(
        config, random.Random(7), run_tag="t3st", tenants=tenants, allows=gate.allows
    )
    kinds: Counter[str] = Counter()
    callers: set[str] = set()
    for _ in range(3000):
        record, kind = gen.next_traffic(NOW)
        kinds[kind] += 1
        if record is not None:
            callers.add(orjson.loads(record.value)["tenant_id"])
    assert kinds["blocked"] > 0 and kinds["usage"] > 0
    assert callers and not callers & blocked


def test_an_open_gate_leaves_the_seeded_traffic_as_it_was() -> None:
    config = SimulatorConfig(bootstrap="unused:9092", seed=7)
    rng = random.Random(7)  # the tenants first, from the same stream, as the runner does
    tenants = generate_tenants(config.tenants, rng)
    gate = CallGate(t.tenant_id for t in tenants)
    gated = TrafficGenerator(config, rng, run_tag="t3st", tenants=tenants, allows=gate.allows)
    plain = _generator(seed=7)
    for _ in range(500):
        assert gated.next_traffic(NOW) == plain.next_traffic(NOW)


# ------------------------------------------------------------------ duplicates


def test_duplicates_are_byte_identical_re_sends_later() -> None:
    gen = _generator()
    dups = DuplicateScheduler(0.5, random.Random(1), min_delay=1.0, max_delay=5.0)
    sent: dict[bytes, OutRecord] = {}
    for i in range(200):
        record, _ = gen.next_usage(NOW)
        sent[record.value] = record
        dups.offer(record, now=float(i) / 100)
    assert dups.due(0.5) == []  # nothing before min_delay
    resent = dups.due(100.0)
    assert 60 < len(resent) < 140 and len(dups) == 0
    for record in resent:
        assert sent[record.value] == record  # same topic, key and value bytes


def test_no_duplicates_at_ratio_zero() -> None:
    dups = DuplicateScheduler(0.0, random.Random(1))
    assert not dups.offer(OutRecord(USAGE_CALLS, b"k", b"{}"), 0.0)
    assert dups.drain() == []


# --------------------------------------------------------------------- billing


def _request(request_id: str = "rr-acme-1", attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "type": "recharge_requested",
        "request_id": request_id,
        "tenant_id": "acme-corp",
        "amount": "50.00",
        "currency": "USD",
        "trigger_balance": "10.0000",
        "balance": "9.9800",
        "attempt": attempt,
        "requested_at": "2026-11-23T10:00:00Z",
        **extra,
    }


def test_billing_pays_a_request_once_with_its_amount() -> None:
    book = BillingBook(failure_ratio=0.0, rng=random.Random(1))
    answer = book.answer(_request(), NOW)
    assert answer is not None
    assert command_problems(answer) == []
    assert answer["type"] == "funds_added" and answer["source"] == "auto_recharge"
    assert answer["recharge_request_id"] == "rr-acme-1"
    assert answer["amount"] == "50.00" and answer["currency"] == "USD"
    assert answer["tenant_id"] == "acme-corp"
    # Re-delivered, retried with a higher attempt, or replayed: never paid again.
    assert book.answer(_request(), NOW) is None
    assert book.answer(_request(attempt=2), NOW) is None
    assert book.answer(_request(attempt=3), NOW) is None
    assert book.is_paid("rr-acme-1")


def test_billing_answers_each_attempt_once_and_pays_at_most_once() -> None:
    book = BillingBook(failure_ratio=1.0, rng=random.Random(1))
    first = book.answer(_request(attempt=1), NOW)
    assert first is not None and first["type"] == "recharge_failed"
    assert first["reason"] and command_problems(first) == []
    assert book.answer(_request(attempt=1), NOW) is None  # re-delivery of attempt 1
    book.failure_ratio = 0.0
    paid = book.answer(_request(attempt=2), NOW)
    assert paid is not None and paid["type"] == "funds_added"
    assert first["command_id"] != paid["command_id"]
    assert book.answer(_request(attempt=2), NOW) is None


def test_billing_answers_name_the_attempt_they_answer() -> None:
    failing = BillingBook(failure_ratio=1.0, rng=random.Random(1))
    failed = failing.answer(_request(attempt=2), NOW)
    assert failed is not None and failed["attempt"] == 2 and command_problems(failed) == []
    paying = BillingBook(failure_ratio=0.0, rng=random.Random(1))
    paid = paying.answer(_request(attempt=3), NOW)
    assert paid is not None and paid["attempt"] == 3 and command_problems(paid) == []


def test_billing_de_dup_holds_over_many_random_deliveries() -> None:
    book = BillingBook(failure_ratio=0.3, rng=random.Random(4))
    rng = random.Random(5)
    paid: Counter[str] = Counter()
    answered: Counter[tuple[str, int]] = Counter()
    for _ in range(5000):
        request_id = f"rr-{rng.randint(1, 300)}"
        attempt = rng.randint(1, 3)
        answer = book.answer(_request(request_id, attempt), NOW)
        if answer is None:
            continue
        answered[(request_id, attempt)] += 1
        if answer["type"] == "funds_added":
            paid[request_id] += 1
    assert paid and max(paid.values()) == 1
    assert max(answered.values()) == 1


def test_billing_funds_command_id_depends_on_the_request_only() -> None:
    # A billing restart forgets its book; the repeated payment must then carry the
    # same command_id, so the processor discards it as a duplicate.
    a = BillingBook(failure_ratio=0.0, rng=random.Random(1)).answer(_request(), NOW)
    b = BillingBook(failure_ratio=0.0, rng=random.Random(2)).answer(_request(attempt=2), NOW)
    assert a is not None and b is not None and a["command_id"] == b["command_id"]
    long_id = "r" * 200
    c = BillingBook(failure_ratio=0.0, rng=random.Random(1)).answer(_request(long_id), NOW)
    assert c is not None and PRINTABLE_ID.match(c["command_id"])
    assert c["recharge_request_id"] == long_id


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "ledger_entry"},
        _request(amount="fifty"),
        _request(amount=50),
        _request(amount="-1"),
        _request(attempt=0),
        _request(attempt=True),
        _request(request_id=""),
    ],
)
def test_billing_ignores_malformed_requests(bad: dict[str, Any]) -> None:
    book = BillingBook(failure_ratio=0.0, rng=random.Random(1))
    assert book.answer(bad, NOW) is None
    assert book.ignored_invalid == 1


# ---------------------------------------------------------------- config, pacing


def test_config_validates_ratios_and_applies_the_prefix() -> None:
    with pytest.raises(ValueError, match="garbage_ratio"):
        SimulatorConfig(bootstrap="x", garbage_ratio=1.5)
    with pytest.raises(ValueError, match="rate_per_second"):
        SimulatorConfig(bootstrap="x", rate_per_second=0)
    config = SimulatorConfig(bootstrap="x", topic_prefix="acme.")
    assert [config.topic(t) for t in SIMULATOR_TOPICS] == [
        "acme.usage.calls",
        "acme.usage.conferencing",
        "acme.credits.commands",
        "acme.credits.recharge-requests",
    ]
    assert config.topic(RECHARGE_REQUESTS) == "acme.credits.recharge-requests"
    assert config.group_id == "acme.credits-meter-simulator-billing"
    assert SimulatorConfig(bootstrap="x").group_id == "credits-meter-simulator-billing"


def test_token_bucket_paces_without_spinning() -> None:
    clock = [0.0]
    bucket = TokenBucket(rate=100.0, clock=lambda: clock[0])
    assert bucket.try_take(1000) == (1, 0.0)  # starts with one token
    taken, wait = bucket.try_take(1000)
    assert taken == 0 and wait == pytest.approx(0.01)
    clock[0] = 0.05
    assert bucket.try_take(1000)[0] == 5
    clock[0] = 10.0  # a long stall earns at most the burst capacity
    assert bucket.try_take(1000)[0] == 10


async def test_token_bucket_take_sleeps_until_a_token_is_due() -> None:
    bucket = TokenBucket(rate=200.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = 0
    while total < 40:
        total += await bucket.take(1000)
    assert loop.time() - start >= 0.15  # 40 tokens at 200/s, one given up front


# -------------------------------------------------------------------- live view


def _ledger(tenant: str, kind: str, amount: str, balance: str, n: int) -> dict[str, Any]:
    return {
        "type": "ledger_entry",
        "entry_id": f"{tenant}-{n}",
        "tenant_id": tenant,
        "kind": kind,
        "amount": amount,
        "currency": "USD",
        "balance_after": balance,
        "cause_topic": "usage.calls",
        "cause_id": f"ev-{n}",
        "occurred_at": "2026-11-23T10:00:00Z",
        "recorded_at": "2026-11-23T10:00:01Z",
    }


def _populated_state() -> ViewState:
    state = ViewState(bootstrap="127.0.0.1:19092", simulator=SimulatorStats(usage_sent=123))
    state.apply("ledger", _ledger("acme-corp", "credit", "50.00", "50.0000", 1))
    state.apply("ledger", _ledger("acme-corp", "debit", "0.0245", "49.9755", 2))
    state.apply("ledger", _ledger("globex", "credit", "5.00", "5.0000", 3))
    state.apply("ledger", _ledger("globex", "debit", "5.1200", "-0.1200", 4))
    state.apply("ledger", _ledger("initech.eu", "credit", "20.00", "20.0000", 5))
    state.apply(
        "alerts",
        {"type": "balance_alert", "alert_id": "a1", "tenant_id": "globex", "alert": "exhausted",
         "balance": "-0.1200", "currency": "USD", "occurred_at": "2026-11-23T10:00:02Z"},
    )  # fmt: skip
    state.apply(
        "alerts",
        {"type": "balance_alert", "alert_id": "a2", "tenant_id": "acme-corp",
         "alert": "restored", "balance": "50.0000", "currency": "USD",
         "occurred_at": "2026-11-23T10:00:00Z"},
    )  # fmt: skip
    state.apply("recharge", _request("rr-globex-1", tenant_id="globex"))
    state.apply(
        "commands",
        make_funds_added("globex", "50.00", "USD", NOW, "billing-paid-rr-globex-1",
                         source="auto_recharge", recharge_request_id="rr-globex-1"),
    )  # fmt: skip
    state.apply(
        "rejected",
        {"type": "rejected", "reason": "no_rate", "detail": "no rate for +999123456",
         "source_topic": "usage.calls", "source_partition": 0, "source_offset": 7,
         "key": "acme-corp", "payload": "{}", "rejected_at": "2026-11-23T10:00:03Z"},
    )  # fmt: skip
    state.apply("rejected", {"type": "rejected", "reason": "invalid_json", "detail": "x"})
    return state


def test_view_state_keeps_exact_balances_and_counts() -> None:
    state = _populated_state()
    assert state.tenants["acme-corp"].balance == Decimal("49.9755")
    assert isinstance(state.tenants["globex"].balance, Decimal)
    assert state.tenants["acme-corp"].debits == 1 and state.tenants["acme-corp"].credits == 1
    assert state.ledger_entries == 5 and state.ledger_debits == 2
    assert state.tenants["globex"].status == "exhausted"
    assert state.tenants["acme-corp"].status == "active"
    assert state.recharges["rr-globex-1"].outcome == "paid"
    assert state.rejections_by_reason == Counter({"no_rate": 1, "invalid_json": 1})
    assert state.exhausted == 1
    # Garbage on an input topic is not the view's problem; on an output topic it is.
    assert not state.apply("commands", None) and state.decode_errors == 0
    assert not state.apply("ledger", {"tenant_id": "x", "balance_after": 1.5})
    assert state.decode_errors == 1


def test_billing_outcome_read_before_its_request_is_kept() -> None:
    state = ViewState()
    state.apply(
        "commands", make_recharge_failed("globex", "rr-9", "card_declined", NOW, "billing-f")
    )
    state.apply("recharge", _request("rr-9", tenant_id="globex"))
    assert state.recharges["rr-9"].outcome == "failed: card_declined"
    state.apply("recharge", _request("rr-9", attempt=2, tenant_id="globex"))
    assert state.recharges["rr-9"].outcome == "pending"
    assert state.recharges["rr-9"].attempt == 2


def test_render_shows_tenants_by_lowest_balance() -> None:
    state = _populated_state()
    screen = render(state, width=120)
    for text in ("acme-corp", "globex", "initech.eu", "49.9755", "-0.1200", "20.0000",
                 "127.0.0.1:19092", "rr-globex-1", "paid", "no_rate 1", "invalid_json 1",
                 "exhausted", "usage 123"):  # fmt: skip
        assert text in screen, text
    assert screen.index("globex  ") < screen.index("initech.eu") < screen.index("acme-corp  ")
    assert all(len(line) <= 120 for line in screen.splitlines())
    assert "\x1b" not in screen


def test_render_is_bounded_by_width_and_rows() -> None:
    state = ViewState(bootstrap="b")
    for i in range(50):
        state.apply("ledger", _ledger(f"tenant-{i:02d}", "credit", "1", f"{i}.0000", i))
    screen = render(state, width=60, max_rows=10)
    assert all(len(line) <= 60 for line in screen.splitlines())
    assert "tenant-00" in screen and "tenant-09" in screen and "tenant-10" not in screen
    assert "40 more tenants" in screen
    assert "ledger=50" in summary_line(state)


def test_render_of_an_empty_state() -> None:
    screen = render(ViewState(bootstrap="b", waiting_for=("credits.ledger",)))
    assert "waiting for topics: credits.ledger" in screen and "(none yet)" in screen
