"""The worker's usage decode gives the contract models' verdict on every record.

`read_call` and `read_conference` take most records through a path of their own
(orjson and hand-written checks) rather than through the models. Over the malformed
records of tests/support/malformed.py, and over Hypothesis's records built field by
field from values on either side of each check, they must accept exactly what the
models accept, with the same values, and refuse everything else with the models'
reason and detail. The common records must take the fast path, or its gain is gone
without a test noticing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.core.usage import UsageEvent
from processor.dev.simulator import events as sim
from processor.dev.simulator.tenants import generate_tenants
from processor.kafka.usage_wire import (
    call_event,
    common_call,
    common_conference,
    conference_event,
    read_call,
    read_conference,
)
from schemas import DecodeError, decode_call, decode_conference
from tests.support import malformed
from tests.support.malformed import CALLS, CONFERENCING

Verdict = UsageEvent | tuple[str, str]


def _verdict(decode: Callable[[bytes | None], UsageEvent], raw: bytes | None) -> Verdict:
    try:
        return decode(raw)
    except DecodeError as err:
        return (err.reason, err.detail)


def models(topic: str, raw: bytes | None) -> Verdict:
    """What the contract's models make of `raw`."""
    if topic == CALLS:
        return _verdict(lambda r: call_event(decode_call(r)), raw)
    return _verdict(lambda r: conference_event(decode_conference(r)), raw)


def worker(topic: str, raw: bytes | None) -> Verdict:
    """What the worker's decode makes of `raw`."""
    return _verdict(read_call if topic == CALLS else read_conference, raw)


KINDS = [k for k in malformed.kinds(large_sizes=(1_000, 70_000)) if CALLS in k.topics]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), kind=st.sampled_from(KINDS))
def test_malformed_usage_gets_the_models_verdict(rng: random.Random, kind: malformed.Kind) -> None:
    record = malformed.make(malformed.Kind(kind.name, kind.defect, malformed.USAGE), rng)
    assert worker(record.topic, record.value) == models(record.topic, record.value)


@settings(max_examples=200, deadline=None)
@given(rng=st.randoms(use_true_random=False), topic=st.sampled_from(malformed.USAGE))
def test_valid_usage_takes_the_common_path_to_the_models_value(
    rng: random.Random, topic: str
) -> None:
    tenant = rng.choice(malformed.TENANTS)
    body = malformed.valid_body(rng, topic, f"ok-{rng.getrandbits(32)}", tenant, ())
    raw = malformed.dumps(body)
    common = common_call(raw) if topic == CALLS else common_conference(raw)
    assert common is not None
    assert common == models(topic, raw)


@pytest.mark.parametrize(
    ("topic", "optional"), [(CALLS, "user_id"), (CONFERENCING, "participant_id")]
)
def test_a_null_optional_field_takes_the_common_path(topic: str, optional: str) -> None:
    body = malformed.valid_body(random.Random(1), topic, "ev-1", "acme", ())
    raw = malformed.dumps(body | {optional: None})
    common = common_call(raw) if topic == CALLS else common_conference(raw)
    assert common is not None
    assert common == models(topic, raw)


def test_the_simulators_records_take_the_common_path() -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    for n, tenant in enumerate(generate_tenants(20, rng)):
        call = sim.encode(sim.make_call_usage(tenant, rng, now, f"ev-{n}"))
        leg = sim.encode(sim.make_conference_usage(tenant, rng, now, f"leg-{n}"))
        assert common_call(call) == models(CALLS, call)
        assert common_conference(leg) == models(CONFERENCING, leg)


# ---- records built field by field from values either side of each check ---------------

ASCII_EDGES = ["", " ", "~", "\x7f", "\x1f", "\t", "\n", "é", "٣", "²", "\u2028", "😀"]


def _text(alphabet: str, sizes: tuple[int, ...]) -> st.SearchStrategy[str]:
    """Text of the sizes either side of a limit, from `alphabet` plus one stray
    character that may break the check."""
    return st.builds(
        lambda size, fill, stray, where: _spliced(fill * size, stray, where),
        st.sampled_from(sizes),
        st.sampled_from(alphabet),
        st.sampled_from(["", *ASCII_EDGES]),
        st.integers(0, 300),
    )


def _spliced(text: str, stray: str, where: int) -> str:
    where = min(where, len(text))
    return text[:where] + stray + text[where:]


JSON_OTHERS = st.sampled_from([None, 0, -1, 1.0, 1.5, True, False, [], {}, ["x"], {"a": 1}])
TENANT = st.one_of(_text("aZ09._:-", (0, 1, 63, 64, 65)), JSON_OTHERS)
ID = st.one_of(_text("a ~Z0", (0, 1, 127, 128, 129)), JSON_OTHERS)
EXTERNAL = st.one_of(_text("aé😀", (0, 1, 255, 256, 257)), JSON_OTHERS)
OPTIONAL = st.one_of(_text("a", (0, 1, 127, 128, 129)), JSON_OTHERS)
NUMBER = st.one_of(
    st.sampled_from(["+14155550100", "+1", "+12", "+123456789012345", "+1234567890123456"]),
    st.sampled_from(["+04155550100", "14155550100", "+1415555010a", "+1٣15", "+1²3", "+ 12"]),
    st.sampled_from(["+14155550100\n", "++14155550100", "+", ""]),
    JSON_OTHERS,
)
TIMESTAMP = st.one_of(
    st.sampled_from(
        [
            "2026-11-23T10:00:00Z",
            "2026-11-23T10:00:00.123456Z",
            "2026-11-23t10:00:00z",
            "2026-11-23T10:00:00+02:00",
            "2026-11-23T10:00:00",
            "2026-11-23",
            "2026-02-30T10:00:00Z",
            "1969-12-31T23:59:59Z",
            "9000-01-01T00:00:00Z",
            "8999-12-31T23:59:59.999999Z",
            "2026-11-23T10:00:00Z\n",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:00:60Z",
        ]
    ),
    JSON_OTHERS,
)
SECONDS = st.one_of(
    st.sampled_from([0, 1, 86_400, 86_401, -1, 2**63, -(2**63) - 1, 10**30]),
    st.sampled_from([0.0, 60.0, "60", True, None]),
)


def _field_values(topic: str) -> dict[str, st.SearchStrategy[Any]]:
    common: dict[str, st.SearchStrategy[Any]] = {
        "event_id": ID,
        "tenant_id": TENANT,
        "occurred_at": TIMESTAMP,
        "duration_seconds": SECONDS,
    }
    if topic == CALLS:
        kinds = st.sampled_from(["outbound", "toll_free_inbound", "Outbound", "dial_out", 1])
        return common | {
            "call_id": EXTERNAL,
            "user_id": OPTIONAL,
            "call_type": kinds,
            "source_number": NUMBER,
            "destination_number": NUMBER,
        }
    legs = st.sampled_from(["dial_out", "toll_free_dial_in", "outbound", "", None])
    return common | {
        "conference_id": EXTERNAL,
        "participant_id": OPTIONAL,
        "leg_type": legs,
        "number": NUMBER,
    }


@st.composite
def usage_records(draw: st.DrawFn) -> tuple[str, bytes]:
    """A usage record whose fields are each valid or just not, some absent, some extra,
    in compact or spaced JSON, escaped or not."""
    topic = draw(st.sampled_from(malformed.USAGE))
    rng = draw(st.randoms(use_true_random=False))
    body = malformed.valid_body(rng, topic, "ev-1", "acme", ())
    fields = _field_values(topic)
    # Mostly one field changed, so the rest pass and the change alone decides.
    changed = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3))
    for name in changed[: 1 if draw(st.integers(0, 4)) else None]:
        if draw(st.integers(0, 9)):
            body[name] = draw(fields[name])
        else:
            body.pop(name, None)
    if draw(st.integers(0, 4)) == 0:
        body[draw(st.sampled_from(["meta", "event_id", "x"]))] = draw(JSON_OTHERS)
    separators = draw(st.sampled_from([(",", ":"), (",", ":"), (", ", ": "), (",", " :")]))
    text = json.dumps(body, separators=separators, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # a key named twice, in text
        text = text[:-1] + ',"tenant_id":"other"}'
    return topic, text.encode("utf-8", "surrogatepass")


@settings(max_examples=3000, deadline=None)
@given(record=usage_records())
def test_usage_built_field_by_field_gets_the_models_verdict(record: tuple[str, bytes]) -> None:
    topic, raw = record
    assert worker(topic, raw) == models(topic, raw)


@pytest.mark.parametrize(
    "raw", [None, b"", bytearray(b"{}"), memoryview(b"{}"), "{}", 3, b"null", b"[]", b'"x"']
)
@pytest.mark.parametrize("topic", malformed.USAGE)
def test_values_that_are_no_object_get_the_models_verdict(topic: str, raw: Any) -> None:
    assert worker(topic, raw) == models(topic, raw)
