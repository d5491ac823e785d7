"""`meter replay-rejected`'s selection, without Kafka (processor.ops.replay.select/finish).

The round trip through the real Intake checks the part that must never drift:
what the handler writes to credits.rejected is read back as the original key and bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.dedupe import DedupeWindow
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.core.state import RechargePolicy
from processor.kafka.topics import TopicNames
from processor.ops import cli, common
from processor.ops.replay import (
    DEFAULT_REASONS,
    REPLAY_HEADER,
    ReplayReport,
    SourceRef,
    _headers,
    finish,
    parse_since,
    record_id,
    replay_reasons,
    select,
)
from processor.testing import MemoryPublisher
from processor.worker.pipeline import Pipeline
from processor.worker.records import H_FORCE_TOO_OLD, Record
from processor.worker.sizing import MAX_REJECTED_PAYLOAD
from schemas.types import format_timestamp

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
CARD = load_rate_card(example_rate_card_path())
NAMES = TopicNames(
    calls="p.usage.calls",
    conferencing="p.usage.conferencing",
    commands="p.credits.commands",
    recharge_requests="p.credits.recharge-requests",
    ledger="p.credits.ledger",
    alerts="p.credits.alerts",
    rejected="p.credits.rejected",
    reroute="p.app-reroute",
    timer="p.app-recharge-timer",
    accounts_changelog="app-accounts-changelog",
    dedupe_changelog="app-dedupe-changelog",
)
INPUTS = frozenset({NAMES.calls, NAMES.conferencing, NAMES.commands})


def handler_rejection(key: bytes | None, value: bytes | None, reason: str = "no_rate") -> bytes:
    """The credits.rejected value the processor itself writes for this record."""
    pub = MemoryPublisher()
    pipeline = Pipeline.build(
        CARD,
        RechargePolicy(timeout=timedelta(hours=1)),
        DedupeWindow(7),
        {},
        {},
        NAMES,
        1,
        pub,
        clock=lambda: T0,
    )
    record = Record(NAMES.calls, 3, 42, key, value)
    # Intake.reject is the one place that writes rejections; going through it (rather
    # than a copy of its format) is what makes this test catch a drift.
    pipeline.intake.reject(record, reason, "test")
    asyncio.run(pipeline.flusher.flush())
    [(topic, _key, raw, _headers)] = pub.sent
    assert topic == NAMES.rejected
    return raw


def rejection(
    reason: str = "no_rate",
    source: tuple[str, int, int] = (NAMES.calls, 0, 1),
    at: datetime = T0,
    key: str | None = "acme",
    payload: str | None = '{"event_id": "e1"}',
    **extra: Any,
) -> bytes:
    body: dict[str, Any] = {
        "type": "rejected",
        "reason": reason,
        "detail": "d",
        "source_topic": source[0],
        "source_partition": source[1],
        "source_offset": source[2],
        "key": key,
        "payload": payload,
        "rejected_at": format_timestamp(at),
        **extra,
    }
    return json.dumps(body).encode()


def rows(*values: bytes | None) -> list[tuple[str, bytes | None]]:
    return [(f"{NAMES.rejected}[0]@{i}", v) for i, v in enumerate(values)]


# ------------------------------------------------------------------ round trip


@settings(max_examples=300, deadline=None)
@given(
    key=st.none() | st.binary(max_size=64),
    value=st.binary(max_size=2_000) | st.text(max_size=500).map(str.encode),
)
def test_the_original_key_and_bytes_come_back_from_the_handlers_rejection(
    key: bytes | None, value: bytes
) -> None:
    sel = select(rows(handler_rejection(key, value)), reasons=DEFAULT_REASONS, inputs=INPUTS)
    [replay] = finish(sel, None)
    assert (replay.key, replay.value) == (key, value)
    assert replay.rejected.source == SourceRef(NAMES.calls, 3, 42)
    assert not sel.warnings


def test_a_rejection_with_a_truncated_key_is_read_back_from_its_source() -> None:
    key = b"k" * 5000
    sel = select(rows(handler_rejection(key, b"not json")), reasons=DEFAULT_REASONS, inputs=INPUTS)
    [replay] = finish(sel, None)
    # Never the prefix of the key: the original record is read back, key and value.
    assert replay.value is None
    assert replay.rejected.payload_size == len(b"not json")


def test_force_too_old_selects_too_old_and_marks_the_replays() -> None:
    assert replay_reasons((), force_too_old=True) == {"too_old"}
    assert replay_reasons(("no_rate",), force_too_old=True) == {"no_rate", "too_old"}
    assert "too_old" not in replay_reasons(())
    sel = select(
        rows(
            rejection("too_old", (NAMES.calls, 0, 1), payload='{"event_id": "e1"}'),
            rejection("no_rate", (NAMES.calls, 0, 2), payload='{"event_id": "e2"}'),
        ),
        reasons=replay_reasons(("no_rate",), force_too_old=True),
        inputs=INPUTS,
    )
    old, unrated = finish(sel, None)
    assert _headers(old, True) == [
        (REPLAY_HEADER, f"{NAMES.calls}[0]@1".encode()),
        (H_FORCE_TOO_OLD, b"1"),
    ]
    # An old event rejected since for another reason is forced as well.
    assert _headers(unrated, True) == [
        (REPLAY_HEADER, f"{NAMES.calls}[0]@2".encode()),
        (H_FORCE_TOO_OLD, b"1"),
    ]
    assert _headers(old, False) == [(REPLAY_HEADER, f"{NAMES.calls}[0]@1".encode())]


@pytest.mark.parametrize("value", [b"x" * (MAX_REJECTED_PAYLOAD + 1), b"\xff" * 300_000])
def test_a_truncated_rejection_is_selected_for_a_read_back_from_its_source(value: bytes) -> None:
    sel = select(rows(handler_rejection(b"acme", value)), reasons=DEFAULT_REASONS, inputs=INPUTS)
    [replay] = finish(sel, None)
    # Never the prefix: replaying it would send a record that was never produced.
    assert replay.value is None
    assert replay.rejected.payload_size == len(value)
    assert replay.rejected.source == SourceRef(NAMES.calls, 3, 42)


# -------------------------------------------------------------------- selection


def test_by_default_the_fixable_reasons_are_replayed_and_the_others_are_not() -> None:
    reasons = ["no_rate", "currency_mismatch", "internal_error", "invalid_json", "invalid_event"]
    values = [
        rejection(r, source=(NAMES.calls, 0, i), payload=f'"{r}"') for i, r in enumerate(reasons)
    ]
    sel = select(rows(*values), reasons=DEFAULT_REASONS, inputs=INPUTS)
    chosen = finish(sel, None)
    assert [r.rejected.reason for r in chosen] == ["no_rate", "currency_mismatch", "internal_error"]
    assert [r.value for r in chosen] == [b'"no_rate"', b'"currency_mismatch"', b'"internal_error"']
    assert sel.skipped == {
        "reason invalid_json not selected": 1,
        "reason invalid_event not selected": 1,
    }


def test_reasons_asked_for_replace_the_defaults_but_invalid_json_is_refused() -> None:
    assert replay_reasons([]) == DEFAULT_REASONS
    assert replay_reasons(["invalid_event"]) == {"invalid_event"}
    assert replay_reasons(["no_rate", "no_rate"]) == {"no_rate"}
    with pytest.raises(ValueError, match="invalid_json are never replayed"):
        replay_reasons(["no_rate", "invalid_json"])


def test_since_keeps_rejections_at_or_after_it() -> None:
    values = [
        rejection(source=(NAMES.calls, 0, i), at=T0 + timedelta(minutes=i), payload=f'"{i}"')
        for i in range(3)
    ]
    sel = select(
        rows(*values),
        reasons=DEFAULT_REASONS,
        inputs=INPUTS,
        since=T0 + timedelta(minutes=1),
    )
    assert [r.rejected.source.offset for r in finish(sel, None)] == [1, 2]
    assert sel.skipped == {"rejected before --since": 1}
    assert parse_since("2026-11-25T11:00:00+01:00") == T0
    with pytest.raises(ValueError, match="--since 'yesterday'"):
        parse_since("yesterday")


def test_oldest_rejections_go_first_and_limit_counts_what_it_leaves() -> None:
    values = [
        rejection(source=(NAMES.commands, 1, 7), at=T0 + timedelta(seconds=2), payload='"b"'),
        rejection(source=(NAMES.calls, 0, 9), at=T0, payload='"a"'),
        rejection(source=(NAMES.calls, 0, 3), at=T0 + timedelta(seconds=5), payload='"c"'),
    ]
    sel = select(rows(*values), reasons=DEFAULT_REASONS, inputs=INPUTS)
    chosen = finish(sel, 2)
    assert [r.value for r in chosen] == [b'"a"', b'"b"']
    assert sel.skipped == {"over --limit": 1}


def test_a_source_record_rejected_twice_is_replayed_once() -> None:
    # A worker that re-processed its last records after a crash rejects them again.
    first = rejection(at=T0)
    again = rejection(at=T0 + timedelta(seconds=1))
    sel = select(rows(again, first), reasons=DEFAULT_REASONS, inputs=INPUTS)
    [replay] = finish(sel, None)
    assert replay.rejected.rejected_at == T0
    assert sel.skipped == {"source record rejected more than once": 1}


def test_a_replay_rejected_again_is_not_sent_twice_in_one_run() -> None:
    original = rejection(source=(NAMES.calls, 0, 1), at=T0)
    # The earlier replay of the same bytes, rejected again (cause not fixed then).
    replayed = rejection(source=(NAMES.calls, 2, 40), at=T0 + timedelta(hours=1))
    other_key = rejection(source=(NAMES.calls, 1, 5), at=T0, key="globex")
    sel = select(rows(original, replayed, other_key), reasons=DEFAULT_REASONS, inputs=INPUTS)
    chosen = finish(sel, None)
    assert sorted(r.rejected.source.offset for r in chosen) == [1, 5]
    assert sel.skipped == {"same payload already selected": 1}


def test_records_not_from_an_input_topic_are_skipped() -> None:
    values = [
        rejection(source=(NAMES.reroute, 0, 1)),
        rejection(source=(NAMES.timer, 0, 1)),
        rejection(source=("other.usage.calls", 0, 1)),
    ]
    sel = select(rows(*values), reasons=DEFAULT_REASONS, inputs=INPUTS)
    assert finish(sel, None) == []
    assert sel.skipped == {"not from an input topic": 3}


def test_base64_key_and_payload_are_decoded() -> None:
    key, payload = b"\xff\x00k", b"\xc3\x28{...}"
    value = rejection(
        key=base64.b64encode(key).decode(),
        key_encoding="base64",
        payload=base64.b64encode(payload).decode(),
        payload_encoding="base64",
        some_field_added_later=True,
    )
    [replay] = finish(select(rows(value), reasons=DEFAULT_REASONS, inputs=INPUTS), None)
    assert (replay.key, replay.value) == (key, payload)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"not json",
        b"[]",
        json.dumps({"type": "ledger_entry"}).encode(),
        rejection(rejected_at="yesterday"),
        rejection(payload="!!", payload_encoding="base64"),
        rejection(payload="x", payload_encoding="rot13"),
        # arg-type: a malformed source (partition "zero") is the test
        rejection(source=(NAMES.calls, "zero", 1)),  # type: ignore[arg-type]
        json.dumps({"type": "rejected", "reason": "no_rate"}).encode(),
    ],
)
def test_unreadable_rejected_records_are_skipped_with_a_warning(value: bytes | None) -> None:
    sel = select(rows(value), reasons=DEFAULT_REASONS, inputs=INPUTS)
    assert sel.replays == []
    assert sel.skipped == {"unreadable rejected record": 1}
    assert len(sel.warnings) == 1 and sel.warnings[0].startswith(f"{NAMES.rejected}[0]@0: ")


def test_record_id_names_the_event_or_command() -> None:
    assert record_id(b'{"event_id": "e1"}') == "e1"
    assert record_id(b'{"command_id": "c1", "type": "funds_added"}') == "c1"
    assert record_id(b"\xff") == "?"
    assert record_id(None) == "?"


def test_the_report_says_what_was_replayed_skipped_and_wrong() -> None:
    report = ReplayReport(dry_run=True, read=5)
    report.replayed.update(["no_rate", "no_rate", "currency_mismatch"])
    report.skipped["reason invalid_json not selected"] = 2
    report.problems.append("p.usage.calls[0]@3: gone")
    text = report.render()
    assert "would replay: 3 (currency_mismatch 1, no_rate 2)" in text
    assert "reason invalid_json not selected: 2" in text
    assert "PROBLEM p.usage.calls[0]@3: gone" in text
    assert text.endswith("problems: 1")


# ----------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "args",
    [
        ["--reason", "invalid_json"],
        ["--reason", "no_rate", "--reason", "invalid_json"],
        ["--since", "yesterday"],
        ["--limit", "0"],
    ],
)
def test_bad_usage_exits_2_before_touching_kafka(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["replay-rejected", *args]) == common.EXIT_USAGE
    assert capsys.readouterr().err.startswith("meter replay-rejected: ")


def test_the_help_names_every_default_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["replay-rejected", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for reason in DEFAULT_REASONS:
        assert reason in out


def test_reconcile_judges_event_times_as_the_workers_do() -> None:
    """An event older than the window when it arrived was refused by the workers
    (too_old), unless a replay forced it; reconcile counts it the same way."""
    from processor.ops.reconcile import Raw, expected_accounts

    arrived = T0 + timedelta(days=8)
    ms = int(arrived.timestamp() * 1000)
    funds = {
        "type": "funds_added",
        "command_id": "c-old",
        "tenant_id": "acme",
        "occurred_at": format_timestamp(T0),
        "amount": "5.00",
        "currency": "USD",
        "source": "manual",
    }
    value = json.dumps(funds).encode()
    forced = ((REPLAY_HEADER, b"x"), (H_FORCE_TOO_OLD, b"1"))
    window = DedupeWindow(7)
    inputs = [Raw(NAMES.commands, 0, 0, value, ms)]
    assert expected_accounts(CARD, NAMES, inputs, window)[0] == {}
    # Without the workers' window (the old call), everything counts.
    assert "acme" in expected_accounts(CARD, NAMES, inputs)[0]
    # The force header alone is not a replay's word.
    alone = [Raw(NAMES.commands, 0, 0, value, ms, ((H_FORCE_TOO_OLD, b"1"),))]
    assert expected_accounts(CARD, NAMES, alone, window)[0] == {}
    replayed = [*inputs, Raw(NAMES.commands, 0, 1, value, ms, forced)]
    accounts, _ = expected_accounts(CARD, NAMES, replayed, window)
    assert str(accounts["acme"].account.balance) == "5.0000"
