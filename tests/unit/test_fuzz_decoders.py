"""Fuzz: over 10,000 malformed records through the processor's record path.

Each record goes through `Pipeline.handle` exactly as an agent hands it over
(decode, route, apply, publish), with dict stores and an in-memory publisher. For
every one: no exception escapes, exactly one `credits.rejected` record comes out and
nothing else, its reason is one the defect allows, it names the record's topic,
partition and offset and carries the original key and payload; and no account, dedupe
mark or recharge timer changes.

The records come from tests/support/malformed.py (each a valid event with one certain defect)
driven by Hypothesis, plus Hypothesis's own bytes, text and JSON values.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from processor.core.dedupe import DedupeWindow
from processor.core.state import RechargePolicy
from processor.core.stored import Mark, StoredAccount
from processor.kafka.topics import TopicNames
from processor.testing import MemoryPublisher
from processor.worker.pipeline import Pipeline
from processor.worker.records import Record, Source
from processor.worker.sizing import MAX_REJECTED_PAYLOAD, Limits, record_size
from schemas import DecodeError, RejectedRecord, decode_call, decode_command, decode_conference
from schemas.outputs import CommandResult
from schemas.types import parse_timestamp
from tests.support import malformed
from tests.support.malformed import CALLS, COMMANDS, CONFERENCING, TENANTS, Malformed

RECORDS = 10_000
# Records per Hypothesis example: the engine's per-example cost is several times the
# handler's per-record cost.
BATCH = 10
T0 = parse_timestamp(malformed.NOW)  # the events' time
NAMES = TopicNames(
    calls=CALLS,
    conferencing=CONFERENCING,
    commands=COMMANDS,
    recharge_requests="credits.recharge-requests",
    ledger="credits.ledger",
    alerts="credits.alerts",
    rejected="credits.rejected",
    reroute="meter-reroute",
    timer="meter-recharge-timer",
    accounts_changelog="meter-accounts-changelog",
    dedupe_changelog="meter-dedupe-changelog",
)
SOURCES = {CALLS: Source.CALLS, CONFERENCING: Source.CONFERENCING, COMMANDS: Source.COMMANDS}
DECODERS = {CALLS: decode_call, CONFERENCING: decode_conference, COMMANDS: decode_command}
# Sizes up to 1 MiB: above MAX_REJECTED_PAYLOAD, so truncation is exercised too.
KINDS = malformed.kinds(large_sizes=(1_000, 64_000, 300_000, 1_048_576))
BY_NAME = {k.name: k for k in KINDS}
# The handler adds these to the contract's RejectedRecord for payloads over 256 KiB;
# schemas.RejectedRecord (extra="forbid") does not declare them yet.
TRUNCATION_FIELDS = ("payload_truncated", "payload_size")


@dataclass
class Rig:
    """A Pipeline over dict stores, one partition, a fixed clock."""

    accounts: dict[str, StoredAccount] = field(default_factory=dict)
    seen: dict[str, Mark] = field(default_factory=dict)
    pub: MemoryPublisher = field(default_factory=MemoryPublisher)
    offsets: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline.build(
            malformed.CARD,
            RechargePolicy(timeout=timedelta(hours=1)),
            DedupeWindow(7),
            self.accounts,
            self.seen,
            NAMES,
            1,
            self.pub,
            clock=lambda: T0,
        )

    async def put(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Record, str]:
        # Offsets only grow, as in a real partition: a repeated position would be
        # taken for a replay after a crash.
        rec = Record(topic, 0, self.offsets[topic], key, value)
        self.offsets[topic] += 1
        return rec, await self.pipeline.handle(SOURCES[topic], rec)

    async def seed(self) -> None:
        """Accounts with funds, settings and usage, so there is something to corrupt."""
        rng = random.Random(3)
        n = 0
        for tenant in TENANTS:
            for topic, types in [
                (COMMANDS, ("funds_added",)),
                (COMMANDS, ("auto_recharge_configured",)),
                (CALLS, ()),
                (CONFERENCING, ()),
                (CALLS, ()),
            ]:
                n += 1
                body = malformed.valid_body(rng, topic, f"ok-{n}", tenant, types)
                _, status = await self.put(topic, tenant.encode(), malformed.dumps(body))
                assert status == "applied", (status, body)
        self.pub.sent.clear()

    def state(self) -> tuple[dict[str, Any], ...]:
        return dict(self.accounts), dict(self.seen), dict(self.pipeline.due.due)


def _original(text: str | None, encoding: str | None) -> bytes | None:
    if text is None:
        return None
    return base64.b64decode(text) if encoding == "base64" else text.encode()


def check_rejection(rig: Rig, m: Malformed, rec: Record, status: str) -> dict[str, Any]:
    assert status == "rejected", (m.kind, status, m.value[:300] if m.value else m.value)
    # A command that still names its id, tenant and type has a rejected result too.
    results = rig.pub.values(NAMES.command_results)
    assert len(results) <= 1 and (not results or m.topic == NAMES.commands), m.kind
    for result in results:
        CommandResult.model_validate(result)
        assert result["outcome"] == "rejected" and result["reason"] in m.reasons
    sent = [out for out in rig.pub.sent if out[0] != NAMES.command_results]
    assert [topic for topic, *_ in sent] == [NAMES.rejected], m.kind
    [body] = rig.pub.values(NAMES.rejected)
    assert body["reason"] in m.reasons, (m.kind, body["reason"], body["detail"])
    assert body["reason"] in malformed.KNOWN_REASONS  # never internal_error: a caught bug
    assert body["detail"]
    assert (body["source_topic"], body["source_partition"], body["source_offset"]) == (
        rec.topic,
        rec.partition,
        rec.offset,
    )
    assert _original(body["key"], body.get("key_encoding")) == m.key
    payload = _original(body["payload"], body.get("payload_encoding"))
    RejectedRecord.model_validate(body)  # the published shape is the contract's
    if m.value is None:
        assert body["payload"] is None  # a tombstone: no value to keep
    elif len(m.value) > MAX_REJECTED_PAYLOAD:
        assert body["payload_truncated"] is True and body["payload_size"] == len(m.value)
        assert body["payload_sha256"] == hashlib.sha256(m.value).hexdigest()
        # A prefix, shorter than 256 KiB when its JSON escapes would not fit the topic.
        assert payload is not None and m.value.startswith(payload)
        assert len(payload) == MAX_REJECTED_PAYLOAD or record_size(None, sent[0][2]) > (
            Limits().limit(NAMES.rejected) - 8 * 1024
        )
    else:
        assert "payload_truncated" not in body
        assert payload == m.value
    RejectedRecord.model_validate_json(
        json.dumps({k: v for k, v in body.items() if k not in TRUNCATION_FIELDS})
    )
    # Every rejection fits what the topic takes, keyed as it is sent.
    [(_, out_key, value, _)] = sent
    assert record_size(out_key, value) <= Limits().limit(NAMES.rejected)
    return body


# ------------------------------------------------------------------ strategies

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def records(draw: st.DrawFn) -> Malformed:
    name = draw(st.sampled_from([*BY_NAME, "hyp_bytes", "hyp_text", "hyp_json_field"]))
    # A seeded Random for the defect's details rather than st.randoms(): each of its
    # calls is a Hypothesis draw (~0.1 ms), which would triple the run time. The seed
    # still shrinks, and a failure prints it.
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    if name in BY_NAME:
        return malformed.make(BY_NAME[name], rng)
    topic = draw(st.sampled_from(malformed.TOPICS))
    tenant = rng.choice(TENANTS)
    key = malformed.key_for(rng, tenant)
    if name == "hyp_bytes":
        return Malformed(name, topic, key, draw(st.binary(max_size=500)), malformed.EITHER)
    if name == "hyp_text":
        # surrogatepass: lone surrogates become bytes that are not UTF-8.
        text = draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
        return Malformed(name, topic, key, text, malformed.EITHER)
    body = malformed.valid_body(rng, topic, f"bad-{rng.getrandbits(32)}", tenant)
    target = draw(st.sampled_from(sorted(body)))
    value = draw(JSON_VALUES)
    same_type = type(value) is type(body[target]) or (
        value is None and target in ("user_id", "participant_id", "recharge_request_id")
    )
    if same_type:
        value = [value]  # another JSON type than the valid one, so certainly invalid
    raw = json.dumps({**body, target: value}, allow_nan=True).encode()
    return Malformed(name, topic, key, raw, malformed.EITHER)


# ------------------------------------------------------------------------ tests


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # Hypothesis drives a plain function; the handler needs a running loop per call.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_the_bases_the_defects_start_from_are_valid_and_applied(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """If the bases were invalid, 'one certain defect' would prove nothing."""
    rig = Rig()
    rng = random.Random(11)
    for n in range(300):
        topic = malformed.TOPICS[n % 3]
        tenant = rng.choice(TENANTS)
        types = ("funds_added", "auto_recharge_configured") if n % 2 else ()
        body = malformed.valid_body(rng, topic, f"ok-{n}", tenant, types)
        DECODERS[topic](malformed.dumps(body))
        _, status = loop.run_until_complete(rig.put(topic, tenant.encode(), malformed.dumps(body)))
        # recharge_failed for a request that is not outstanding is valid but moot.
        assert status in ("applied", "ignored"), (status, body)
    assert rig.pub.values(NAMES.rejected) == []
    for table, numbers in malformed.RATED.items():
        for number in numbers:
            assert malformed.CARD.lookup(table, number) is not None, (table, number)


def test_malformed_records_are_rejected_one_for_one_and_change_nothing(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rig = Rig()
    loop.run_until_complete(rig.seed())
    before = rig.state()
    assert before[0], "the seed created no accounts"
    kinds: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    truncated = 0
    started = time.perf_counter()

    @settings(
        max_examples=RECORDS // BATCH,
        deadline=None,
        database=None,
        derandomize=True,  # the same 10,000 records on every run and machine
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(records(), min_size=BATCH, max_size=BATCH))
    def some(batch: list[Malformed]) -> None:
        nonlocal truncated
        for m in batch:
            rig.pub.sent.clear()
            rec, status = loop.run_until_complete(rig.put(m.topic, m.key, m.value))
            body = check_rejection(rig, m, rec, status)
            # Per record, so a failure names the record that changed something.
            assert rig.state() == before, f"{m.kind} changed state: {m.value!r:.300}"
            kinds[m.kind] += 1
            reasons[body["reason"]] += 1
            truncated += bool(body.get("payload_truncated"))

    some()
    elapsed = time.perf_counter() - started
    fuzzed = sum(kinds.values())
    assert fuzzed >= RECORDS
    assert set(kinds) == {*BY_NAME, "hyp_bytes", "hyp_text", "hyp_json_field"}
    assert {"invalid_json", "invalid_event", "no_rate", "currency_mismatch"} <= set(reasons)
    assert truncated > 0
    assert rig.state() == before
    print(
        f"\nfuzzed {fuzzed} records in {elapsed:.1f}s: crashes 0, balance changes 0, "
        f"truncated payloads {truncated}\nby reason: {dict(reasons.most_common())}\n"
        f"by kind: {dict(sorted(kinds.items()))}"
    )


@pytest.mark.parametrize("topic", malformed.TOPICS)
def test_a_key_named_twice_is_an_invalid_event_never_last_wins(topic: str) -> None:
    rng = random.Random(5)
    body = malformed.valid_body(rng, topic, "dup-1", "acme", ("funds_added",))
    text = malformed.dumps(body).decode()
    field_ = "amount" if topic == COMMANDS else "duration_seconds"
    later = '"999999.00"' if topic == COMMANDS else "86400"
    cases = {
        "last": text[:-1] + f',"{field_}":{later}}}',
        "first": "{" + f'"{field_}":{later},' + text[1:],
        "same value": text[:-1] + f',"tenant_id":"{body["tenant_id"]}"}}',
        "spaced": json.dumps({**body}, indent=2)[:-2] + f',\n  "{field_}" : {later}\n}}',
        "nested": text[:-1] + ',"meta":{"a":{"k":1,"k":2}}}',
        "in a list": text[:-1] + ',"meta":[{"x":1},{"x":1,"x":1}]}',
    }
    for name, raw in cases.items():
        with pytest.raises(DecodeError) as caught:
            DECODERS[topic](raw.encode())
        assert caught.value.reason == "invalid_event", name
        assert "more than once" in caught.value.detail, name
    assert "k: " in _detail(DECODERS[topic], cases["nested"])
    assert _detail(DECODERS[topic], cases["last"]).startswith(f"{field_}: ")
    # Not fooled: distinct keys that look alike, unknown fields, nesting, spacing.
    for raw in (
        text[:-1] + ',"meta":{"amount":"5.00","a":{"amount":1}}}',
        text[:-1] + ',"note":"\\":\\":"}',
        json.dumps(body, indent=2),
        json.dumps(body),
    ):
        DECODERS[topic](raw.encode())


def _detail(decode: Any, raw: str) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(raw.encode())
    return caught.value.detail
