"""Encodings of the processor's records: `dumps` and the outputs' timestamps
(processor/kafka/wire.py), dedupe marks (processor/worker/codec.py)."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from processor.core.outputs import LedgerOut
from processor.core.stored import Mark, Position
from processor.kafka.wire import dump_output, dumps, output_from_dict
from processor.worker.codec import dump_mark, load_mark
from schemas.types import format_timestamp


def test_dumps_is_orjson_in_a_bytes_object_of_its_own_size() -> None:
    values = [{"e": 1_790_000_000 + i, "tp": "usage.calls:3", "o": i} for i in range(1000)]
    tracemalloc.start()
    try:
        held = [dumps(v) for v in values]
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held == [orjson.dumps(v) for v in values]
    # A batch holds its encoded records until it is produced: orjson's own result
    # would keep at least 4 KiB each.
    assert size < 1000 * 256


def test_a_mark_reads_back_as_written() -> None:
    mark = Mark(1_790_000_000, Position("usage.calls:3", 12))
    assert load_mark(dump_mark(mark)) == mark


def a_ledger_entry(occurred_at: datetime, recorded_at: datetime) -> LedgerOut:
    return LedgerOut(
        entry_id="e-1",
        tenant_id="acme",
        kind="credit",
        amount=Decimal("10.00"),
        balance_after=Decimal("10.00"),
        cause_topic="credits.commands",
        cause_id="c-1",
        occurred_at=occurred_at,
        recorded_at=recorded_at,
    )


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(8999, 12, 31), timezones=st.just(UTC)
    )
)
def test_outputs_carry_timestamps_exactly_as_format_timestamp_writes_them(at: datetime) -> None:
    # orjson writes UTC datetimes itself; the text must stay the contract's.
    entry = orjson.loads(dump_output(a_ledger_entry(at, at), "USD"))
    assert entry["occurred_at"] == entry["recorded_at"] == format_timestamp(at)


def test_a_timestamp_with_another_offset_is_written_in_utc() -> None:
    at = datetime(2026, 11, 25, 11, 30, tzinfo=timezone(timedelta(hours=1)))
    entry = orjson.loads(dump_output(a_ledger_entry(at, at.astimezone(UTC)), "USD"))
    assert entry["occurred_at"] == entry["recorded_at"] == "2026-11-25T10:30:00Z"
    assert output_from_dict(entry) == a_ledger_entry(at, at)


def test_a_status_alert_carries_its_status_seq_and_others_do_not() -> None:
    from processor.core.outputs import AlertKind, AlertOut
    from schemas import BalanceAlert

    at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    status = AlertOut("a-1", "acme", AlertKind.EXHAUSTED, Decimal("-0.0100"), at, status_seq=7)
    low = AlertOut("a-2", "acme", AlertKind.LOW_BALANCE, Decimal("-0.0100"), at)
    assert orjson.loads(dump_output(status, "USD"))["status_seq"] == 7
    assert "status_seq" not in orjson.loads(dump_output(low, "USD"))
    for out in (status, low):
        raw = dump_output(out, "USD")
        assert output_from_dict(orjson.loads(raw)) == out
        # byte for byte what the contract's model writes
        assert BalanceAlert.model_validate_json(raw).to_json() == raw
