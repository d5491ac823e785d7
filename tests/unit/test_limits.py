"""Issue 20, part 4: per-tenant credit limit, low-balance level, recharge-to-target mode,
the tenant_limits_configured command, and the recharge_failed alert's reason."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core import account as acc
from processor.core.outcome import Status
from processor.core.outputs import AlertKind, AlertOut, LedgerOut, Output, RechargeOut
from processor.core.state import Account, AutoRecharge, RechargeMode, is_exhausted
from processor.core.transition import Cause
from processor.core.usage import Debit
from processor.http.views import account_view
from processor.kafka import wire
from processor.worker import codec, stored_v2
from schemas import BalanceAlert, DecodeError, TenantLimitsConfigured, decode_command
from schemas.api import AccountView
from tests.unit.conftest import (
    CARD2,
    COMMANDS,
    POLICY,
    T0,
    TENANT,
    UK_MOBILE,
    D,
    Harness,
    Inputs,
    make_engine,
    ts,
)

CALL = Cause("usage.calls", "c-1", T0)


def limits_cmd(inputs: Inputs, cid: str | None = None, **fields: Any) -> TenantLimitsConfigured:
    body = {
        "type": "tenant_limits_configured",
        "command_id": cid or f"limits-{len(fields)}-{sorted(fields)}",
        "tenant_id": TENANT,
        "occurred_at": ts(T0),
        **fields,
    }
    command = decode_command(orjson.dumps(body))
    assert isinstance(command, TenantLimitsConfigured)
    return command


def kinds(outputs: tuple[Output, ...] | list[Output]) -> list[AlertKind]:
    return [o.alert for o in outputs if isinstance(o, AlertOut)]


def debit(amount: str) -> Debit:
    return Debit(D(amount), "+1", D("0.0200"), 60)


# ---- credit_limit ------------------------------------------------------------------


def test_exhausted_is_balance_plus_credit_limit_at_or_below_zero() -> None:
    assert is_exhausted(D("0"))
    assert not is_exhausted(D("-4.9999"), D("5.0000"))
    assert is_exhausted(D("-5.0000"), D("5.0000"))
    assert Account(TENANT, balance=D("-1.0000"), credit_limit=D("2.0000")).exhausted is False


def test_a_debit_below_zero_within_the_credit_limit_does_not_exhaust() -> None:
    a = Account(TENANT, balance=D("1.0000"), credit_limit=D("5.0000"))
    t = acc.apply_debit(a, debit("3.0000"), CALL, T0)
    assert t.account.balance == D("-2.0000")
    assert kinds(t.outputs) == []
    t2 = acc.apply_debit(t.account, debit("3.0000"), Cause("usage.calls", "c-2", T0), T0)
    assert kinds(t2.outputs) == [AlertKind.EXHAUSTED]  # -5.0000 + 5.0000 = 0
    t3 = acc.apply_funds(
        t2.account, D("0.0001"), Cause(COMMANDS, "f", T0), T0, manual=True, recharge_request_id=None
    )
    assert kinds(t3.outputs) == [AlertKind.RESTORED]


def test_a_new_credit_limit_that_crosses_raises_the_status_alert(inputs: Inputs) -> None:
    h = Harness(make_engine())
    h.command(inputs.funds("1.0000"))
    h.usage(inputs.call(number=UK_MOBILE, duration=600))  # 0.0100 + 1.2000: -0.2100
    assert [a.alert for a in h.alerts()] == [AlertKind.RESTORED, AlertKind.EXHAUSTED]
    out = h.command(limits_cmd(inputs, "l-1", credit_limit="1.0000"))
    assert out.status is Status.APPLIED
    assert kinds(out.outputs) == [AlertKind.RESTORED]
    assert not h.account().exhausted
    assert [o for o in out.outputs if isinstance(o, LedgerOut)] == []  # no entry
    out = h.command(limits_cmd(inputs, "l-2", credit_limit="0.2100"))
    assert kinds(out.outputs) == [AlertKind.EXHAUSTED]
    statuses = [a.status_seq for a in h.alerts() if a.status_seq is not None]
    assert statuses == sorted(statuses) == [1, 2, 3, 4]


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(0, 5_000),
    moves=st.lists(st.integers(-3_000, 3_000).filter(bool), min_size=1, max_size=30),
)
def test_status_alerts_follow_balance_plus_credit_limit(limit: int, moves: list[int]) -> None:
    """Property: after any sequence of debits and credits, the last status alert says
    exhausted exactly when balance + credit_limit <= 0, and they alternate."""
    quantum = D("0.0001")
    a = Account(TENANT, balance=D("0.0000"), credit_limit=limit * quantum)
    statuses: list[AlertKind] = []
    for i, move in enumerate(moves):
        cause = Cause(COMMANDS, f"m-{i}", T0)
        amount = abs(move) * quantum
        if move < 0:
            t = acc.apply_debit(a, debit(str(amount)), cause, T0)
        else:
            t = acc.apply_funds(a, amount, cause, T0, manual=True, recharge_request_id=None)
        statuses += [k for k in kinds(t.outputs) if k in (AlertKind.EXHAUSTED, AlertKind.RESTORED)]
        a = t.account
        assert a.exhausted == (a.balance + a.credit_limit <= 0)
    for first, second in itertools.pairwise(statuses):
        assert first != second
    initially = limit == 0  # a new account is exhausted without an alert when limit is 0
    expected_last = a.exhausted if statuses else initially
    assert (statuses[-1] is AlertKind.EXHAUSTED if statuses else initially) == expected_last


# ---- notify_below ------------------------------------------------------------------


def test_notify_below_alerts_without_auto_recharge() -> None:
    a = Account(TENANT, balance=D("10.0000"), notify_below=D("5.0000"))
    t = acc.apply_debit(a, debit("5.0000"), CALL, T0)  # to 5.0000: not below
    assert kinds(t.outputs) == []
    t = acc.apply_debit(t.account, debit("0.0001"), Cause("usage.calls", "c-2", T0), T0)
    assert kinds(t.outputs) == [AlertKind.LOW_BALANCE]
    # Already below: no second alert; back at the level re-arms it.
    t = acc.apply_debit(t.account, debit("1.0000"), Cause("usage.calls", "c-3", T0), T0)
    assert kinds(t.outputs) == []


def test_notify_below_and_the_trigger_alert_once_each_and_once_when_equal() -> None:
    ar = AutoRecharge(False, D("50.0000"), D("10.0000"))
    a = Account(TENANT, balance=D("20.0000"), auto_recharge=ar, notify_below=D("15.0000"))
    t = acc.apply_debit(a, debit("12.0000"), CALL, T0)
    alerts = [o for o in t.outputs if isinstance(o, AlertOut)]
    assert [o.alert for o in alerts] == [AlertKind.LOW_BALANCE, AlertKind.LOW_BALANCE]
    assert len({o.alert_id for o in alerts}) == 2
    # Each says which level it is, so the two are not one alert sent twice.
    assert [(o.threshold, o.threshold_setting) for o in alerts] == [
        (D("10.0000"), "trigger_balance"),
        (D("15.0000"), "notify_below"),
    ]
    same = Account(TENANT, balance=D("20.0000"), auto_recharge=ar, notify_below=D("10.0000"))
    once = [o for o in acc.apply_debit(same, debit("12.0000"), CALL, T0).outputs]
    assert kinds(once) == [AlertKind.LOW_BALANCE]
    assert [(o.threshold, o.threshold_setting) for o in once if isinstance(o, AlertOut)] == [
        (D("10.0000"), "trigger_balance")
    ]


def test_limits_command_sets_keeps_and_clears(inputs: Inputs) -> None:
    h = Harness(make_engine())
    h.command(inputs.funds("20.0000"))
    h.command(limits_cmd(inputs, "l-1", notify_below="15", credit_limit="3.5"))
    assert h.account().notify_below == D("15.0000")
    assert h.account().credit_limit == D("3.5000")
    h.command(limits_cmd(inputs, "l-2", credit_limit="1"))  # notify_below kept
    assert h.account().notify_below == D("15.0000")
    assert h.account().credit_limit == D("1.0000")
    out = h.usage(inputs.call(duration=600))  # 0.2000: 19.8000, still above
    assert kinds(out.outputs) == []
    h.command(limits_cmd(inputs, "l-3", notify_below=None))  # cleared, limit kept
    assert h.account().notify_below is None
    assert h.account().credit_limit == D("1.0000")
    # A repeat of a command id is a duplicate.
    assert h.command(limits_cmd(inputs, "l-1", notify_below="15")).status is Status.DUPLICATE


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"credit_limit": "1.00001"}, "invalid_event"),
        ({"notify_below": "0.00001"}, "invalid_event"),
        ({"credit_limit": "1", "currency": "EUR"}, "currency_mismatch"),
    ],
)
def test_limits_command_money_is_checked(
    inputs: Inputs, fields: dict[str, Any], reason: str
) -> None:
    h = Harness(make_engine())
    out = h.command(limits_cmd(inputs, "l-x", **fields))
    assert out.status is Status.REJECTED
    assert out.rejection is not None and out.rejection.reason == reason


@pytest.mark.parametrize(
    "fields",
    [{}, {"credit_limit": None}, {"credit_limit": "-1"}, {"notify_below": "-0.01"}],
)
def test_limits_command_must_name_a_valid_limit(fields: dict[str, Any]) -> None:
    body = {
        "type": "tenant_limits_configured",
        "command_id": "l",
        "tenant_id": TENANT,
        "occurred_at": ts(T0),
        **fields,
    }
    with pytest.raises(DecodeError) as err:
        decode_command(orjson.dumps(body))
    assert err.value.reason == "invalid_event"


# ---- recharge to a target ----------------------------------------------------------


def configure(**extra: Any) -> bytes:
    return orjson.dumps(
        {
            "type": "auto_recharge_configured",
            "command_id": "s-1",
            "tenant_id": TENANT,
            "occurred_at": ts(T0),
            "enabled": True,
            "recharge_amount": "10.0000",
            "trigger_balance": "5.0000",
            **extra,
        }
    )


def test_to_target_requests_the_difference_to_the_target() -> None:
    h = Harness(make_engine())
    h.command(decode_command(configure(mode="to_target", target_balance="30.0000")))
    # A new tenant at 0.0000, below the trigger: asks for 30.0000, not 10.0000.
    assert [r.amount for r in h.requests()] == [D("30.0000")]
    view = account_view(h.account(), "USD")
    assert view["auto_recharge"]["mode"] == "to_target"
    assert view["auto_recharge"]["target_balance"] == "30.0000"


def test_to_target_amount_follows_the_balance_when_requested() -> None:
    ar = AutoRecharge(True, D("10.0000"), D("5.0000"), mode=RechargeMode.TO_TARGET,
                      target_balance=D("30.0000"))  # fmt: skip
    a = Account(TENANT, balance=D("6.0000"), auto_recharge=ar)
    t = acc.apply_debit(a, debit("8.5000"), CALL, T0)  # -2.5000
    [request] = [o for o in t.outputs if isinstance(o, RechargeOut)]
    assert request.amount == D("32.5000")
    fixed = acc.apply_debit(
        Account(TENANT, balance=D("6.0000"), auto_recharge=AutoRecharge(True, D("10"), D("5"))),
        debit("8.5000"),
        CALL,
        T0,
    )
    assert [o.amount for o in fixed.outputs if isinstance(o, RechargeOut)] == [D("10")]


@pytest.mark.parametrize(
    "extra",
    [
        {"mode": "to_target"},
        {"mode": "to_target", "target_balance": "5.0000"},
        {"mode": "to_target", "target_balance": "4.0000"},
        {"mode": "later"},
    ],
)
def test_to_target_needs_a_target_above_the_trigger(extra: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as err:
        decode_command(configure(**extra))
    assert err.value.reason == "invalid_event"


def test_target_balance_with_too_many_decimals_is_rejected() -> None:
    h = Harness(make_engine(CARD2))
    cmd = decode_command(configure(mode="to_target", target_balance="30.001", currency="EUR"))
    out = h.command(cmd)
    assert out.status is Status.REJECTED
    assert out.rejection is not None and "target_balance" in out.rejection.detail


# ---- the recharge_failed alert -----------------------------------------------------


def test_recharge_failed_alert_carries_billings_reason_and_the_request(inputs: Inputs) -> None:
    h = Harness(make_engine())
    h.command(inputs.configure(trigger="10.0000"))
    rid = h.requests()[0].request_id
    for attempt in (1, 2, 3):
        h.command(inputs.failed(rid, reason=f"card_declined_{attempt}", attempt=attempt))
        h.advance(POLICY.retry_after)
        h.tick()
    [alert] = [a for a in h.alerts() if a.alert is AlertKind.RECHARGE_FAILED]
    assert alert.reason == "card_declined_3"
    assert alert.request_id == rid
    body = orjson.loads(wire.dump_output(alert, "USD"))
    assert body["reason"] == "card_declined_3" and body["request_id"] == rid
    BalanceAlert.model_validate_json(wire.dump_output(alert, "USD"))
    assert wire.output_from_dict(body) == alert


def test_recharge_failed_alert_after_a_timeout_says_timed_out(inputs: Inputs) -> None:
    h = Harness(make_engine())
    h.command(inputs.configure(trigger="10.0000"))
    for _ in range(3):
        h.advance(POLICY.timeout)
        h.tick()  # times the attempt out
        h.advance(POLICY.retry_after)
        h.tick()  # retries (or nothing, after the last)
    [alert] = [a for a in h.alerts() if a.alert is AlertKind.RECHARGE_FAILED]
    assert alert.reason == "timed_out"


def test_reason_only_on_recharge_failed_alerts() -> None:
    with pytest.raises(ValueError, match="only on recharge_failed"):
        BalanceAlert(
            alert_id="a",
            tenant_id=TENANT,
            alert="low_balance",
            balance=D("1"),
            currency="USD",
            occurred_at=T0,
            reason="x",
        )


@pytest.mark.parametrize(
    ("alert", "fields", "message"),
    [
        ("exhausted", {"threshold": D("1"), "threshold_setting": "notify_below"}, "only on"),
        ("low_balance", {"threshold": D("1")}, "come together"),
        ("low_balance", {"threshold_setting": "trigger_balance"}, "come together"),
    ],
)
def test_threshold_only_on_low_balance_alerts_and_with_its_setting(
    alert: str, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BalanceAlert.model_validate(
            {"alert_id": "a", "tenant_id": TENANT, "alert": alert, "balance": "1",
             "currency": "USD", "occurred_at": T0, "status_seq": None} | fields
        )  # fmt: skip


# ---- stored values and the view ----------------------------------------------------


def test_stored_account_keeps_the_new_fields() -> None:
    ar = AutoRecharge(
        True,
        D("10.0000"),
        D("5.0000"),
        mode=RechargeMode.TO_TARGET,
        target_balance=D("30.0000"),
    )
    a = Account(
        TENANT,
        balance=D("-1.0000"),
        auto_recharge=ar,
        credit_limit=D("2.0000"),
        notify_below=D("3.0000"),
        updated_at=T0,
    )
    assert stored_v2.account_from_dict(orjson.loads(wire.dumps(stored_v2.account_to_dict(a)))) == a
    raw = codec.dump_stored(acc_stored(a))
    assert codec.Undecoded(raw).exhausted is False  # -1 + 2 > 0


def acc_stored(a: Account) -> Any:
    from processor.core.stored import StoredAccount

    return StoredAccount(a)


def test_values_written_before_decode_with_the_defaults() -> None:
    old = {
        "v": 1,
        "tenant_id": TENANT,
        "balance": "-1.0000",
        "entries": 2,
        "updated_at": None,
        "auto_recharge": {
            "enabled": True,
            "recharge_amount": "10.0000",
            "trigger_balance": "5.0000",
            "suspended": False,
        },
        "pending": None,
    }
    a = stored_v2.account_from_dict(old)
    assert a.credit_limit == 0 and a.notify_below is None
    assert a.auto_recharge is not None and a.auto_recharge.mode is RechargeMode.FIXED
    assert a.auto_recharge.target_balance is None
    assert a.exhausted
    # Written back, an account with the defaults is the same value as before.
    assert stored_v2.account_to_dict(a) == {**old, "requests_issued": 0, "status_seq": 0}


def test_account_view_shows_limits() -> None:
    a = Account(TENANT, balance=D("1.0000"), credit_limit=D("2.0000"), notify_below=D("3.0000"))
    view = account_view(a, "USD")
    assert view["credit_limit"] == "2.0000" and view["notify_below"] == "3.0000"
    AccountView.model_validate_json(orjson.dumps({**view, "updated_at": ts(T0)}))
    plain = account_view(Account(TENANT, balance=D("-1.0000")), "USD")
    assert plain["credit_limit"] == "0.0000" and plain["notify_below"] is None
    assert plain["status"] == "exhausted"


def test_limit_changes_do_not_move_the_balance_or_the_ledger_count() -> None:
    a = Account(TENANT, balance=D("1.0000"), entries=3)
    t = acc.configure_limits(
        a, Cause(COMMANDS, "l", T0), T0 + timedelta(seconds=1),
        credit_limit=D("1.0000"), notify_below=None, set_notify_below=False,
    )  # fmt: skip
    assert t.account.balance == a.balance and t.account.entries == 3
    assert kinds(t.outputs) == []


@settings(max_examples=200, deadline=None)
@given(
    level=st.integers(0, 3_000),
    start=st.integers(-3_000, 6_000),
    moves=st.lists(st.integers(-2_000, 2_000).filter(bool), min_size=1, max_size=25),
)
def test_notify_below_alerts_exactly_on_each_fall_below_the_level(
    level: int, start: int, moves: list[int]
) -> None:
    """Property: one low_balance per move that takes the balance from >= notify_below to
    below it, none otherwise (no auto-recharge settings at all)."""
    quantum = D("0.0001")
    a = Account(TENANT, balance=start * quantum, notify_below=level * quantum)
    for i, move in enumerate(moves):
        cause = Cause(COMMANDS, f"m-{i}", T0)
        before = a.balance
        if move < 0:
            t = acc.apply_debit(a, debit(str(abs(move) * quantum)), cause, T0)
        else:
            t = acc.apply_funds(a, move * quantum, cause, T0, manual=True, recharge_request_id=None)
        a = t.account
        fell = before >= level * quantum > a.balance
        assert kinds(t.outputs).count(AlertKind.LOW_BALANCE) == int(fell)


def test_settings_that_differ_only_in_mode_decode_apart() -> None:
    fixed = Account(TENANT, auto_recharge=AutoRecharge(True, D("10.0000"), D("5.0000")))
    target = Account(
        TENANT,
        auto_recharge=AutoRecharge(
            True, D("10.0000"), D("5.0000"), mode=RechargeMode.TO_TARGET,
            target_balance=D("20.0000"),
        ),
    )  # fmt: skip
    for a in (fixed, target, fixed):
        assert stored_v2.account_from_dict(stored_v2.account_to_dict(a)) == a
