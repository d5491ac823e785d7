"""Tests for schemas/: the contract's events as pydantic models, the decoders the
processor uses on its hot path, output serialisation and the JSON Schema drift check."""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import (
    COMMAND_ADAPTER,
    AccountView,
    AutoRechargeConfigured,
    AutoRechargeView,
    BalanceAlert,
    CallUsage,
    ConferenceUsage,
    DecodeError,
    FundsAdded,
    LedgerEntry,
    PendingRechargeView,
    RechargeFailed,
    RechargeRequested,
    RejectedRecord,
    decode_call,
    decode_command,
    decode_conference,
    export,
    format_money,
    format_timestamp,
    parse_money,
)

Decoder = Callable[[bytes | None], Any]

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

CALL: dict[str, Any] = {
    "event_id": "evt-0001",
    "tenant_id": "acme",
    "occurred_at": "2026-11-23T10:00:00Z",
    "call_id": "call-1",
    "user_id": "user-7",
    "call_type": "outbound",
    "source_number": "+14155550100",
    "destination_number": "+442071234567",
    "duration_seconds": 125,
}
CONFERENCE: dict[str, Any] = {
    "event_id": "evt-0002",
    "tenant_id": "acme",
    "occurred_at": "2026-11-23T10:05:00+01:00",
    "conference_id": "conf-9",
    "participant_id": "p-1",
    "leg_type": "dial_out",
    "number": "+14155550123",
    "duration_seconds": 600,
}
FUNDS: dict[str, Any] = {
    "type": "funds_added",
    "command_id": "cmd-1",
    "tenant_id": "acme",
    "occurred_at": "2026-11-23T09:00:00Z",
    "amount": "50.00",
    "currency": "USD",
    "source": "manual",
}
FUNDS_AUTO: dict[str, Any] = {
    **FUNDS,
    "command_id": "cmd-2",
    "source": "auto_recharge",
    "recharge_request_id": "rr-acme-1",
}
SETTINGS: dict[str, Any] = {
    "type": "auto_recharge_configured",
    "command_id": "cmd-3",
    "tenant_id": "acme",
    "occurred_at": "2026-11-23T09:00:00Z",
    "enabled": True,
    "recharge_amount": "25.00",
    "trigger_balance": "5.00",
}
FAILED: dict[str, Any] = {
    "type": "recharge_failed",
    "command_id": "cmd-4",
    "tenant_id": "acme",
    "occurred_at": "2026-11-23T09:30:00Z",
    "recharge_request_id": "rr-acme-1",
    "reason": "card declined",
}


def enc(value: Any) -> bytes:
    return json.dumps(value).encode()


def with_field(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    return {**base, field: value}


def without(base: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != field}


def rejects(decoder: Decoder, raw: bytes | None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decoder(raw)
    return info.value


# ------------------------------------------------------------------- valid inputs


def test_call_usage_parses() -> None:
    call = decode_call(enc(CALL))
    assert isinstance(call, CallUsage)
    assert call.event_id == "evt-0001"
    assert call.call_type == "outbound"
    assert call.duration_seconds == 125
    assert call.occurred_at == NOW
    assert call.occurred_at.tzinfo is UTC


def test_conference_usage_parses_and_normalises_offset_to_utc() -> None:
    conf = decode_conference(enc(CONFERENCE))
    assert isinstance(conf, ConferenceUsage)
    assert conf.leg_type == "dial_out"
    assert conf.occurred_at == datetime(2026, 11, 23, 9, 5, tzinfo=UTC)
    assert conf.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("payload", "model"),
    [
        (FUNDS, FundsAdded),
        (FUNDS_AUTO, FundsAdded),
        (SETTINGS, AutoRechargeConfigured),
        (FAILED, RechargeFailed),
    ],
)
def test_commands_parse_to_their_model(payload: dict[str, Any], model: type[BaseModel]) -> None:
    command = decode_command(enc(payload))
    assert type(command) is model
    assert command.type == payload["type"]


def test_money_is_exact_decimal_keeping_its_scale() -> None:
    funds = decode_command(enc(with_field(FUNDS, "amount", "0.10")))
    assert isinstance(funds, FundsAdded)
    assert funds.amount == Decimal("0.10")
    assert str(funds.amount) == "0.10"
    big = decode_command(enc(with_field(SETTINGS, "trigger_balance", "999999.999999999999")))
    assert isinstance(big, AutoRechargeConfigured)
    assert big.trigger_balance == Decimal("999999.999999999999")


def test_optional_fields_may_be_absent_and_extra_fields_are_ignored() -> None:
    call = decode_call(enc({**without(CALL, "user_id"), "codec": "opus", "nested": {"a": [1]}}))
    assert call.user_id is None
    assert not hasattr(call, "codec")
    conf = decode_conference(enc(without(CONFERENCE, "participant_id")))
    assert conf.participant_id is None


def test_toll_free_variants_and_boundaries_accepted() -> None:
    decode_call(enc(with_field(CALL, "call_type", "toll_free_inbound")))
    decode_conference(enc(with_field(CONFERENCE, "leg_type", "toll_free_dial_in")))
    for duration in (0, 86400):
        decode_call(enc(with_field(CALL, "duration_seconds", duration)))
    decode_call(enc(with_field(CALL, "tenant_id", "a" * 64)))
    decode_call(enc(with_field(CALL, "tenant_id", "Org.1_a:b-C")))
    decode_call(enc(with_field(CALL, "event_id", "~" * 128)))
    decode_call(enc(with_field(CALL, "event_id", "a b!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")))
    decode_call(enc(with_field(CALL, "destination_number", "+12")))
    decode_call(enc(with_field(CALL, "destination_number", "+123456789012345")))
    decode_command(enc(with_field(FUNDS, "amount", "1000000")))
    decode_command(enc(with_field(FUNDS, "amount", "0.000000000001")))
    decode_command(enc(with_field(SETTINGS, "trigger_balance", "0")))
    decode_command(enc(with_field(SETTINGS, "enabled", False)))


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-23T10:00:00Z",
        "2026-11-23t10:00:00z",
        "2026-11-23T10:00:00.5Z",
        "2026-11-23T10:00:00.123456789-05:00",
        "2026-11-23T10:00:00+00:00",
        "2026-11-23T10:00:00-00:00",
    ],
)
def test_rfc3339_timestamps_accepted(stamp: str) -> None:
    call = decode_call(enc(with_field(CALL, "occurred_at", stamp)))
    assert call.occurred_at.tzinfo is UTC


def test_manual_funds_may_name_a_request() -> None:
    funds = decode_command(enc(with_field(FUNDS, "recharge_request_id", "rr-9")))
    assert isinstance(funds, FundsAdded)
    assert funds.recharge_request_id == "rr-9"


def test_command_adapter_validates_python_dicts() -> None:
    command = COMMAND_ADAPTER.validate_python(FAILED)
    assert isinstance(command, RechargeFailed)


# --------------------------------------------------------------- invalid events

CALL_CASES: list[tuple[str, Any, str]] = [
    # (field, value, text the detail must contain)
    ("destination_number", "+0123456", "E.164"),
    ("destination_number", "+1", "E.164"),
    ("destination_number", "+1234567890123456", "E.164"),
    ("destination_number", "14155550100", "E.164"),
    ("destination_number", "+1415555010a", "E.164"),
    ("destination_number", "+\uff11\uff12\uff13\uff14", "E.164"),  # fullwidth digits
    ("destination_number", "+14155550100\n", "E.164"),
    ("source_number", 14155550100, "source_number"),
    ("tenant_id", "a" * 65, "1 to 64"),
    ("tenant_id", "", "1 to 64"),
    ("tenant_id", "acme corp", "1 to 64"),
    ("tenant_id", "acmé", "1 to 64"),
    ("tenant_id", "acme/1", "1 to 64"),
    ("tenant_id", 42, "tenant_id"),
    ("event_id", "e" * 129, "printable ASCII"),
    ("event_id", "", "printable ASCII"),
    ("event_id", "evt\x01", "printable ASCII"),
    ("event_id", "evt\t1", "printable ASCII"),
    ("event_id", "evt\x7f", "printable ASCII"),
    ("event_id", "évt", "printable ASCII"),
    ("occurred_at", "2026-11-23T10:00:00", "offset"),
    ("occurred_at", "2026-11-23 10:00:00Z", "offset"),
    ("occurred_at", "2026-11-23", "offset"),
    ("occurred_at", "2026-11-23T10:00Z", "offset"),
    ("occurred_at", "2026-11-23T10:00:00+0100", "offset"),
    ("occurred_at", "2026-02-30T10:00:00Z", "valid date"),
    ("occurred_at", "2026-11-23T24:00:00Z", "valid date"),
    ("occurred_at", "0001-01-01T00:00:00+01:00", "occurred_at"),
    ("occurred_at", "1969-12-31T23:59:59Z", "between"),
    ("occurred_at", 1_700_000_000, "occurred_at"),
    ("occurred_at", "1700000000", "offset"),
    ("duration_seconds", -1, "greater than or equal to 0"),
    ("duration_seconds", 86401, "less than or equal to 86400"),
    ("duration_seconds", 60.0, "valid integer"),
    ("duration_seconds", True, "valid integer"),
    ("duration_seconds", "60", "valid integer"),
    ("duration_seconds", 10**30, "less than or equal to 86400"),
    ("call_type", "inbound", "call_type"),
    ("call_id", "", "call_id"),
    ("call_id", 7, "call_id"),
    ("user_id", "u" * 129, "user_id"),
    ("user_id", 7, "user_id"),
]


@pytest.mark.parametrize(("field", "value", "expected"), CALL_CASES)
def test_call_rule_violations_are_invalid_event(field: str, value: Any, expected: str) -> None:
    error = rejects(decode_call, enc(with_field(CALL, field, value)))
    assert error.reason == "invalid_event"
    assert field in error.detail
    assert expected in error.detail


@pytest.mark.parametrize("field", sorted(set(CALL) - {"user_id"}))
def test_call_missing_required_field(field: str) -> None:
    error = rejects(decode_call, enc(without(CALL, field)))
    assert error.reason == "invalid_event"
    assert f"{field}: Field required" in error.detail


def test_conference_rule_violations() -> None:
    for field, value in [
        ("leg_type", "dial_in"),
        ("number", "+0123"),
        ("duration_seconds", 86401),
        ("participant_id", "p" * 129),
    ]:
        error = rejects(decode_conference, enc(with_field(CONFERENCE, field, value)))
        assert error.reason == "invalid_event"
        assert field in error.detail


MONEY_CASES: list[tuple[Any, str]] = [
    (50.0, "not a number"),
    (50, "not a number"),
    (True, "not a boolean"),
    (None, "decimal number"),
    ("NaN", "decimal number"),
    ("nan", "decimal number"),
    ("Infinity", "decimal number"),
    ("-Infinity", "decimal number"),
    ("1e3", "no exponent"),
    ("1E+3", "no exponent"),
    ("+5.00", "no '+'"),
    ("", "decimal number"),
    (" 5.00", "no spaces"),
    ("5.00 ", "no spaces"),
    ("5.", "decimal number"),
    (".5", "decimal number"),
    ("5,00", "decimal number"),
    ("0x10", "decimal number"),
    ("١٢", "decimal number"),  # Arabic-Indic digits: Decimal() would take them
    ("1" * 19, "18 integer"),
    ("1." + "1" * 13, "12 fraction"),
    ("-5.00", "greater than 0"),
    ("0", "greater than 0"),
    ("0.00", "greater than 0"),
    ("-0.00", "greater than 0"),
    ("1000000.01", "at most 1000000"),
    ("999999999999999999", "at most 1000000"),
]


@pytest.mark.parametrize(("value", "expected"), MONEY_CASES)
def test_funds_amount_violations(value: Any, expected: str) -> None:
    error = rejects(decode_command, enc(with_field(FUNDS, "amount", value)))
    assert error.reason == "invalid_event"
    assert "amount" in error.detail
    assert expected in error.detail


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("recharge_amount", "0", "greater than 0"),
        ("recharge_amount", "-1", "greater than 0"),
        ("recharge_amount", "1000001", "at most 1000000"),
        ("recharge_amount", 25.0, "not a number"),
        ("trigger_balance", "-0.01", "at least 0"),
        ("trigger_balance", "1e2", "no exponent"),
        ("enabled", 1, "valid boolean"),
        ("enabled", "true", "valid boolean"),
        ("enabled", None, "valid boolean"),
    ],
)
def test_settings_violations(field: str, value: Any, expected: str) -> None:
    error = rejects(decode_command, enc(with_field(SETTINGS, field, value)))
    assert error.reason == "invalid_event"
    assert field in error.detail
    assert expected in error.detail


def test_negative_zero_trigger_is_plain_zero() -> None:
    command = decode_command(enc(with_field(SETTINGS, "trigger_balance", "-0.00")))
    assert isinstance(command, AutoRechargeConfigured)
    assert not command.trigger_balance.is_signed()
    assert format_money(command.trigger_balance) == "0.00"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (with_field(FUNDS, "currency", "usd"), "ISO 4217"),
        (with_field(FUNDS, "currency", "US"), "ISO 4217"),
        (with_field(FUNDS, "currency", "USDX"), "ISO 4217"),
        (with_field(FUNDS, "source", "refund"), "source"),
        (without(FUNDS_AUTO, "recharge_request_id"), "recharge_request_id is required"),
        (with_field(FUNDS_AUTO, "recharge_request_id", None), "recharge_request_id is required"),
        (with_field(FUNDS_AUTO, "recharge_request_id", "r" * 129), "printable ASCII"),
        (with_field(FAILED, "reason", ""), "reason"),
        (with_field(FAILED, "reason", "x" * 1001), "reason"),
        (without(FAILED, "recharge_request_id"), "recharge_request_id: Field required"),
        (with_field(FAILED, "command_id", "c" * 129), "printable ASCII"),
    ],
)
def test_command_violations(payload: dict[str, Any], expected: str) -> None:
    error = rejects(decode_command, enc(payload))
    assert error.reason == "invalid_event"
    assert expected in error.detail


@pytest.mark.parametrize("kind", ["funds_removed", "", "FUNDS_ADDED", 3, None])
def test_unknown_command_type_names_the_allowed_types(kind: Any) -> None:
    error = rejects(decode_command, enc(with_field(FUNDS, "type", kind)))
    assert error.reason == "invalid_event"
    assert "funds_added, auto_recharge_configured, recharge_failed" in error.detail


def test_missing_command_type() -> None:
    error = rejects(decode_command, enc(without(FUNDS, "type")))
    assert error.reason == "invalid_event"
    assert "missing command type" in error.detail


def test_detail_lists_every_failing_field_and_is_trimmed() -> None:
    error = rejects(decode_call, enc({"event_id": ""}))
    for field in ("event_id", "tenant_id", "call_type", "duration_seconds"):
        assert field in error.detail
    assert len(error.detail) <= 500


# -------------------------------------------------------------------- invalid JSON

NOT_JSON_OBJECTS: list[bytes] = [
    b"",
    b"   ",
    b'{"event_id": "evt-1"',  # truncated
    enc(CALL)[:-7],
    b"\xff\xfe{}",
    b'{"event_id": "evt-\xff"}',  # invalid UTF-8 inside a string
    b'{"event_id": "\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
    b'{"event_id": "\\ud800"}',  # a lone surrogate escape
    b"\xef\xbb\xbf" + enc(CALL),  # a BOM is not JSON
    b"[]",
    b"[1, 2]",
    b'"text"',
    b"42",
    b"null",
    b"true",
    b"{'event_id': 'single quotes'}",
    b'{"a": 1} trailing',
    b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # nesting beyond the parser limit
]


@pytest.mark.parametrize("raw", NOT_JSON_OBJECTS)
@pytest.mark.parametrize("decoder", [decode_call, decode_conference, decode_command])
def test_not_json_object_text_is_invalid_json(decoder: Decoder, raw: bytes) -> None:
    error = rejects(decoder, raw)
    assert error.reason == "invalid_json", error.detail
    assert error.detail


@pytest.mark.parametrize("decoder", [decode_call, decode_conference, decode_command])
def test_null_value_is_invalid_json(decoder: Decoder) -> None:
    error = rejects(decoder, None)
    assert error.reason == "invalid_json"
    assert "null" in error.detail


def test_decode_error_is_a_value_error_with_fields() -> None:
    error = DecodeError("invalid_event", "amount: bad")
    assert isinstance(error, ValueError)
    assert (error.reason, error.detail) == ("invalid_event", "amount: bad")
    assert str(error) == "invalid_event: amount: bad"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.detail) == (error.reason, error.detail)


# ------------------------------------------------------------------------- outputs


def debit(**overrides: Any) -> LedgerEntry:
    fields: dict[str, Any] = {
        "entry_id": "acme:usage.calls:evt-0001",
        "tenant_id": "acme",
        "kind": "debit",
        "amount": Decimal("0.0420"),
        "currency": "USD",
        "balance_after": Decimal("49.9580"),
        "cause_topic": "usage.calls",
        "cause_id": "evt-0001",
        "occurred_at": NOW,
        "recorded_at": NOW + timedelta(seconds=1, microseconds=250),
        "rate_prefix": "+44",
        "rate_per_minute": Decimal("0.0350"),
        "billed_seconds": 125,
    }
    fields.update(overrides)
    return LedgerEntry(**fields)


def test_ledger_debit_serialises_exactly() -> None:
    assert json.loads(debit().to_json()) == {
        "type": "ledger_entry",
        "entry_id": "acme:usage.calls:evt-0001",
        "tenant_id": "acme",
        "kind": "debit",
        "amount": "0.0420",
        "currency": "USD",
        "balance_after": "49.9580",
        "cause_topic": "usage.calls",
        "cause_id": "evt-0001",
        "occurred_at": "2026-11-23T10:00:00Z",
        "recorded_at": "2026-11-23T10:00:01.000250Z",
        "rate_prefix": "+44",
        "rate_per_minute": "0.0350",
        "billed_seconds": 125,
    }


def test_ledger_credit_omits_rate_fields() -> None:
    credit = debit(kind="credit", rate_prefix=None, rate_per_minute=None, billed_seconds=None)
    body = json.loads(credit.to_json())
    assert body["kind"] == "credit"
    assert not {"rate_prefix", "rate_per_minute", "billed_seconds"} & set(body)


def test_ledger_rate_fields_match_kind() -> None:
    with pytest.raises(ValidationError, match="a debit needs"):
        debit(rate_prefix=None)
    with pytest.raises(ValidationError, match="a credit has no rate fields"):
        debit(kind="credit")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0.0000"), "0.0000"),
        (Decimal("0E-4"), "0.0000"),
        (Decimal("-0.0000"), "0.0000"),
        (Decimal("-0E-4"), "0.0000"),
        (Decimal("-0"), "0"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1.5E-7"), "0.00000015"),
        (Decimal("-12.3400"), "-12.3400"),
        (Decimal("123456789012345678.123456789012"), "123456789012345678.123456789012"),
    ],
)
def test_output_money_is_fixed_point_text(value: Decimal, text: str) -> None:
    assert format_money(value) == text
    alert = BalanceAlert(
        alert_id="a-1",
        tenant_id="acme",
        alert="exhausted",
        balance=value,
        currency="USD",
        occurred_at=NOW,
    )
    raw = alert.to_json()
    assert json.loads(raw)["balance"] == text
    assert b"E" not in raw.replace(b"USD", b"")


def test_outputs_refuse_float_money_and_naive_times() -> None:
    with pytest.raises(ValidationError, match="not a number"):
        debit(amount=0.042)
    with pytest.raises(ValidationError, match="greater than 0"):
        debit(amount=Decimal(0))
    with pytest.raises(ValidationError, match="decimal number"):
        debit(amount=Decimal("NaN"))
    with pytest.raises(ValidationError, match="naive"):
        debit(occurred_at=datetime(2026, 11, 23, 10, 0))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        debit(amout=Decimal(1))
    with pytest.raises(ValidationError, match="entry_id"):
        debit(entry_id="")


def test_timestamps_serialise_as_utc_z() -> None:
    plus_one = timezone(timedelta(hours=1))
    assert format_timestamp(datetime(2026, 11, 23, 11, 0, tzinfo=plus_one)) == (
        "2026-11-23T10:00:00Z"
    )
    assert format_timestamp(NOW.replace(microsecond=7)) == "2026-11-23T10:00:00.000007Z"
    with pytest.raises(ValueError, match="naive"):
        format_timestamp(datetime(2026, 11, 23))
    entry = debit(occurred_at=datetime(2026, 11, 23, 11, 0, tzinfo=plus_one))
    assert json.loads(entry.to_json())["occurred_at"] == "2026-11-23T10:00:00Z"


def test_recharge_requested_serialises() -> None:
    request = RechargeRequested(
        request_id="rr-acme-1",
        tenant_id="acme",
        amount=Decimal("25.00"),
        currency="USD",
        trigger_balance=Decimal("5.00"),
        balance=Decimal("-0.0100"),
        attempt=1,
        requested_at=NOW,
    )
    assert json.loads(request.to_json()) == {
        "type": "recharge_requested",
        "request_id": "rr-acme-1",
        "tenant_id": "acme",
        "amount": "25.00",
        "currency": "USD",
        "trigger_balance": "5.00",
        "balance": "-0.0100",
        "attempt": 1,
        "requested_at": "2026-11-23T10:00:00Z",
    }
    with pytest.raises(ValidationError):
        RechargeRequested(**{**request.model_dump(), "attempt": 0})


def test_outputs_round_trip_through_json() -> None:
    for model in (
        debit(),
        debit(kind="credit", rate_prefix=None, rate_per_minute=None, billed_seconds=None),
    ):
        assert LedgerEntry.model_validate_json(model.to_json()) == model


def test_rejected_record_keeps_text_payload_as_text() -> None:
    value = '{"event_id": "é"'.encode()
    record = RejectedRecord.for_record(
        reason="invalid_json",
        detail="truncated",
        source_topic="usage.calls",
        source_partition=3,
        source_offset=1234,
        key=b"acme",
        value=value,
        rejected_at=NOW,
    )
    assert json.loads(record.to_json()) == {
        "type": "rejected",
        "reason": "invalid_json",
        "detail": "truncated",
        "source_topic": "usage.calls",
        "source_partition": 3,
        "source_offset": 1234,
        "key": "acme",
        "payload": '{"event_id": "é"',
        "rejected_at": "2026-11-23T10:00:00Z",
    }
    assert record.original_value() == value
    assert record.original_key() == b"acme"


def test_rejected_record_base64_for_non_utf8_and_null_for_missing() -> None:
    record = RejectedRecord.for_record(
        reason="invalid_json",
        detail="bad \ud800 detail",  # a lone surrogate must not break serialisation
        source_topic="credits.commands",
        source_partition=0,
        source_offset=0,
        key=b"\xffk",
        value=b"\xff\x00{",
        rejected_at=NOW,
    )
    body = json.loads(record.to_json())
    assert body["payload"] == base64.b64encode(b"\xff\x00{").decode()
    assert body["payload_encoding"] == "base64"
    assert body["key"] == base64.b64encode(b"\xffk").decode()
    assert body["key_encoding"] == "base64"
    assert record.original_value() == b"\xff\x00{"
    assert record.original_key() == b"\xffk"
    tombstone = RejectedRecord.for_record(
        reason="invalid_json",
        detail="the record value is null",
        source_topic="usage.calls",
        source_partition=0,
        source_offset=1,
        key=None,
        value=None,
        rejected_at=NOW,
    )
    body = json.loads(tombstone.to_json())
    assert body["key"] is None
    assert body["payload"] is None
    assert "payload_encoding" not in body
    assert "key_encoding" not in body


def test_rejected_record_from_a_decode_error() -> None:
    raw = enc(with_field(CALL, "duration_seconds", 60.0))
    error = rejects(decode_call, raw)
    record = RejectedRecord.for_record(
        reason=error.reason,
        detail=error.detail,
        source_topic="usage.calls",
        source_partition=1,
        source_offset=9,
        key=b"acme",
        value=raw,
        rejected_at=NOW,
    )
    assert json.loads(record.to_json())["reason"] == "invalid_event"


def test_account_view_serialises_with_nulls() -> None:
    view = AccountView(
        tenant_id="acme",
        currency="USD",
        balance=Decimal("0E-4"),
        status="exhausted",
        auto_recharge=None,
        pending_recharge=None,
        updated_at=NOW,
    )
    assert json.loads(view.to_json()) == {
        "tenant_id": "acme",
        "currency": "USD",
        "balance": "0.0000",
        "status": "exhausted",
        "auto_recharge": None,
        "pending_recharge": None,
        "updated_at": "2026-11-23T10:00:00Z",
        "credit_limit": "0",
        "notify_below": None,
        "expiring": [],
        "consumption": [],
        "notifications": None,
    }
    full = AccountView(
        tenant_id="acme",
        currency="USD",
        balance=Decimal("3.5000"),
        status="active",
        auto_recharge=AutoRechargeView(
            enabled=True,
            recharge_amount=Decimal("25.00"),
            trigger_balance=Decimal("5.00"),
            suspended=False,
        ),
        pending_recharge=PendingRechargeView(
            request_id="rr-acme-1", amount=Decimal("25.00"), attempt=2, requested_at=NOW
        ),
        updated_at=NOW,
    )
    body = json.loads(full.to_json())
    assert body["auto_recharge"] == {
        "enabled": True,
        "recharge_amount": "25.00",
        "trigger_balance": "5.00",
        "suspended": False,
        "mode": "fixed",
        "target_balance": None,
    }
    assert body["pending_recharge"] == {
        "request_id": "rr-acme-1",
        "amount": "25.00",
        "attempt": 2,
        "requested_at": "2026-11-23T10:00:00Z",
    }


# ----------------------------------------------------------------- JSON Schemas


def test_json_schema_files_match_the_models() -> None:
    problems = export.check()
    assert not problems, (
        "schemas/json/ is out of date with the models; run `python -m schemas.export` "
        "and commit the result:\n" + "\n".join(problems)
    )


def test_render_all_is_stable_and_complete() -> None:
    first = export.render_all()
    assert first == export.render_all()
    assert set(first) == {
        "AccountView.json",
        "AuthorizeView.json",
        "AutoRechargeChanged.json",
        "AutoRechargeConfigured.json",
        "BalanceAlert.json",
        "CallUsage.json",
        "Command.json",
        "CommandResult.json",
        "ConferenceUsage.json",
        "FundsAdded.json",
        "LedgerEntry.json",
        "RechargeFailed.json",
        "RechargeRequested.json",
        "RejectedRecord.json",
        "TenantLimitsConfigured.json",
        "NotificationsConfigured.json",
        "NotificationsChanged.json",
        "NotificationSettings.json",
    }
    for text in first.values():
        assert text.endswith("}\n")
        assert json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n" == text


def test_published_schemas_say_what_crosses_the_wire() -> None:
    files = {name: json.loads(text) for name, text in export.render_all().items()}
    funds = files["FundsAdded.json"]
    assert funds["properties"]["amount"]["type"] == "string"
    assert "type" in funds["required"]
    assert "recharge_request_id" not in funds["required"]
    command = files["Command.json"]
    assert set(command["discriminator"]["mapping"]) == {
        "funds_added",
        "auto_recharge_configured",
        "recharge_failed",
        "tenant_limits_configured",
        "auto_recharge_changed",
        "notifications_configured",
        "notifications_changed",
    }
    ledger = files["LedgerEntry.json"]
    assert ledger["properties"]["balance_after"]["type"] == "string"
    assert ledger["properties"]["rate_prefix"] == {
        "pattern": "^\\+[0-9]{1,15}$",
        "title": "Rate Prefix",
        "type": "string",
    }
    assert "rate_prefix" not in ledger["required"]
    assert "type" in ledger["required"]
    rejected = files["RejectedRecord.json"]
    assert "key" in rejected["required"]
    assert "payload_encoding" not in rejected["required"]
    # Consumers must tolerate the optional fields the contract lets us add.
    assert "additionalProperties" not in ledger
    assert files["CallUsage.json"]["x-schema-mode"] == "validation"
    assert ledger["x-schema-mode"] == "serialization"


def test_check_reports_drift_and_write_repairs_it(tmp_path: Path) -> None:
    assert export.write(tmp_path)
    assert export.check(tmp_path) == []
    (tmp_path / "CallUsage.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "LedgerEntry.json").unlink()
    (tmp_path / "Old.json").write_text("{}\n", encoding="utf-8")
    problems = export.check(tmp_path)
    assert len(problems) == 3
    assert any(p.startswith("differs:") and "CallUsage.json" in p for p in problems)
    assert any(p.startswith("missing:") and "LedgerEntry.json" in p for p in problems)
    assert any(p.startswith("stale") and "Old.json" in p for p in problems)
    export.write(tmp_path)
    assert export.check(tmp_path) == []


def test_export_check_cli_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(export, "JSON_DIR", tmp_path)
    assert export.main(["--check"]) == 1
    assert "python -m schemas.export" in capsys.readouterr().err
    assert export.main([]) == 0
    assert export.main(["--check"]) == 0


# -------------------------------------------------------------------------- fuzz

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
DECODERS = st.sampled_from([decode_call, decode_conference, decode_command])
BASES = st.sampled_from([CALL, CONFERENCE, FUNDS, FUNDS_AUTO, SETTINGS, FAILED])
INTERESTING = (
    JSON_VALUES
    | st.sampled_from(
        ["NaN", "1e3", "-0", "0", "1" * 400, "+1", "2026-11-23T10:00:00Z", "\ud800", ""]
    )
    | st.integers(min_value=-(10**400), max_value=10**400)
)


def assert_decodes_or_rejects(decoder: Decoder, raw: bytes) -> None:
    try:
        event = decoder(raw)
    except DecodeError as error:
        assert error.reason in ("invalid_json", "invalid_event")
        assert not error.detail.startswith("internal decoder error"), error.detail
        assert 0 < len(error.detail) <= 500
        error.detail.encode("utf-8")  # publishable as-is
        return
    # Whatever decodes must serialise back and decode to the same event.
    assert isinstance(event, BaseModel)
    assert decoder(event.model_dump_json().encode()) == event


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(decoder=DECODERS, raw=st.binary(max_size=300))
def test_fuzz_random_bytes(decoder: Decoder, raw: bytes) -> None:
    assert_decodes_or_rejects(decoder, raw)


@FUZZ
@given(decoder=DECODERS, value=JSON_VALUES)
def test_fuzz_random_json(decoder: Decoder, value: Any) -> None:
    assert_decodes_or_rejects(decoder, json.dumps(value).encode())


@FUZZ
@given(
    decoder=DECODERS,
    base=BASES,
    data=st.data(),
    value=INTERESTING,
)
def test_fuzz_mutated_valid_events(
    decoder: Decoder, base: dict[str, Any], data: st.DataObject, value: Any
) -> None:
    field = data.draw(st.sampled_from(sorted(base)))
    payload = with_field(base, field, value)
    raw = json.dumps(payload).encode("utf-8", "surrogatepass")
    assert_decodes_or_rejects(decoder, raw)


@FUZZ
@given(decoder=DECODERS, base=BASES, cut=st.integers(min_value=0, max_value=400))
def test_fuzz_truncated_and_corrupted(decoder: Decoder, base: dict[str, Any], cut: int) -> None:
    raw = enc(base)
    assert_decodes_or_rejects(decoder, raw[:cut])
    assert_decodes_or_rejects(decoder, raw[:cut] + b"\xc3" + raw[cut:])


@FUZZ
@given(decoder=DECODERS, depth=st.integers(min_value=1, max_value=3000))
def test_fuzz_deep_nesting(decoder: Decoder, depth: int) -> None:
    assert_decodes_or_rejects(decoder, b'{"a":' + b"[" * depth + b"]" * depth + b"}")
    assert_decodes_or_rejects(decoder, b'{"a":' * depth + b"1" + b"}" * depth)


@FUZZ
@given(data=st.data(), places=st.sampled_from([0, 2, 4, 12]))
def test_money_text_round_trips_exactly(data: st.DataObject, places: int) -> None:
    amount = data.draw(
        st.decimals(
            min_value=-(10**17),
            max_value=10**17,
            places=places,
            allow_nan=False,
            allow_infinity=False,
        )
    )
    text = format_money(amount)
    assert "E" not in text
    if amount.is_zero():
        assert not text.startswith("-")
    parsed = parse_money(text)
    assert parsed == amount
    assert format_money(parsed) == text


@given(
    st.decimals(allow_nan=False, allow_infinity=False)
    | st.builds(
        lambda digits, exponent: Decimal(digits).scaleb(exponent),
        st.integers(-(10**30), 10**30),
        st.integers(-40, 40),
    )
)
def test_money_text_is_formats_fixed_point_text(amount: Decimal) -> None:
    # The fast path (str) must never differ from format(value, "f").
    assert format_money(amount) == format(amount.copy_abs() if amount.is_zero() else amount, "f")


def sample_outputs() -> list[BaseModel]:
    plus_two = timezone(timedelta(hours=2))
    return [
        debit(),
        debit(kind="credit", rate_prefix=None, rate_per_minute=None, billed_seconds=None),
        debit(occurred_at=datetime(2026, 1, 1, 2, 0, 0, 999999, tzinfo=plus_two)),
        BalanceAlert(
            alert_id="a",
            tenant_id="t",
            alert="low_balance",
            balance=Decimal("-0E-4"),
            currency="EUR",
            occurred_at=NOW,
        ),
        BalanceAlert(
            alert_id="a2",
            tenant_id="t",
            alert="low_balance",
            balance=Decimal("9.9999"),
            currency="EUR",
            occurred_at=NOW,
            threshold=Decimal("10.0000"),
            threshold_setting="trigger_balance",
        ),
        RechargeRequested(
            request_id="r",
            tenant_id="t",
            amount=Decimal("1E+1"),
            currency="USD",
            trigger_balance=Decimal("0"),
            balance=Decimal("-1.5"),
            attempt=3,
            requested_at=NOW,
        ),
        RejectedRecord.for_record(
            reason="no_rate",
            detail='no prefix for "+999"\n',
            source_topic="acme.usage.calls",
            source_partition=0,
            source_offset=2**62,
            key=None,
            value=b"\x00\xff",
            rejected_at=NOW,
        ),
        RejectedRecord.for_record(
            reason="invalid_json",
            detail="",
            source_topic="usage.calls",
            source_partition=0,
            source_offset=0,
            key="k\u2603".encode(),
            value="caf\u00e9 \U0001f600".encode(),
            rejected_at=NOW,
        ),
        AccountView(
            tenant_id="acme",
            currency="USD",
            balance=Decimal("3.5000"),
            status="active",
            auto_recharge=AutoRechargeView(
                enabled=False,
                recharge_amount=Decimal("25.00"),
                trigger_balance=Decimal("0E-2"),
                suspended=True,
            ),
            pending_recharge=PendingRechargeView(
                request_id="rr", amount=Decimal("25.00"), attempt=1, requested_at=NOW
            ),
            updated_at=NOW,
        ),
    ]


@pytest.mark.parametrize("model", sample_outputs(), ids=lambda m: type(m).__name__)
def test_fast_to_json_equals_pydantic_serialisation(model: BaseModel) -> None:
    assert hasattr(model, "to_json")
    assert model.to_json() == model.model_dump_json().encode()


@FUZZ
@given(
    amount=st.decimals(min_value=Decimal("0.0001"), max_value=10**9, places=4),
    balance=st.decimals(min_value=-(10**9), max_value=10**9, places=4),
    occurred_at=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(8999, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), UTC]),
    ),
    credit=st.booleans(),
)
def test_fuzz_ledger_to_json_matches_pydantic(
    amount: Decimal, balance: Decimal, occurred_at: datetime, credit: bool
) -> None:
    rate: dict[str, Any] = (
        {"kind": "credit", "rate_prefix": None, "rate_per_minute": None, "billed_seconds": None}
        if credit
        else {}
    )
    entry = debit(amount=amount, balance_after=balance, occurred_at=occurred_at, **rate)
    raw = entry.to_json()
    assert raw == entry.model_dump_json().encode()
    assert LedgerEntry.model_validate_json(raw) == entry


def test_output_text_must_be_encodable() -> None:
    with pytest.raises(ValidationError, match="UTF-8"):
        RejectedRecord(
            reason="invalid_json",
            detail="x",
            source_topic="usage.calls",
            source_partition=0,
            source_offset=0,
            key="\udcff",
            payload=None,
            rejected_at=NOW,
        )
