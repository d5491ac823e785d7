"""The engine (processor.core.engine): decoded inputs to transitions, against
CONTRACT.md. Inputs are schemas models built from contract-shaped dicts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from processor.core.dedupe import DedupeWindow, dedupe_key
from processor.core.engine import Engine, TimerTick
from processor.core.outcome import Status
from processor.core.outputs import AlertKind, AlertOut, LedgerOut, Output, RechargeOut
from processor.core.rate_card_parser import parse_rate_card
from processor.core.state import PendingRecharge, RechargePolicy, RechargeStatus
from processor.core.stored import Position
from schemas import AutoRechargeConfigured, BalanceAlert, LedgerEntry, RechargeRequested
from tests.unit.conftest import (
    CALLS,
    CARD2,
    CARD_DATA,
    COMMANDS,
    CONFERENCING,
    POLICY,
    T0,
    TENANT,
    TIMER,
    TOLL_FREE,
    UK,
    UK_MOBILE,
    UNRATED,
    US,
    D,
    Harness,
    Inputs,
    make_engine,
)

HOUR = timedelta(hours=1)


def exponent(value: Decimal) -> int:
    exp = value.as_tuple().exponent
    assert isinstance(exp, int)
    return exp


def contract_model(out: Output, currency: str = "USD") -> Any:
    """The output as the contract's model: validates names, signs and shapes."""
    if isinstance(out, LedgerOut):
        return LedgerEntry.model_validate(
            # kind: the core's str, checked against the contract's Literal here
            dict(
                entry_id=out.entry_id,
                tenant_id=out.tenant_id,
                kind=out.kind,
                amount=out.amount,
                currency=currency,
                balance_after=out.balance_after,
                cause_topic=out.cause_topic,
                cause_id=out.cause_id,
                occurred_at=out.occurred_at,
                recorded_at=out.recorded_at,
                rate_prefix=out.rate_prefix,
                rate_per_minute=out.rate_per_minute,
                billed_seconds=out.billed_seconds,
            )
        )
    if isinstance(out, AlertOut):
        return BalanceAlert(
            alert_id=out.alert_id,
            tenant_id=out.tenant_id,
            alert=out.alert.value,
            balance=out.balance,
            currency=currency,
            occurred_at=out.occurred_at,
            status_seq=out.status_seq,
            reason=out.reason,
            request_id=out.request_id,
            amount=out.amount,
        )
    assert isinstance(out, RechargeOut), out
    return RechargeRequested(
        request_id=out.request_id,
        tenant_id=out.tenant_id,
        amount=out.amount,
        currency=currency,
        trigger_balance=out.trigger_balance,
        balance=out.balance,
        attempt=out.attempt,
        requested_at=out.requested_at,
    )


def pending(h: Harness) -> PendingRecharge:
    p = h.account().pending
    assert p is not None
    return p


def suspended(h: Harness) -> bool:
    s = h.account().auto_recharge
    assert s is not None
    return s.suspended


# ---- rating usage ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "table_key", "number", "duration", "amount", "prefix", "per_minute", "billed"),
    [
        ("call", "outbound", US, 60, "0.0200", "+1", "0.0200", 60),
        ("call", "outbound", US, 61, "0.0400", "+1", "0.0200", 120),
        ("call", "outbound", US, 1, "0.0200", "+1", "0.0200", 60),
        ("call", "outbound", UK, 10, "0.0175", "+44", "0.0350", 30),  # 30 s minimum
        ("call", "outbound", UK, 45, "0.0263", "+44", "0.0350", 45),  # 0.02625 half_up
        # longest prefix wins; connect fee added: 0.0100 + 0.1200 * 7 / 60 = 0.0240
        ("call", "outbound", UK_MOBILE, 7, "0.0240", "+447", "0.1200", 7),
        ("call", "toll_free_inbound", TOLL_FREE, 90, "0.0380", "+1800", "0.0190", 120),
        ("conference", "dial_out", US, 60, "0.0150", "+1", "0.0150", 60),
        ("conference", "toll_free_dial_in", TOLL_FREE, 60, "0.0190", "+1800", "0.0190", 60),
    ],
)
def test_usage_is_rated_in_its_table_and_debited_with_one_entry(
    harness: Harness,
    inputs: Inputs,
    kind: str,
    table_key: str,
    number: str,
    duration: int,
    amount: str,
    prefix: str,
    per_minute: str,
    billed: int,
) -> None:
    harness.command(inputs.funds("10.0000", "f-1"))
    at = T0 - HOUR
    if kind == "call":
        event: Any = inputs.call(
            "ev-1", duration=duration, number=number, call_type=table_key, at=at
        )
    else:
        event = inputs.conference(
            "ev-1", duration=duration, number=number, leg_type=table_key, at=at
        )
    harness.advance(timedelta(seconds=3))
    outcome = harness.usage(event)
    assert outcome.status is Status.APPLIED
    (entry,) = outcome.outputs
    assert isinstance(entry, LedgerOut)
    assert entry.kind == "debit"
    assert str(entry.amount) == amount
    assert str(entry.balance_after) == str(D("10.0000") - D(amount))
    assert (entry.rate_prefix, str(entry.rate_per_minute), entry.billed_seconds) == (
        prefix,
        per_minute,
        billed,
    )
    assert entry.cause_topic == (CALLS if kind == "call" else CONFERENCING)
    assert entry.cause_id == "ev-1"
    assert entry.occurred_at == at and entry.recorded_at == harness.now
    assert outcome.account == harness.account()
    assert harness.account().balance == entry.balance_after
    assert harness.account().entries == 2
    contract_model(entry)


def test_zero_duration_changes_nothing_and_writes_no_entry(
    harness: Harness, inputs: Inputs
) -> None:
    harness.command(inputs.funds("10.0000"))
    before = harness.account()
    outcome = harness.usage(inputs.call("ev-0", duration=0))
    assert outcome.status is Status.APPLIED and outcome.outputs == ()
    assert harness.account() == before
    # a repeat changes nothing either (nothing was written, so there is no mark)
    again = harness.usage(inputs.call("ev-0", duration=0))
    assert again.status in (Status.APPLIED, Status.DUPLICATE) and again.outputs == ()
    assert harness.account() == before


def test_zero_duration_from_a_new_tenant_creates_no_account(
    harness: Harness, inputs: Inputs
) -> None:
    outcome = harness.usage(inputs.call("ev-0", duration=0))
    assert outcome.status is Status.APPLIED and outcome.outputs == ()
    assert TENANT not in harness.engine.accounts


# ---- rejections --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["call", "conference"])
@pytest.mark.parametrize("duration", [60, 0])
def test_no_rate_is_rejected_and_not_marked_seen(
    harness: Harness, inputs: Inputs, kind: str, duration: int
) -> None:
    harness.command(inputs.funds("10.0000"))
    before = harness.account()
    seen = dict(harness.engine.seen)
    event: Any = (
        inputs.call("ev-x", number=UNRATED, duration=duration)
        if kind == "call"
        else inputs.conference("ev-x", number=UNRATED, duration=duration)
    )
    outcome = harness.usage(event)
    assert outcome.status is Status.REJECTED and outcome.outputs == ()
    assert outcome.rejection is not None and outcome.rejection.reason == "no_rate"
    assert UNRATED in outcome.rejection.detail
    assert harness.account() == before and harness.engine.seen == seen
    # a re-send is rejected again, not taken for a duplicate
    assert harness.usage(event).status is Status.REJECTED


def test_a_rejected_usage_applies_on_replay_once_the_card_is_fixed(
    harness: Harness, inputs: Inputs
) -> None:
    event = inputs.call("ev-fr", number=UNRATED, duration=60)
    assert harness.usage(event).status is Status.REJECTED
    data = {**CARD_DATA, "tables": {**CARD_DATA["tables"]}}
    data["tables"]["outbound"] = [
        *CARD_DATA["tables"]["outbound"],
        {"prefix": "+33", "per_minute": "0.0300"},
    ]
    old = harness.engine
    fixed = Engine(parse_rate_card(data), POLICY, old.dedupe, old.accounts, old.seen)
    # replayed from credits.rejected: the same event, a new record on the input topic
    outcome = fixed.usage(event, CALLS, T0, harness.offsets.next(CALLS))
    assert outcome.status is Status.APPLIED
    (entry,) = outcome.outputs
    assert isinstance(entry, LedgerOut)
    assert (entry.rate_prefix, str(entry.amount)) == ("+33", "0.0300")
    dup = fixed.usage(event, CALLS, T0, harness.offsets.next(CALLS))
    assert dup.status is Status.DUPLICATE


def test_the_wrong_table_does_not_rate(harness: Harness, inputs: Inputs) -> None:
    # +44 numbers are outbound-rated only; as a toll-free number there is no rate.
    outcome = harness.usage(inputs.call("ev", number=UK, call_type="toll_free_inbound"))
    assert outcome.status is Status.REJECTED
    assert outcome.rejection is not None and outcome.rejection.reason == "no_rate"


def test_funds_in_another_currency_are_rejected_and_can_be_replayed(
    harness: Harness, inputs: Inputs
) -> None:
    wrong = inputs.funds("10.0000", "f-1", currency="EUR")
    outcome = harness.command(wrong)
    assert outcome.status is Status.REJECTED and outcome.outputs == ()
    assert outcome.rejection is not None and outcome.rejection.reason == "currency_mismatch"
    assert TENANT not in harness.engine.accounts and harness.engine.seen == {}
    # the fixed command, same command_id, applies
    fixed = harness.command(inputs.funds("10.0000", "f-1"))
    assert fixed.status is Status.APPLIED
    assert str(harness.account().balance) == "10.0000"


def test_auto_recharge_funds_in_another_currency_are_rejected(
    harness: Harness, inputs: Inputs
) -> None:
    harness.command(inputs.configure("s-1"))
    pending = harness.account().pending
    assert pending is not None
    outcome = harness.command(inputs.auto_funds("50.0000", pending.request_id, currency="GBP"))
    assert outcome.status is Status.REJECTED
    assert harness.account().pending == pending


def test_settings_naming_another_currency_are_rejected(harness: Harness) -> None:
    body = {
        "type": "auto_recharge_configured",
        "command_id": "s-eur",
        "tenant_id": TENANT,
        "occurred_at": "2026-11-23T10:00:00Z",
        "enabled": True,
        "recharge_amount": "50.0000",
        "trigger_balance": "10.0000",
    }
    wrong = AutoRechargeConfigured.model_validate({**body, "currency": "EUR"})
    outcome = harness.command(wrong)
    assert outcome.status is Status.REJECTED
    assert outcome.rejection is not None and outcome.rejection.reason == "currency_mismatch"
    right = AutoRechargeConfigured.model_validate({**body, "currency": "USD"})
    assert harness.command(right).status is Status.APPLIED


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda i: i.funds("10.00001"), "amount"),
        (lambda i: i.funds("0.00001"), "amount"),
        (lambda i: i.configure(recharge_amount="50.00005"), "recharge_amount"),
        (lambda i: i.configure(trigger="10.123456"), "trigger_balance"),
    ],
)
def test_money_with_more_places_than_the_card_is_rejected(
    harness: Harness, inputs: Inputs, build: Any, field: str
) -> None:
    outcome = harness.command(build(inputs))
    assert outcome.status is Status.REJECTED and outcome.outputs == ()
    assert outcome.rejection is not None and field in outcome.rejection.detail
    assert outcome.rejection.reason == "invalid_event"
    assert harness.engine.accounts == {} and harness.engine.seen == {}


@pytest.mark.parametrize("amount", ["50", "50.5", "50.50000", "0.0001"])
def test_money_is_kept_at_the_cards_places(harness: Harness, inputs: Inputs, amount: str) -> None:
    outcome = harness.command(inputs.funds(amount, "f-1"))
    assert outcome.status is Status.APPLIED
    entry = outcome.outputs[0]
    assert isinstance(entry, LedgerOut)
    assert exponent(entry.amount) == -4 and exponent(entry.balance_after) == -4
    assert entry.amount == D(amount)
    assert exponent(harness.account().balance) == -4


def test_settings_are_kept_at_the_cards_places(harness: Harness, inputs: Inputs) -> None:
    harness.command(inputs.configure("s-1", recharge_amount="25", trigger="5.5"))
    settings = harness.account().auto_recharge
    assert settings is not None
    assert (str(settings.recharge_amount), str(settings.trigger_balance)) == ("25.0000", "5.5000")
    (req,) = harness.requests()
    assert (str(req.amount), str(req.trigger_balance)) == ("25.0000", "5.5000")


def test_a_new_tenants_first_request_reports_the_balance_at_the_cards_places(
    harness: Harness, inputs: Inputs
) -> None:
    # "Balances ... are kept and reported at rounding.decimals places": the very
    # first request of a new tenant carries balance 0.0000, not 0.
    outcome = harness.command(inputs.configure("s-1", trigger="10.0000"))
    (req,) = outcome.outputs
    assert isinstance(req, RechargeOut)
    assert str(req.balance) == "0.0000"
    assert str(harness.account().balance) == "0.0000"
    contract_model(req)


def test_another_precision_card() -> None:
    h = Harness(make_engine(CARD2))
    i = Inputs(currency="EUR")
    h.command(i.configure("s-1", recharge_amount="20", trigger="5"))
    h.command(i.funds("3", "f-1"))
    h.usage(i.call("ev-1", number=UK, duration=31))  # 0.35 * 31 / 60 = 0.1808.. down: 0.18
    outs = h.outputs
    assert str(h.account().balance) == "2.82"
    for out in outs:
        if isinstance(out, LedgerOut):
            values = [out.amount, out.balance_after]
        elif isinstance(out, AlertOut):
            values = [out.balance]
        else:
            assert isinstance(out, RechargeOut), out
            values = [out.amount, out.trigger_balance, out.balance]
        assert all(exponent(v) == -2 for v in values), out
    assert [str(r.balance) for r in h.requests()] == ["0.00"]
    assert h.command(i.funds("1.001")).status is Status.REJECTED
    assert h.command(i.funds("1.00", currency="USD")).status is Status.REJECTED


# ---- duplicates --------------------------------------------------------------------


def test_a_repeated_usage_event_is_a_duplicate(harness: Harness, inputs: Inputs) -> None:
    harness.command(inputs.funds("10.0000"))
    first = harness.usage(inputs.call("ev-1", duration=60))
    assert first.status is Status.APPLIED
    before = harness.account()
    # even with another body (a re-send after a producer retry, say)
    for again in (inputs.call("ev-1", duration=60), inputs.call("ev-1", duration=600)):
        outcome = harness.usage(again)
        assert outcome.status is Status.DUPLICATE and outcome.outputs == ()
        assert harness.account() == before


def test_duplicates_are_per_tenant_and_per_usage_kind(harness: Harness, inputs: Inputs) -> None:
    harness.command(inputs.funds("10.0000"))
    harness.command(inputs.funds("10.0000", tenant="other"))
    assert harness.usage(inputs.call("ev-1")).status is Status.APPLIED
    assert harness.usage(inputs.conference("ev-1")).status is Status.APPLIED
    assert harness.usage(inputs.call("ev-1", tenant="other")).status is Status.APPLIED
    assert harness.usage(inputs.conference("ev-1")).status is Status.DUPLICATE
    assert len(harness.ledger()) == 3 and len(harness.ledger("other")) == 2


@pytest.mark.parametrize(
    "build",
    [
        lambda i: i.funds("10.0000", "c-1"),
        lambda i: i.configure("c-1", trigger="1000.0000"),
        lambda i: i.failed("whatever", "c-1"),
    ],
)
def test_a_repeated_command_id_is_a_duplicate_whatever_its_type(
    harness: Harness, inputs: Inputs, build: Any
) -> None:
    assert harness.command(inputs.funds("5.0000", "c-1")).status is Status.APPLIED
    before = harness.account()
    outcome = harness.command(build(inputs))
    assert outcome.status is Status.DUPLICATE and outcome.outputs == ()
    assert harness.account() == before


def test_the_same_command_id_of_another_tenant_is_not_a_duplicate(
    harness: Harness, inputs: Inputs
) -> None:
    harness.command(inputs.funds("5.0000", "c-1"))
    assert harness.command(inputs.funds("5.0000", "c-1", tenant="other")).status is Status.APPLIED


def test_seen_is_remembered_for_the_dedupe_window(harness: Harness, inputs: Inputs) -> None:
    harness.advance(timedelta(minutes=5))
    occurred = T0 - timedelta(days=1)
    harness.command(inputs.funds("5.0000", "c-1", at=occurred))
    key = dedupe_key(TENANT, "command", "c-1")
    expires = harness.engine.seen[key].expires
    assert expires >= int((occurred + timedelta(days=7)).timestamp())
    assert expires == int((harness.now + timedelta(days=7)).timestamp())
    # Ahead of the clock: from the event's time, but never past now + the window +
    # METER_MAX_FUTURE_SECONDS (an event further ahead is refused before it is marked).
    minute = timedelta(minutes=1)
    assert DedupeWindow(7).expires(T0 + minute, T0) == int(
        (T0 + minute + timedelta(days=7)).timestamp()
    )
    assert DedupeWindow(7).expires(T0 + HOUR, T0) == int(
        (T0 + timedelta(seconds=300) + timedelta(days=7)).timestamp()
    )
    assert DedupeWindow(7).expires(datetime(8999, 12, 31, tzinfo=UTC), T0) == int(
        (T0 + timedelta(seconds=300) + timedelta(days=7)).timestamp()
    )


def test_a_mark_never_ends_before_its_window() -> None:
    # Rounded down, a mark made at .5 s would go half a second before its event is
    # older than the window, and a repeat in that half second would be metered again.
    half = T0 + timedelta(milliseconds=500)
    window = DedupeWindow(7)
    expires = window.expires(half, half)
    assert expires == int((T0 + timedelta(days=7)).timestamp()) + 1
    gone = datetime.fromtimestamp(expires, UTC)
    assert window.too_old(half, gone + timedelta(microseconds=1))


def test_dedupe_keys_are_distinct() -> None:
    keys = {
        dedupe_key("a", "call", "x"),
        dedupe_key("a", "conference", "x"),
        dedupe_key("a", "command", "x"),
        dedupe_key("b", "call", "x"),
        dedupe_key("a", "call", "y"),
    }
    assert len(keys) == 5


# ---- the recharge cycle through the engine ------------------------------------------------


def test_funds_matching_close_and_stale_ids_are_still_credited(
    harness: Harness, inputs: Inputs
) -> None:
    harness.command(inputs.configure("s-1", recharge_amount="50.0000", trigger="10.0000"))
    (req,) = harness.requests()
    stale = harness.command(inputs.auto_funds("50.0000", "not-a-request", "f-stale"))
    assert stale.status is Status.APPLIED
    assert str(harness.account().balance) == "50.0000"
    assert harness.account().pending is not None  # still open
    closing = harness.command(inputs.auto_funds("50.0000", req.request_id, "f-1"))
    assert closing.status is Status.APPLIED
    assert harness.account().pending is None
    assert str(harness.account().balance) == "100.0000"
    # the same request answered twice (another command id): credited, nothing to close
    again = harness.command(inputs.auto_funds("50.0000", req.request_id, "f-2"))
    assert again.status is Status.APPLIED and str(harness.account().balance) == "150.0000"
    assert len(harness.requests()) == 1


def test_full_cycle_failures_retries_suspension_and_lifting(
    harness: Harness, inputs: Inputs
) -> None:
    h, i = harness, inputs
    h.command(i.funds("10.5000", "f-1"))
    h.command(i.configure("s-1", recharge_amount="20.0000", trigger="10.0000"))
    assert h.requests() == []
    h.advance(timedelta(minutes=1))
    debit = h.usage(i.call("ev-1", duration=1800))  # 30 min: 0.6000 -> 9.9000
    kinds = [type(o).__name__ for o in debit.outputs]
    assert kinds == ["LedgerOut", "AlertOut", "RechargeOut"]
    assert h.alerts()[-1].alert is AlertKind.LOW_BALANCE
    (req,) = h.requests()
    rid = req.request_id
    assert req.attempt == 1 and str(req.balance) == "9.9000"

    # attempt 1 fails at billing
    h.advance(timedelta(minutes=1))
    failed = h.command(i.failed(rid, "x-1"))
    assert failed.status is Status.APPLIED and failed.outputs == ()
    assert pending(h).status is RechargeStatus.FAILED
    # a retry tick too early changes nothing
    h.advance(POLICY.retry_after - timedelta(seconds=1))
    early = h.tick()
    assert early.status is Status.IGNORED and early.note == "not_due"
    h.advance(timedelta(seconds=1))
    retry = h.tick()
    assert retry.status is Status.APPLIED
    assert [(r.request_id, r.attempt) for r in h.requests()] == [(rid, 1), (rid, 2)]
    assert retry.account == h.account()

    # attempt 2 times out (no answer within the timeout), then is retried
    h.advance(POLICY.timeout - timedelta(seconds=1))
    assert h.tick().status is Status.IGNORED
    h.advance(timedelta(seconds=1))
    timed_out = h.tick()
    assert timed_out.status is Status.APPLIED and timed_out.outputs == ()
    h.advance(POLICY.retry_after)
    h.tick()
    assert [r.attempt for r in h.requests()] == [1, 2, 3]
    assert {r.request_id for r in h.requests()} == {rid}

    # a stale tick for attempt 2 changes nothing
    before = h.account()
    assert h.tick(attempt=2).status is Status.IGNORED
    assert h.tick(request_id="other", attempt=3).status is Status.IGNORED
    assert h.account() == before

    # attempt 3 fails: suspended, one recharge_failed alert
    h.advance(timedelta(minutes=1))
    last = h.command(i.failed(rid, "x-3"))
    assert [o.alert for o in last.outputs if isinstance(o, AlertOut)] == [AlertKind.RECHARGE_FAILED]
    settings = h.account().auto_recharge
    assert settings is not None and settings.suspended and h.account().pending is None
    # a failure for a closed request is ignored (but remembered as seen)
    late = h.command(i.failed(rid, "x-4"))
    assert late.status is Status.IGNORED and late.note == "unknown_or_closed_request"
    before = h.account()
    again = h.command(i.failed(rid, "x-4"))
    assert again.status in (Status.DUPLICATE, Status.IGNORED) and again.outputs == ()
    assert h.account() == before
    # usage while suspended: no request
    h.usage(i.call("ev-2"))
    assert len(h.requests()) == 3
    # an auto-recharge funds (a late answer) does not lift the suspension
    h.command(i.auto_funds("0.0100", rid, "f-late"))
    assert suspended(h)
    assert len(h.requests()) == 3
    # manual funds lift it, and the balance is still below the trigger: new request
    lifted = h.command(i.funds("0.0100", "m-1"))
    (new,) = [o for o in lifted.outputs if isinstance(o, RechargeOut)]
    assert new.request_id != rid and new.attempt == 1
    assert not suspended(h)
    for out in h.outputs:
        contract_model(out)


def test_a_resent_stale_failure_does_not_fail_the_next_attempt(
    harness: Harness, inputs: Inputs
) -> None:
    # "command_id: a repeat is a duplicate". Billing's failure for attempt 1 comes
    # after the timeout already counted it (ignored); when billing re-sends that same
    # command during attempt 2, it must not count as attempt 2 failing.
    h, i = harness, inputs
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    h.advance(POLICY.timeout)
    h.tick()  # attempt 1 timed out
    stale = h.command(i.failed(req.request_id, "x-1"))
    assert stale.status is Status.IGNORED and stale.note == "attempt_already_failed"
    h.advance(POLICY.retry_after)
    h.tick()  # attempt 2 sent
    assert pending(h).attempt == 2
    before = h.account()
    resent = h.command(i.failed(req.request_id, "x-1"))
    assert resent.status is Status.DUPLICATE and resent.outputs == ()
    assert h.account() == before
    assert pending(h).status is RechargeStatus.OUTSTANDING


def test_a_late_failure_of_an_earlier_attempt_does_not_fail_the_current_one(
    harness: Harness, inputs: Inputs
) -> None:
    # Issue 16, item 7: billing's failure of attempt 1 arrives (as a new command) while
    # attempt 2 is with billing; naming its attempt, it no longer fails attempt 2.
    h, i = harness, inputs
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    h.advance(POLICY.timeout)
    h.tick()  # attempt 1 timed out
    h.advance(POLICY.retry_after)
    h.tick()  # attempt 2 sent
    assert pending(h).attempt == 2
    before = h.account()
    late = h.command(i.failed(req.request_id, "x-late", attempt=1))
    assert late.status is Status.IGNORED and late.note == "earlier_attempt"
    assert late.outputs == ()
    assert h.account().pending == before.pending
    assert pending(h).status is RechargeStatus.OUTSTANDING
    # the answer for attempt 2 itself still fails it
    now_failed = h.command(i.failed(req.request_id, "x-2", attempt=2))
    assert now_failed.status is Status.APPLIED
    assert pending(h).status is RechargeStatus.FAILED


def test_a_failure_without_attempt_still_fails_the_attempt_outstanding(
    harness: Harness, inputs: Inputs
) -> None:
    h, i = harness, inputs
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    h.advance(POLICY.timeout)
    h.tick()
    h.advance(POLICY.retry_after)
    h.tick()  # attempt 2 sent
    assert h.command(i.failed(req.request_id, "x-any")).status is Status.APPLIED
    assert pending(h).attempt == 2 and pending(h).status is RechargeStatus.FAILED


def test_auto_recharge_funds_naming_their_attempt_close_the_request(
    harness: Harness, inputs: Inputs
) -> None:
    # The money arrived for the request, whichever attempt billing charged it on.
    h, i = harness, inputs
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    h.advance(POLICY.timeout)
    h.tick()
    h.advance(POLICY.retry_after)
    h.tick()  # attempt 2 sent
    outcome = h.command(i.auto_funds("50.0000", req.request_id, "f-1", attempt=1))
    assert outcome.status is Status.APPLIED and outcome.recharge == ("fulfilled",)
    assert h.account().pending is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "recharge_failed", "reason": "x", "recharge_request_id": "r", "attempt": 0},
         "attempt"),
        ({"type": "recharge_failed", "reason": "x", "recharge_request_id": "r", "attempt": True},
         "attempt"),
        ({"type": "recharge_failed", "reason": "x", "recharge_request_id": "r", "attempt": "2"},
         "attempt"),
        ({"type": "funds_added", "amount": "1.00", "currency": "USD", "source": "manual",
          "attempt": 1}, "needs recharge_request_id"),
    ],
)  # fmt: skip
def test_an_attempt_must_be_a_positive_integer_naming_a_request(
    body: dict[str, Any], problem: str
) -> None:
    import json

    from schemas import DecodeError, decode_command

    command = {"command_id": "c", "tenant_id": TENANT, "occurred_at": "2026-11-23T10:00:00Z"}
    with pytest.raises(DecodeError, match=problem) as raised:
        decode_command(json.dumps({**command, **body}).encode())
    assert raised.value.reason == "invalid_event"


@pytest.mark.parametrize("via_timeout", [False, True])
def test_disabling_while_the_last_attempt_is_out_ends_it_quietly(
    harness: Harness, inputs: Inputs, via_timeout: bool
) -> None:
    # Issue 16, item 7: auto-recharge turned off while attempt 3 (the last) is with
    # billing; its failure or timeout ends the request with no suspension and no
    # recharge_failed alert.
    h, i = harness, inputs
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    for _ in range(POLICY.max_attempts - 1):
        h.advance(POLICY.timeout)
        h.tick()
        h.advance(POLICY.retry_after)
        h.tick()
    assert pending(h).attempt == POLICY.max_attempts
    h.command(i.configure("s-2", enabled=False))
    assert pending(h).status is RechargeStatus.OUTSTANDING  # billing may still charge
    if via_timeout:
        h.advance(POLICY.timeout)
        outcome = h.tick()
    else:
        outcome = h.command(i.failed(req.request_id, "x-3", attempt=POLICY.max_attempts))
    assert outcome.status is Status.APPLIED and outcome.outputs == ()
    assert "suspended" not in outcome.recharge and "dropped" in outcome.recharge
    assert h.account().pending is None
    assert not suspended(h)
    assert [a.alert for a in h.alerts()] == []
    # re-enabled later, auto-recharge works again at once
    h.command(i.configure("s-3"))
    assert pending(h).attempt == 1 and pending(h).request_id != req.request_id


def test_a_record_read_again_after_a_crash_changes_nothing_and_sends_nothing_again(
    harness: Harness, inputs: Inputs
) -> None:
    # "Each distinct usage event and command changes its tenant's balance exactly
    # once, through crashes"; "Outputs may be re-delivered after a crash only with the
    # same ids".
    h, i = harness, inputs
    h.command(i.funds("5.1000", "f-1"))
    h.command(i.configure("s-1", trigger="5.0000"))
    position = Position(f"{CALLS}:0", 100)
    event = i.call("ev-1", duration=600)
    first = h.usage(event, position)
    assert first.status is Status.APPLIED and len(first.outputs) == 3  # entry, low, request
    before = h.engine.accounts[TENANT]
    again = h.usage(event, position)
    # The value that applied it was written only after its outputs were in Kafka.
    assert again.status is Status.REPLAYED
    assert again.outputs == ()
    assert h.account() == before.account
    # an older record of the same partition is also already in the balance
    older = h.usage(i.call("ev-0", duration=600), Position(f"{CALLS}:0", 99))
    assert older.status is Status.REPLAYED and older.outputs == ()
    assert h.account() == before.account


def test_new_settings_lift_the_suspension(harness: Harness, inputs: Inputs) -> None:
    h, i = harness, inputs
    h.engine.policy = RechargePolicy(max_attempts=1)
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    h.command(i.failed(req.request_id, "x-1"))
    assert suspended(h)
    h.command(i.configure("s-2"))
    assert not suspended(h)
    assert len(h.requests()) == 2 and h.requests()[1].request_id != req.request_id


def test_the_next_request_follows_the_funds(harness: Harness, inputs: Inputs) -> None:
    h, i = harness, inputs
    h.command(i.configure("s-1", recharge_amount="20.0000", trigger="50.0000"))
    (first,) = h.requests()
    h.command(i.auto_funds("20.0000", first.request_id, "f-1"))
    second = h.requests()[-1]
    assert second.request_id != first.request_id and second.attempt == 1
    assert str(second.balance) == "20.0000"
    h.command(i.auto_funds("20.0000", second.request_id, "f-2"))
    third = h.requests()[-1]
    assert str(third.balance) == "40.0000"
    h.command(i.auto_funds("20.0000", third.request_id, "f-3"))
    assert len(h.requests()) == 3 and h.account().pending is None
    assert str(h.account().balance) == "60.0000"


def test_retry_tick_after_a_top_up_drops_the_request(harness: Harness, inputs: Inputs) -> None:
    h, i = harness, inputs
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    h.command(i.failed(req.request_id, "x-1"))
    h.command(i.funds("100.0000", "m-1"))
    assert h.account().pending is not None  # waiting to be retried
    h.advance(POLICY.retry_after)
    outcome = h.tick()
    assert outcome.status is Status.APPLIED and outcome.outputs == ()
    assert h.account().pending is None and len(h.requests()) == 1


def test_retry_tick_after_disabling_drops_the_request(harness: Harness, inputs: Inputs) -> None:
    h, i = harness, inputs
    h.command(i.configure("s-1"))
    (req,) = h.requests()
    h.advance(POLICY.timeout)
    h.tick()  # timed out: waiting to be retried
    h.command(i.configure("s-2", enabled=False))
    assert h.account().pending is None  # dropped at once
    h.advance(POLICY.retry_after)
    assert h.tick(request_id=req.request_id, attempt=1).status is Status.IGNORED
    assert len(h.requests()) == 1


def test_timer_for_an_unknown_tenant_is_ignored() -> None:
    engine = make_engine()
    tick = TimerTick("t", "nobody", "req", 1, T0)
    outcome = engine.timer(tick, TIMER, Position(f"{TIMER}:0", 0))
    assert outcome.status is Status.IGNORED and outcome.note == "unknown_tenant"
    assert engine.accounts == {}


# ---- ids and determinism ---------------------------------------------------------------


def _scenario(h: Harness) -> None:
    i = Inputs()
    h.command(i.configure("s-1", trigger="30.0000"))
    h.command(i.auto_funds("50.0000", h.requests()[0].request_id, "f-1"))
    h.usage(i.call("ev-1", duration=3600 * 5))
    h.usage(i.conference("ev-2", duration=86400))
    h.advance(timedelta(minutes=3))
    h.command(i.failed(h.requests()[-1].request_id, "x-1"))
    h.advance(HOUR)
    h.tick()
    h.command(i.funds("100.0000", "m-1"))
    # restored, recharge_succeeded (f-1 closed the first request), low_balance
    assert len(h.requests()) == 3 and len(h.alerts()) == 3


def test_replaying_the_same_inputs_gives_the_same_outputs() -> None:
    first, second = Harness(make_engine()), Harness(make_engine())
    _scenario(first)
    _scenario(second)
    assert first.outputs == second.outputs
    assert first.engine.accounts == second.engine.accounts
    assert first.engine.seen == second.engine.seen
    ids = [_ids(o) for o in first.outputs if not isinstance(o, RechargeOut)]
    assert len(ids) == len(set(ids))


def test_ids_do_not_depend_on_the_clock() -> None:
    first, later = Harness(make_engine()), Harness(make_engine(), now=T0 + timedelta(days=3))
    _scenario(first)
    _scenario(later)
    assert [_ids(o) for o in first.outputs] == [_ids(o) for o in later.outputs]


def _ids(out: Output) -> str:
    if isinstance(out, LedgerOut):
        return out.entry_id
    if isinstance(out, AlertOut):
        return out.alert_id
    assert isinstance(out, RechargeOut), out
    return f"{out.request_id}#{out.attempt}"


def test_outcome_account_is_what_is_stored(harness: Harness, inputs: Inputs) -> None:
    outcome = harness.command(inputs.funds("1.0000"))
    assert outcome.account is harness.account()
    assert replace(outcome.account, entries=0) != harness.account()  # sanity: entries count


def test_output_timestamps_come_from_the_given_clock(harness: Harness, inputs: Inputs) -> None:
    now: datetime = harness.advance(timedelta(hours=7))
    harness.command(inputs.configure("s-1"))
    harness.command(inputs.funds("1.0000", at=T0))
    (req,) = harness.requests()
    assert req.requested_at == now
    entry = harness.ledger()[0]
    assert entry.recorded_at == now and entry.occurred_at == T0
    assert all(a.occurred_at == now for a in harness.alerts())
    assert harness.account().updated_at == now


# ---- event time is bounded ----------------------------------------------------------


def test_an_event_too_far_ahead_of_the_clock_is_refused_and_never_marked(
    harness: Harness, inputs: Inputs
) -> None:
    harness.command(inputs.funds("10.0000", "f-1"))
    far = datetime(8999, 12, 31, tzinfo=UTC)
    for outcome in (
        harness.usage(inputs.call("ev-far", at=far)),
        harness.command(inputs.funds("5.0000", "f-far", at=far)),
    ):
        assert outcome.status is Status.REJECTED and outcome.rejection is not None
        assert outcome.rejection.reason == "invalid_event"
        assert "ahead of the processor's clock" in outcome.rejection.detail
        assert "METER_MAX_FUTURE_SECONDS" in outcome.rejection.detail
    assert harness.engine.seen.keys() == {dedupe_key(TENANT, "command", "f-1")}
    assert str(harness.account().balance) == "10.0000"
    # Up to METER_MAX_FUTURE_SECONDS ahead is a clock's skew: applied, and its mark
    # lives no longer than now + the window + that bound.
    ahead = harness.now + timedelta(seconds=299)
    assert harness.usage(inputs.call("ev-skew", at=ahead)).status is Status.APPLIED
    mark = harness.engine.seen[dedupe_key(TENANT, "call", "ev-skew")]
    assert mark.expires <= int((harness.now + timedelta(days=7, seconds=300)).timestamp())
    outcome = harness.usage(inputs.call("ev-301", at=harness.now + timedelta(seconds=301)))
    assert outcome.status is Status.REJECTED


def test_the_future_bound_is_a_setting() -> None:
    engine = Engine(CARD2, POLICY, DedupeWindow(7, max_future_seconds=3600), {}, {})
    h = Harness(engine)
    at = h.now + timedelta(minutes=59)
    assert h.command(Inputs(currency="EUR").funds("1.00", "f", at=at)).status is Status.APPLIED


def test_an_event_older_than_the_dedupe_window_is_too_old(harness: Harness, inputs: Inputs) -> None:
    old = T0 - timedelta(days=7, seconds=1)
    outcome = harness.command(inputs.funds("10.0000", "f-old", at=old))
    assert outcome.status is Status.REJECTED and outcome.rejection is not None
    assert outcome.rejection.reason == "too_old"
    assert "--force-too-old" in outcome.rejection.detail
    outcome = harness.usage(inputs.call("ev-old", at=old))
    assert outcome.rejection is not None and outcome.rejection.reason == "too_old"
    assert harness.find() is None and not harness.engine.seen
    # Just inside the window: applied.
    at = T0 - timedelta(days=7) + timedelta(seconds=1)
    assert harness.command(inputs.funds("10.0000", "f-in", at=at)).status is Status.APPLIED


def test_a_too_old_event_applies_on_an_operators_word_once(
    harness: Harness, inputs: Inputs
) -> None:
    old = T0 - timedelta(days=30)
    cmd = inputs.funds("10.0000", "f-old", at=old)
    outcome = harness.engine.command(
        cmd, COMMANDS, harness.now, harness.offsets.next(COMMANDS), force_too_old=True
    )
    assert outcome.status is Status.APPLIED
    assert str(harness.account().balance) == "10.0000"
    # Its mark holds for the window from now: forced again, it is a duplicate.
    again = harness.engine.command(
        cmd, COMMANDS, harness.now, harness.offsets.next(COMMANDS), force_too_old=True
    )
    assert again.status is Status.DUPLICATE
    call = inputs.call("ev-old", at=old)
    forced = harness.engine.usage(
        call, CALLS, harness.now, harness.offsets.next(CALLS), force_too_old=True
    )
    assert forced.status is Status.APPLIED


def test_a_duplicate_is_a_duplicate_while_its_mark_holds_even_once_too_old(
    harness: Harness, inputs: Inputs
) -> None:
    at = T0 - timedelta(days=6)
    assert harness.command(inputs.funds("10.0000", "f-1", at=at)).status is Status.APPLIED
    harness.advance(timedelta(days=2))  # the event is now 8 days old; its mark holds
    assert harness.command(inputs.funds("10.0000", "f-1", at=at)).status is Status.DUPLICATE
