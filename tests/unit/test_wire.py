"""Every contract output's bytes validate against its pydantic model.

Each value is built by the function the processor encodes it with
(processor/kafka/wire.py, processor/worker/sizing.py, processor/http/views.py), never
written by hand, and read back with `Model.model_validate_json`: a field renamed, a
money value written as a number or a timestamp with an offset fails here. Edge values:
the largest amounts the contract's money pattern allows, negative balances, optional
fields absent and present, non-ASCII text where the contract takes free text.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from pydantic import BaseModel

from processor.core.engine import EXPIRY_TICK, TimerTick
from processor.core.outputs import (
    AlertKind,
    AlertOut,
    LedgerOut,
    NotificationsOut,
    Output,
    RechargeOut,
)
from processor.core.state import (
    Account,
    AutoRecharge,
    Lot,
    Notifications,
    PendingRecharge,
    RechargeMode,
    RechargeStatus,
)
from processor.http.views import account_view, authorize_view
from processor.kafka import wire
from processor.worker import sizing
from schemas.api import AccountView, AuthorizeView
from schemas.inputs import COMMAND_TYPES
from schemas.outputs import (
    BalanceAlert,
    CommandResult,
    LedgerEntry,
    NotificationSettings,
    RechargeRequested,
    RejectedRecord,
)
from tests.unit.conftest import CARD, T0, TENANT

# The largest amount the contract's money pattern allows (18 integer digits, 12 places).
LARGEST = Decimal("999999999999999999.999999999999")
# Written out: `-LARGEST` would round it (the default context keeps 28 digits).
MOST_NEGATIVE = Decimal("-999999999999999999.999999999999")
SMALLEST = Decimal("0.000000000001")
# A tenant id at the pattern's bounds: 64 characters of every kind it allows.
LONG_TENANT = ("Az09._:-" * 8)[:64]
# An id of 128 printable ASCII characters (ID_PATTERN's longest), a space included.
LONG_ID = ("id ~!" * 26)[:128]
LATER = T0 + timedelta(microseconds=123_456)


def valid(model: type[BaseModel], raw: bytes) -> BaseModel:
    """The model read from `raw`, which must also be what the model writes back."""
    parsed = model.model_validate_json(raw)
    assert orjson.loads(parsed.model_dump_json()) == orjson.loads(raw)
    return parsed


# ---- credits.ledger --------------------------------------------------------------------


def entry(kind: str, amount: Decimal, after: Decimal, **more: object) -> LedgerOut:
    return LedgerOut(
        entry_id=f"{TENANT}:{kind}:1",
        tenant_id=TENANT,
        kind=kind,
        amount=amount,
        balance_after=after,
        cause_topic="credits.commands",
        cause_id="c-1",
        occurred_at=T0,
        recorded_at=LATER,
        **more,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "out",
    [
        entry(
            "debit",
            Decimal("0.0200"),
            Decimal("-0.0200"),
            rate_prefix="+1",
            rate_per_minute=Decimal("0.0100"),
            billed_seconds=120,
        ),
        entry(
            "debit",
            LARGEST,
            MOST_NEGATIVE,
            rate_prefix="+123456789012345",
            rate_per_minute=Decimal("0"),
            billed_seconds=0,
        ),
        entry("credit", LARGEST, LARGEST),
        entry("credit", SMALLEST, SMALLEST, actor=LONG_ID),
        entry("expiry", Decimal("5.0000"), Decimal("0.0000")),
    ],
    ids=["debit", "debit-largest", "credit-largest", "credit-actor", "expiry"],
)
def test_a_ledger_entry_validates(out: LedgerOut) -> None:
    raw = wire.dump_output(out, "USD")
    parsed = valid(LedgerEntry, raw)
    assert isinstance(parsed, LedgerEntry) and parsed.amount == out.amount
    assert wire.output_from_dict(orjson.loads(raw)) == out


def test_a_ledger_entry_of_a_long_tenant_at_another_offset_is_written_in_utc() -> None:
    at = datetime(2026, 11, 25, 11, 30, tzinfo=timezone(timedelta(hours=1)))
    out = LedgerOut(
        LONG_ID[:256], LONG_TENANT, "credit", LARGEST, LARGEST, "c" * 249, LONG_ID, at, at
    )
    raw = wire.dump_output(out, "EUR")
    assert b'"occurred_at":"2026-11-25T10:30:00Z"' in raw
    valid(LedgerEntry, raw)


# ---- credits.alerts --------------------------------------------------------------------


ALERTS = [
    AlertOut("a-1", TENANT, AlertKind.EXHAUSTED, MOST_NEGATIVE, T0, status_seq=1),
    AlertOut("a-2", TENANT, AlertKind.RESTORED, LARGEST, LATER, status_seq=2**62),
    AlertOut("a-3", TENANT, AlertKind.LOW_BALANCE, Decimal("0.0000"), T0),
    AlertOut(
        "a-3b",
        TENANT,
        AlertKind.LOW_BALANCE,
        Decimal("4.9999"),
        T0,
        threshold=Decimal("5.0000"),
        threshold_setting="notify_below",
    ),
    AlertOut(
        "a-4",
        TENANT,
        AlertKind.RECHARGE_FAILED,
        Decimal("-1.00"),
        T0,
        reason="carte refusée: 3-D Secure échoué ✗",
        request_id=LONG_ID,
    ),
    AlertOut("a-5", TENANT, AlertKind.RECHARGE_FAILED, Decimal("-1.00"), T0),
    AlertOut(
        "a-6",
        TENANT,
        AlertKind.FUNDS_EXPIRING,
        Decimal("3.0000"),
        T0,
        amount=LARGEST,
        expires_at=T0 + timedelta(days=7),
    ),
    AlertOut(
        "a-7",
        TENANT,
        AlertKind.FUNDS_EXPIRED,
        Decimal("0.0000"),
        T0,
        amount=SMALLEST,
        entry_id=f"{TENANT}:expiry:1",
    ),
    AlertOut(
        "a-8",
        LONG_TENANT,
        AlertKind.RECHARGE_SUCCEEDED,
        Decimal("50.0000"),
        T0,
        request_id="r-1",
        amount=Decimal("50.0000"),
    ),
]


def test_every_alert_kind_is_covered() -> None:
    assert {a.alert for a in ALERTS} == set(AlertKind)


@pytest.mark.parametrize("out", ALERTS, ids=[f"{a.alert.value}-{a.alert_id}" for a in ALERTS])
def test_an_alert_validates(out: AlertOut) -> None:
    raw = wire.dump_output(out, "USD")
    valid(BalanceAlert, raw)
    assert wire.output_from_dict(orjson.loads(raw)) == out


# ---- credits.recharge-requests -----------------------------------------------------------


@pytest.mark.parametrize(
    "out",
    [
        RechargeOut("r-1", TENANT, Decimal("50.00"), Decimal("5.00"), Decimal("4.99"), 1, T0),
        RechargeOut(LONG_ID, LONG_TENANT, LARGEST, Decimal("0"), MOST_NEGATIVE, 2**31, LATER),
    ],
    ids=["first", "largest"],
)
def test_a_recharge_request_validates(out: RechargeOut) -> None:
    raw = wire.dump_output(out, "USD")
    valid(RechargeRequested, raw)
    assert wire.output_from_dict(orjson.loads(raw)) == out


# ---- credits.notification-settings ---------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        Notifications((), None, None, ("low_balance",), "n-1"),
        Notifications(
            tuple(f"ops{i}@example.com" for i in range(10)),
            "https://hooks.example.com/" + "x" * 2000,
            "gAAAAAB" + "A" * 1000 + "==",
            (
                "low_balance",
                "exhausted",
                "restored",
                "recharge_succeeded",
                "recharge_failed",
                "auto_recharge_suspended",
                "funds_expiring",
                "funds_expired",
            ),
            LONG_ID,
        ),
    ],
    ids=["fewest", "most"],
)
def test_notification_settings_validate(settings: Notifications) -> None:
    out = NotificationsOut(TENANT, settings, LATER)
    raw = wire.dump_output(out, "USD")
    valid(NotificationSettings, raw)
    assert wire.output_from_dict(orjson.loads(raw)) == out


# ---- credits.command-results ---------------------------------------------------------------


@pytest.mark.parametrize("command_type", sorted(COMMAND_TYPES))
def test_an_applied_command_result_validates(command_type: str) -> None:
    entry_id = f"{TENANT}:credit:1" if command_type == "funds_added" else None
    raw = wire.command_result("c-1", TENANT, command_type, "applied", entry_id, None, None, T0)
    parsed = valid(CommandResult, raw)
    assert isinstance(parsed, CommandResult) and parsed.reason is None
    assert b'"reason"' not in raw and b'"detail"' not in raw


def test_a_rejected_or_ignored_command_result_validates() -> None:
    detail = "montant refusé ✗ \udcff " + "x" * 3000  # a lone surrogate, and too long
    raw = wire.command_result(
        LONG_ID, LONG_TENANT, "funds_added", "rejected", None, "invalid_event", detail, LATER
    )
    parsed = valid(CommandResult, raw)
    assert isinstance(parsed, CommandResult) and parsed.detail is not None
    assert len(parsed.detail) == 2000
    ignored = wire.command_result(
        "c-2", TENANT, "recharge_failed", "ignored", None, "unknown_or_closed_request", "", T0
    )
    valid(CommandResult, ignored)


# ---- credits.rejected ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, None),
        (b"acme", '{"tenant_id": "acmé ✓"}'.encode()),
        (b"\xff\xfe", b"\x00\xff not utf-8"),
        (b"k" * (sizing.KEY_BOUND + 1), b"v" * (sizing.MAX_REJECTED_PAYLOAD + 1)),
    ],
    ids=["null", "unicode", "binary", "oversized"],
)
def test_a_rejection_validates(key: bytes | None, value: bytes | None) -> None:
    body = wire.rejection("invalid_event", "détail ✗ " * 10, "usage.calls", 3, 2**40, T0)
    clipped, facts = sizing.clip_key(key)
    raw = sizing.rejection_value(
        body,
        key=clipped,
        key_facts=facts,
        value=value,
        out_key=clipped,
        limit=sizing.DEFAULT_MAX_MESSAGE_BYTES,
    )
    valid(RejectedRecord, raw)


def test_a_rejection_too_large_for_its_topic_is_minimal_and_validates() -> None:
    body = wire.rejection("invalid_event", "x" * 5000, "usage.calls", 0, 0, T0)
    raw = sizing.rejection_value(
        body, key=b"acme", key_facts=None, value=b"v" * 10_000, out_key=b"acme", limit=1000
    )
    parsed = valid(RejectedRecord, raw)
    assert isinstance(parsed, RejectedRecord) and parsed.payload is None


def test_a_refused_reroute_stands_in_as_a_minimal_rejection_that_validates() -> None:
    body = wire.refused_reroute("credits.reroute", "usage.calls", 7, 12, LATER)
    body["key_size"] = 2000
    body["key_sha256"] = sizing.sha256_hex(b"k" * 2000)
    valid(RejectedRecord, sizing.minimal_value(body, b"payload"))
    valid(RejectedRecord, sizing.minimal_value(body, None))


# ---- GET /tenants/{id}/account and /authorize ------------------------------------------------


def test_the_account_view_validates() -> None:
    plain = Account(TENANT, balance=MOST_NEGATIVE, updated_at=T0)
    valid(AccountView, orjson.dumps(account_view(plain, "USD", T0)))
    full = Account(
        LONG_TENANT,
        balance=Decimal("12.3400"),
        updated_at=LATER,
        auto_recharge=AutoRecharge(
            True,
            Decimal("50.00"),
            Decimal("5.00"),
            False,
            RechargeMode.TO_TARGET,
            Decimal("1000000"),
        ),
        credit_limit=Decimal("1000000"),
        notify_below=Decimal("0"),
        lots=tuple(
            Lot(f"l-{i}", Decimal("1.0000"), T0 + timedelta(days=i), False) for i in range(5)
        ),
        notifications=Notifications(("ops@example.com",), None, "sealed", ("exhausted",), "n-1"),
    )
    view = account_view(full, "USD", T0)
    assert len(view["expiring"]) == 3
    valid(AccountView, orjson.dumps(view))


@pytest.mark.parametrize("status", list(RechargeStatus))
def test_the_account_view_with_a_pending_recharge_validates(status: RechargeStatus) -> None:
    pending = PendingRecharge(LONG_ID, LARGEST, 3, LATER, status, None)
    account = Account(TENANT, balance=Decimal("-0.0100"), pending=pending, updated_at=T0)
    raw = orjson.dumps(account_view(account, "USD", T0))
    assert (
        b'"pending_recharge":{"request_id":"' + LONG_ID.encode() + b'","amount":"'
        b'999999999999999999.999999999999","attempt":3,"requested_at":'
        b'"2026-11-23T10:00:00.123456Z","status":"' + status.value.encode() + b'"}'
    ) in raw
    valid(AccountView, raw)


def test_the_account_view_of_an_account_never_changed_says_null() -> None:
    # The model requires updated_at; an account no change has stamped yet (the core
    # stamps every change it makes) is shown with null, as it always was.
    view = account_view(Account(TENANT), "USD", T0)
    assert list(view) == list(AccountView.model_fields)
    assert view["updated_at"] is None
    assert view["balance"] == view["credit_limit"] == "0"


@pytest.mark.parametrize("number", ["+14155550100", "+999"])
def test_the_authorize_view_validates(number: str) -> None:
    account = Account(TENANT, balance=Decimal("10.0000"))
    valid(AuthorizeView, orjson.dumps(authorize_view(TENANT, account, CARD, "outbound", number)))
    valid(AuthorizeView, orjson.dumps(authorize_view(TENANT, None, CARD, "outbound", number)))


def test_the_wire_timestamps_are_utc_text() -> None:
    assert wire.wire_time(T0) is T0  # orjson writes it
    other = T0.astimezone(timezone(timedelta(hours=-5)))
    assert wire.wire_time(other) == "2026-11-23T10:00:00Z"


# ---- the bytes themselves ------------------------------------------------------------------
#
# Consumers read these bytes, not the models: field order, money text and timestamp
# text are pinned here, as the worker wrote them before the formats moved to wire.py.

PINNED: list[tuple[object, bytes]] = [
    (
        LedgerOut(
            "acme:debit:1",
            "acme",
            "debit",
            Decimal("0.0200"),
            Decimal("-0.0200"),
            "usage.calls",
            "call-1",
            T0,
            LATER,
            "+1",
            Decimal("0.0100"),
            120,
        ),
        b'{"type":"ledger_entry","entry_id":"acme:debit:1","tenant_id":"acme","kind":"debit",'
        b'"amount":"0.0200","currency":"USD","balance_after":"-0.0200","cause_topic":'
        b'"usage.calls","cause_id":"call-1","occurred_at":"2026-11-23T10:00:00Z","recorded_at":'
        b'"2026-11-23T10:00:00.123456Z","rate_prefix":"+1","rate_per_minute":"0.0100",'
        b'"billed_seconds":120}',
    ),
    (
        LedgerOut(
            "acme:credit:1",
            "acme",
            "credit",
            LARGEST,
            Decimal("1000"),
            "credits.commands",
            "c-1",
            T0,
            T0,
            actor="ops",
        ),
        b'{"type":"ledger_entry","entry_id":"acme:credit:1","tenant_id":"acme","kind":"credit",'
        b'"amount":"999999999999999999.999999999999","currency":"USD","balance_after":"1000",'
        b'"cause_topic":"credits.commands","cause_id":"c-1","occurred_at":"2026-11-23T10:00:00Z",'
        b'"recorded_at":"2026-11-23T10:00:00Z","actor":"ops"}',
    ),
    (
        AlertOut(
            "a-1",
            "acme",
            AlertKind.RECHARGE_FAILED,
            Decimal("-1.00"),
            T0,
            reason="carte refusée",
            request_id="r-1",
        ),
        b'{"type":"balance_alert","alert_id":"a-1","tenant_id":"acme","alert":"recharge_failed",'
        b'"balance":"-1.00","currency":"USD","occurred_at":"2026-11-23T10:00:00Z","reason":'
        b'"carte refus\xc3\xa9e","request_id":"r-1"}',
    ),
    (
        AlertOut(
            "a-2",
            "acme",
            AlertKind.FUNDS_EXPIRING,
            Decimal("3.0000"),
            T0,
            amount=Decimal("3.0000"),
            expires_at=T0 + timedelta(days=7),
        ),
        b'{"type":"balance_alert","alert_id":"a-2","tenant_id":"acme","alert":"funds_expiring",'
        b'"balance":"3.0000","currency":"USD","occurred_at":"2026-11-23T10:00:00Z","amount":'
        b'"3.0000","expires_at":"2026-11-30T10:00:00Z"}',
    ),
    (
        AlertOut("a-3", "acme", AlertKind.EXHAUSTED, Decimal("-0.0100"), T0, status_seq=7),
        b'{"type":"balance_alert","alert_id":"a-3","tenant_id":"acme","alert":"exhausted",'
        b'"balance":"-0.0100","currency":"USD","occurred_at":"2026-11-23T10:00:00Z",'
        b'"status_seq":7}',
    ),
    (
        RechargeOut("r-1", "acme", Decimal("50.00"), Decimal("5.00"), Decimal("4.99"), 2, LATER),
        b'{"type":"recharge_requested","request_id":"r-1","tenant_id":"acme","amount":"50.00",'
        b'"currency":"USD","trigger_balance":"5.00","balance":"4.99","attempt":2,"requested_at":'
        b'"2026-11-23T10:00:00.123456Z"}',
    ),
    (
        NotificationsOut(
            "acme",
            Notifications(
                ("ops@example.com",),
                "https://h.example.com/x",
                "sealed",
                ("low_balance", "exhausted"),
                "n-1",
            ),
            T0,
        ),
        b'{"type":"notification_settings","tenant_id":"acme","emails":["ops@example.com"],'
        b'"webhook_url":"https://h.example.com/x","webhook_secret_sealed":"sealed","events":'
        b'["low_balance","exhausted"],"command_id":"n-1","updated_at":"2026-11-23T10:00:00Z"}',
    ),
]


@pytest.mark.parametrize(("out", "raw"), PINNED, ids=[raw[:40].decode() for _, raw in PINNED])
def test_an_outputs_bytes_are_pinned(out: Output, raw: bytes) -> None:
    assert wire.dump_output(out, "USD") == raw


def test_a_timer_ticks_bytes_are_pinned() -> None:
    assert wire.dump_tick(TimerTick("t-1", "acme", "r-1", 2, LATER)) == (
        b'{"tick_id":"t-1","tenant_id":"acme","request_id":"r-1","attempt":2,'
        b'"at":"2026-11-23T10:00:00.123456Z"}'
    )
    expiry = TimerTick("t-2", "acme", "", 0, T0, EXPIRY_TICK)
    assert wire.dump_tick(expiry) == (
        b'{"tick_id":"t-2","tenant_id":"acme","kind":"expiry","at":"2026-11-23T10:00:00Z"}'
    )
    assert wire.load_tick(wire.dump_tick(expiry)) == expiry


def test_a_command_results_and_a_rejections_bytes_are_pinned() -> None:
    assert wire.command_result(
        "c-1", "acme", "funds_added", "rejected", None, "invalid_event", "bad", T0
    ) == (
        b'{"type":"command_result","command_id":"c-1","tenant_id":"acme","command_type":'
        b'"funds_added","outcome":"rejected","entry_id":null,"reason":"invalid_event",'
        b'"detail":"bad","recorded_at":"2026-11-23T10:00:00Z"}'
    )
    body = wire.rejection("invalid_event", "bad", "usage.calls", 3, 12, LATER)
    raw = sizing.rejection_value(
        body, key=b"acme", key_facts=None, value=b"{}", out_key=b"acme", limit=1_000_000
    )
    assert raw == (
        b'{"type":"rejected","reason":"invalid_event","detail":"bad","source_topic":'
        b'"usage.calls","source_partition":3,"source_offset":12,"key":"acme","payload":"{}",'
        b'"rejected_at":"2026-11-23T10:00:00.123456Z"}'
    )
