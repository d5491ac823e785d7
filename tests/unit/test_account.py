"""The account state machine (processor.core.account) against CONTRACT.md.

Each test names the contract rule it checks. Money is at the contract card's 4
places throughout; the engine tests cover how inputs get there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.core import account as acc
from processor.core.outputs import (
    AlertKind,
    AlertOut,
    LedgerOut,
    RechargeOut,
    derive_id,
)
from processor.core.recharge import (
    apply_recharge_failed,
    apply_timer,
    configure_auto_recharge,
    next_due,
)
from processor.core.state import (
    Account,
    AutoRecharge,
    PendingRecharge,
    RechargePolicy,
    RechargeStatus,
)
from processor.core.transition import Cause, Transition
from processor.core.usage import Debit
from tests.unit.conftest import CALLS, COMMANDS, POLICY, T0, TENANT, TIMER, D

ZERO4 = D("0.0000")
MINUTE = timedelta(minutes=1)


# ---- helpers ---------------------------------------------------------------------


def cause(cid: str, topic: str = CALLS, at: datetime = T0) -> Cause:
    return Cause(topic, cid, at)


def cmd(cid: str) -> Cause:
    return cause(cid, COMMANDS)


def debit(amount: str, prefix: str = "+1", per_minute: str = "0.0200", billed: int = 60) -> Debit:
    return Debit(D(amount), prefix, D(per_minute), billed)


def account(
    balance: str = "0.0000",
    *,
    enabled: bool | None = None,
    amount: str = "50.0000",
    trigger: str = "10.0000",
    suspended: bool = False,
    pending: PendingRecharge | None = None,
) -> Account:
    settings = (
        None
        if enabled is None
        else AutoRecharge(enabled, D(amount), D(trigger), suspended=suspended)
    )
    return Account(TENANT, balance=D(balance), auto_recharge=settings, pending=pending)


def outstanding(
    rid: str = "req-1", attempt: int = 1, at: datetime = T0, amount: str = "50.0000"
) -> PendingRecharge:
    return PendingRecharge(rid, D(amount), attempt, at)


def failed(
    rid: str = "req-1", attempt: int = 1, at: datetime = T0, failed_at: datetime | None = None
) -> PendingRecharge:
    return PendingRecharge(
        rid, D("50.0000"), attempt, at, RechargeStatus.FAILED, failed_at or at + MINUTE
    )


def pending_id(a: Account) -> str:
    assert a.pending is not None
    return a.pending.request_id


def ledger(t: Transition) -> list[LedgerOut]:
    return [o for o in t.outputs if isinstance(o, LedgerOut)]


def alerts(t: Transition) -> list[AlertKind]:
    return [o.alert for o in t.outputs if isinstance(o, AlertOut)]


def requests(t: Transition) -> list[RechargeOut]:
    return [o for o in t.outputs if isinstance(o, RechargeOut)]


def funds(
    a: Account,
    amount: str,
    cid: str = "f-1",
    *,
    manual: bool = True,
    rid: str | None = None,
    now: datetime = T0,
) -> Transition:
    return acc.apply_funds(a, D(amount), cmd(cid), now, manual=manual, recharge_request_id=rid)


def settings(
    enabled: bool = True, amount: str = "50.0000", trigger: str = "10.0000", suspended: bool = False
) -> AutoRecharge:
    return AutoRecharge(enabled, D(amount), D(trigger), suspended)


# ---- new tenants -----------------------------------------------------------------


def test_new_account_starts_at_zero_exhausted_and_empty() -> None:
    a = acc.new_account(TENANT)
    assert a.balance == 0 and a.exhausted
    assert a.auto_recharge is None and a.pending is None and a.entries == 0


def test_new_account_zero_is_kept_at_the_cards_precision() -> None:
    # "Balances ... are kept and reported at rounding.decimals places."
    a = acc.new_account(TENANT, ZERO4)
    assert str(a.balance) == "0.0000"


# ---- debits ----------------------------------------------------------------------


def test_debit_writes_exactly_one_entry_with_the_rate_fields() -> None:
    a = account("1.0000")
    now = T0 + timedelta(seconds=5)
    c = cause("ev-1", at=T0 - MINUTE)
    t = acc.apply_debit(a, debit("0.0245", "+447", "0.1200", 7), c, now)
    (entry,) = t.outputs
    assert isinstance(entry, LedgerOut)
    assert entry.kind == "debit"
    assert entry.amount == D("0.0245") and str(entry.amount) == "0.0245"
    assert str(entry.balance_after) == "0.9755"
    assert (entry.rate_prefix, entry.rate_per_minute, entry.billed_seconds) == (
        "+447",
        D("0.1200"),
        7,
    )
    assert (entry.tenant_id, entry.cause_topic, entry.cause_id) == (TENANT, CALLS, "ev-1")
    assert entry.occurred_at == c.occurred_at  # the cause's time
    assert entry.recorded_at == now
    assert t.account.balance == entry.balance_after
    assert t.account.entries == a.entries + 1
    assert t.account.updated_at == now
    assert t.changed and t.ignored is None


def test_zero_charge_changes_nothing_and_writes_no_entry() -> None:
    a = account("1.0000", enabled=True)
    t = acc.apply_debit(a, debit("0.0000", billed=0), cause("ev-0"), T0)
    assert t.outputs == ()
    assert t.account == a and t.account is a
    assert not t.changed


def test_negative_debit_is_refused() -> None:
    with pytest.raises(ValueError):
        acc.apply_debit(account(), debit("-0.0100"), cause("ev"), T0)


def test_debit_may_take_the_balance_below_zero() -> None:
    t = acc.apply_debit(account("0.0100"), debit("0.0300"), cause("ev"), T0)
    assert str(t.account.balance) == "-0.0200"
    assert str(ledger(t)[0].balance_after) == "-0.0200"


# ---- credits ---------------------------------------------------------------------


def test_funds_credit_one_entry_without_rate_fields() -> None:
    a = account("-5.0000")
    t = funds(a, "20.0000", "top-1")
    (entry,) = ledger(t)
    assert entry.kind == "credit" and str(entry.amount) == "20.0000"
    assert str(entry.balance_after) == "15.0000"
    assert entry.rate_prefix is None and entry.rate_per_minute is None
    assert entry.billed_seconds is None
    assert (entry.cause_topic, entry.cause_id) == (COMMANDS, "top-1")
    assert t.account.entries == 1


@pytest.mark.parametrize("amount", ["0.0000", "-1.0000"])
def test_non_positive_funds_are_refused(amount: str) -> None:
    with pytest.raises(ValueError):
        funds(account(), amount)


def test_entry_ids_are_deterministic_and_follow_the_cause() -> None:
    a = account("10.0000")
    one = acc.apply_debit(a, debit("1.0000"), cause("ev-1"), T0)
    again = acc.apply_debit(a, debit("1.0000"), cause("ev-1"), T0 + timedelta(hours=5))
    other_id = acc.apply_debit(a, debit("1.0000"), cause("ev-2"), T0)
    other_topic = acc.apply_debit(a, debit("1.0000"), cause("ev-1", "usage.conferencing"), T0)
    other_tenant = acc.apply_debit(
        replace(a, tenant_id="other"), debit("1.0000"), cause("ev-1"), T0
    )
    ids = [ledger(t)[0].entry_id for t in (one, other_id, other_topic, other_tenant)]
    assert ledger(again)[0].entry_id == ids[0]
    assert len(set(ids)) == 4


def test_derive_id_separates_parts() -> None:
    assert derive_id("a", "bc") != derive_id("ab", "c")
    assert derive_id("x", "y") == derive_id("x", "y")


# ---- exhausted / restored ----------------------------------------------------------


def test_new_tenant_first_debit_raises_no_exhausted_alert() -> None:
    # "A new tenant starts exhausted, with no alert."
    t = acc.apply_debit(acc.new_account(TENANT, ZERO4), debit("0.0200"), cause("ev"), T0)
    assert alerts(t) == []


def test_first_funds_restore_a_new_tenant() -> None:
    t = funds(acc.new_account(TENANT, ZERO4), "5.0000")
    assert alerts(t) == [AlertKind.RESTORED]
    (alert,) = [o for o in t.outputs if isinstance(o, AlertOut)]
    assert str(alert.balance) == "5.0000" and alert.tenant_id == TENANT and alert.occurred_at == T0


@pytest.mark.parametrize(
    ("start", "delta", "expected"),
    [
        ("1.0000", "-1.0000", [AlertKind.EXHAUSTED]),  # exactly 0 is exhausted
        ("1.0000", "-2.0000", [AlertKind.EXHAUSTED]),
        ("0.0001", "-0.0001", [AlertKind.EXHAUSTED]),
        ("1.0000", "-0.9999", []),
        ("-1.0000", "-1.0000", []),  # already exhausted
        ("0.0000", "-1.0000", []),
        ("-1.0000", "1.0000", []),  # to exactly 0: still exhausted
        ("-1.0000", "1.0001", [AlertKind.RESTORED]),
        ("0.0000", "0.0001", [AlertKind.RESTORED]),
        ("1.0000", "1.0000", []),
    ],
)
def test_exhausted_and_restored_on_every_change_of_state(
    start: str, delta: str, expected: list[AlertKind]
) -> None:
    a = account(start)
    amount = D(delta)
    t = acc.apply_debit(a, debit(str(-amount)), cause("ev"), T0) if amount < 0 else funds(a, delta)
    assert alerts(t) == expected


# ---- low balance -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "charge", "enabled", "expected"),
    [
        ("20.0000", "10.0001", True, True),  # 20 >= 10 > 9.9999
        ("10.0000", "0.0001", True, True),  # from exactly the trigger
        ("20.0000", "10.0000", True, False),  # to exactly the trigger: not below
        ("9.0000", "1.0000", True, False),  # already below: not armed
        ("20.0000", "15.0000", False, True),  # whether or not enabled
        ("20.0000", "15.0000", None, False),  # no settings, no trigger
    ],
)
def test_low_balance_when_the_balance_falls_below_the_trigger(
    start: str, charge: str, enabled: bool | None, expected: bool
) -> None:
    a = account(start, enabled=enabled)
    t = acc.apply_debit(a, debit(charge), cause("ev"), T0)
    assert (AlertKind.LOW_BALANCE in alerts(t)) is expected


def test_low_balance_also_when_suspended() -> None:
    a = account("20.0000", enabled=True, suspended=True)
    t = acc.apply_debit(a, debit("15.0000"), cause("ev"), T0)
    assert alerts(t) == [AlertKind.LOW_BALANCE]
    assert requests(t) == []


def test_low_balance_is_rearmed_once_the_balance_is_back_at_the_trigger() -> None:
    a = account("12.0000", enabled=False)
    t1 = acc.apply_debit(a, debit("3.0000"), cause("ev-1"), T0)  # 9: alert
    t2 = acc.apply_debit(t1.account, debit("1.0000"), cause("ev-2"), T0)  # 8: none
    t3 = funds(t2.account, "2.0000", "f-1")  # back to exactly 10: re-armed, no alert
    t4 = acc.apply_debit(t3.account, debit("0.5000"), cause("ev-3"), T0)  # 9.5: alert
    assert [AlertKind.LOW_BALANCE in alerts(t) for t in (t1, t2, t3, t4)] == [
        True,
        False,
        False,
        True,
    ]
    low = [o for o in t1.outputs + t4.outputs if isinstance(o, AlertOut)]
    assert low[0].alert_id != low[1].alert_id
    assert [str(o.balance) for o in low] == ["9.0000", "9.5000"]


def test_one_debit_can_raise_exhausted_and_low_balance() -> None:
    a = account("5.0000", enabled=False, trigger="0.0000")
    t = acc.apply_debit(a, debit("6.0000"), cause("ev"), T0)
    assert sorted(alerts(t)) == sorted([AlertKind.EXHAUSTED, AlertKind.LOW_BALANCE])
    ids = [o.alert_id for o in t.outputs if isinstance(o, AlertOut)]
    assert len(set(ids)) == 2
    assert isinstance(t.outputs[0], LedgerOut)  # the entry comes first


# ---- recharge requests -------------------------------------------------------------


def test_request_when_enabled_below_trigger_and_none_outstanding() -> None:
    a = account("10.5000", enabled=True, amount="25.0000", trigger="10.0000")
    now = T0 + MINUTE
    t = acc.apply_debit(a, debit("0.5001"), cause("ev-1"), now)
    (req,) = requests(t)
    assert req.tenant_id == TENANT
    assert str(req.amount) == "25.0000" and str(req.trigger_balance) == "10.0000"
    assert str(req.balance) == "9.9999"
    assert req.attempt == 1 and req.requested_at == now
    assert t.account.pending == PendingRecharge(req.request_id, D("25.0000"), 1, now)
    assert isinstance(t.outputs[-1], RechargeOut)  # after the entry that caused it


@pytest.mark.parametrize(
    ("enabled", "suspended", "pending", "charge"),
    [
        (False, False, None, "1.0000"),  # disabled
        (True, True, None, "1.0000"),  # suspended
        (True, False, outstanding("old"), "1.0000"),  # one already outstanding
        (True, False, failed("old"), "1.0000"),  # one waiting to be retried
        (True, False, None, "0.0000"),  # zero charge: no change, no check
        (True, False, None, "10.0000"),  # to exactly the trigger: not below
    ],
)
def test_no_request_unless_all_conditions_hold(
    enabled: bool, suspended: bool, pending: PendingRecharge | None, charge: str
) -> None:
    a = account("20.0000", enabled=enabled, suspended=suspended, pending=pending)
    t = acc.apply_debit(a, debit(charge), cause("ev"), T0)
    assert requests(t) == []
    assert t.account.pending == pending


def test_at_most_one_request_outstanding_over_many_debits() -> None:
    a = account("10.0000", enabled=True)
    ids: set[str] = set()
    for i in range(5):
        t = acc.apply_debit(a, debit("1.0000"), cause(f"ev-{i}"), T0)
        ids.update(r.request_id for r in requests(t))
        a = t.account
    assert len(ids) == 1
    assert a.pending is not None and a.pending.request_id in ids


def test_request_id_is_deterministic() -> None:
    # "request_id is deterministic: a replay after a crash produces the same id".
    # Ids are numbered per tenant (the n-th request of a tenant has the same id on
    # every worker, whatever the cause), never taken from a clock.
    a = account("10.0000", enabled=True)
    t1 = acc.apply_debit(a, debit("1.0000"), cause("ev-1"), T0)
    t1_again = acc.apply_debit(a, debit("1.0000"), cause("ev-1"), T0)
    t1_later = acc.apply_debit(a, debit("1.0000"), cause("ev-1"), T0 + timedelta(days=1))
    t2 = acc.apply_debit(a, debit("1.0000"), cause("ev-2", "usage.conferencing"), T0)
    assert t1 == t1_again
    first = requests(t1)[0].request_id
    assert requests(t1_later)[0].request_id == first
    assert requests(t2)[0].request_id == first
    assert t1.account.requests_issued == a.requests_issued + 1


def test_each_request_of_a_tenant_gets_a_new_id() -> None:
    a = account("10.0000", enabled=True)
    ids = []
    for i in range(4):
        t = acc.apply_debit(a, debit("1.0000"), cause(f"ev-{i}"), T0)
        (req,) = requests(t)
        ids.append(req.request_id)
        # answered: the next debit below the trigger issues the next request
        a = funds(t.account, "1.0000", f"f-{i}", manual=False, rid=req.request_id).account
        assert a.pending is None
    other = acc.apply_debit(
        replace(account("10.0000", enabled=True), tenant_id="other"),
        debit("1.0000"),
        cause("ev-0"),
        T0,
    )
    ids.append(requests(other)[0].request_id)
    assert len(set(ids)) == 5


def test_settings_on_a_new_tenant_with_a_trigger_above_zero_request_at_once() -> None:
    a = acc.new_account(TENANT, ZERO4)
    t = configure_auto_recharge(a, settings(trigger="5.0000"), cmd("s-1"), T0)
    (req,) = requests(t)
    assert str(req.balance) == "0.0000" and str(req.amount) == "50.0000"
    assert t.outputs == (req,)  # no entry, no alert: the balance did not change
    assert t.account.entries == 0
    assert t.account.auto_recharge == settings(trigger="5.0000")


def test_settings_with_a_zero_trigger_do_not_request_at_zero_balance() -> None:
    t = configure_auto_recharge(
        acc.new_account(TENANT, ZERO4), settings(trigger="0.0000"), cmd("s-1"), T0
    )
    assert t.outputs == () and t.account.pending is None


def test_disabled_settings_never_request() -> None:
    t = configure_auto_recharge(account("-5.0000"), settings(False), cmd("s-1"), T0)
    assert requests(t) == []


def test_settings_replace_the_old_ones() -> None:
    a = account("100.0000", enabled=True, amount="10.0000", trigger="1.0000")
    new = settings(True, "70.0000", "180.0000")
    t = configure_auto_recharge(a, new, cmd("s-2"), T0)
    assert t.account.auto_recharge == new
    # raising the trigger above the balance is a settings change: checked at once
    (req,) = requests(t)
    assert str(req.amount) == "70.0000" and str(req.trigger_balance) == "180.0000"


def test_settings_keep_a_request_that_billing_may_still_be_charging() -> None:
    pending = outstanding("req-1")
    a = account("1.0000", enabled=True, pending=pending)
    for new in (settings(False), settings(True, "99.0000", "50.0000")):
        t = configure_auto_recharge(a, new, cmd("s"), T0)
        assert t.account.pending == pending
        assert requests(t) == []


def test_disabling_drops_a_request_waiting_to_be_retried() -> None:
    a = account("1.0000", enabled=True, pending=failed("req-1"))
    t = configure_auto_recharge(a, settings(False), cmd("s"), T0)
    assert t.account.pending is None and t.outputs == ()
    # re-enabling later issues a new request with a new id
    t2 = configure_auto_recharge(t.account, settings(True), cmd("s2"), T0)
    (req,) = requests(t2)
    assert req.request_id != "req-1" and req.attempt == 1


def test_new_settings_lift_a_suspension_and_can_request_again() -> None:
    a = account("1.0000", enabled=True, suspended=True)
    t = configure_auto_recharge(a, settings(True), cmd("s"), T0)
    assert t.account.auto_recharge is not None and not t.account.auto_recharge.suspended
    assert len(requests(t)) == 1
    # even settings that arrive marked suspended do not keep the suspension
    t2 = configure_auto_recharge(a, settings(True, suspended=True), cmd("s"), T0)
    assert t2.account.auto_recharge is not None and not t2.account.auto_recharge.suspended


# ---- funds and the outstanding request -----------------------------------------------


def test_matching_funds_close_the_request() -> None:
    a = account("5.0000", enabled=True, pending=outstanding("req-1"))
    t = funds(a, "50.0000", manual=False, rid="req-1")
    assert t.account.pending is None
    assert str(t.account.balance) == "55.0000"
    assert requests(t) == []


def test_matching_funds_close_a_request_waiting_to_be_retried() -> None:
    a = account("5.0000", enabled=True, pending=failed("req-1"))
    t = funds(a, "50.0000", manual=False, rid="req-1")
    assert t.account.pending is None


@pytest.mark.parametrize("rid", ["unknown", "req-0", None])
def test_unknown_or_stale_funds_are_credited_and_leave_the_request_open(rid: str | None) -> None:
    pending = outstanding("req-1")
    a = account("5.0000", enabled=True, pending=pending)
    t = funds(a, "50.0000", manual=rid is None, rid=rid)
    assert str(t.account.balance) == "55.0000" and len(ledger(t)) == 1
    assert t.account.pending == pending
    assert requests(t) == []


def test_the_next_request_follows_funds_that_leave_the_balance_below_the_trigger() -> None:
    # "If one recharge does not lift the balance above the trigger, the next request
    # follows the funds."
    a = account("-100.0000", enabled=True, pending=outstanding("req-1"))
    t = funds(a, "50.0000", "f-1", manual=False, rid="req-1", now=T0 + MINUTE)
    (entry,) = ledger(t)
    (req,) = requests(t)
    assert req.request_id not in ("req-1",) and req.attempt == 1
    assert str(req.balance) == "-50.0000" and req.requested_at == T0 + MINUTE
    assert t.account.pending is not None and t.account.pending.request_id == req.request_id
    assert t.outputs.index(entry) < t.outputs.index(req)
    # and it is deterministic: the same funds from the same state give the same id
    assert requests(funds(a, "50.0000", "f-1", manual=False, rid="req-1"))[0].request_id == (
        req.request_id
    )


def test_funds_that_lift_the_balance_to_exactly_the_trigger_request_nothing() -> None:
    a = account("-40.0000", enabled=True, pending=outstanding("req-1"))
    t = funds(a, "50.0000", manual=False, rid="req-1")
    assert str(t.account.balance) == "10.0000"
    assert requests(t) == [] and t.account.pending is None


def test_manual_funds_lift_a_suspension() -> None:
    a = account("-100.0000", enabled=True, suspended=True)
    t = funds(a, "20.0000", "m-1")
    assert t.account.auto_recharge is not None and not t.account.auto_recharge.suspended
    # still below the trigger: a new request at once
    (req,) = requests(t)
    assert req.attempt == 1
    lifted_above = funds(a, "200.0000", "m-2")
    assert lifted_above.account.auto_recharge is not None
    assert not lifted_above.account.auto_recharge.suspended
    assert requests(lifted_above) == []


def test_auto_recharge_funds_do_not_lift_a_suspension() -> None:
    a = account("-100.0000", enabled=True, suspended=True)
    t = funds(a, "20.0000", manual=False, rid="late-request")
    assert t.account.auto_recharge is not None and t.account.auto_recharge.suspended
    assert requests(t) == [] and len(ledger(t)) == 1


# ---- failures, timeouts and retries -------------------------------------------------------


def test_recharge_failed_marks_the_attempt_failed_without_output() -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1"))
    now = T0 + 2 * MINUTE
    t = apply_recharge_failed(a, "req-1", cmd("x-1"), now, POLICY)
    assert t.outputs == () and t.changed and t.ignored is None
    assert t.account.pending is not None
    assert t.account.pending.status is RechargeStatus.FAILED
    assert t.account.pending.failed_at == now
    assert t.account.pending.attempt == 1
    assert next_due(t.account, POLICY) == now + POLICY.retry_after


@pytest.mark.parametrize("pending", [None, outstanding("req-1")])
def test_recharge_failed_for_another_request_is_ignored(pending: PendingRecharge | None) -> None:
    a = account("1.0000", enabled=True, pending=pending)
    t = apply_recharge_failed(a, "req-other", cmd("x"), T0, POLICY)
    assert t.account == a and t.outputs == () and not t.changed
    assert t.ignored == "unknown_or_closed_request"


@pytest.mark.parametrize(("attempt", "note"), [(1, "earlier_attempt"), (3, "unknown_attempt")])
def test_a_failure_naming_another_attempt_changes_nothing(attempt: int, note: str) -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1", attempt=2))
    t = apply_recharge_failed(a, "req-1", cmd("x"), T0, POLICY, attempt)
    assert t.account == a and t.outputs == () and not t.changed and t.ignored == note


def test_a_failure_naming_the_outstanding_attempt_fails_it() -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1", attempt=2))
    t = apply_recharge_failed(a, "req-1", cmd("x"), T0, POLICY, 2)
    assert t.account.pending is not None and t.account.pending.status is RechargeStatus.FAILED


@pytest.mark.parametrize("enabled", [False, None])
def test_a_failure_after_auto_recharge_was_turned_off_ends_the_request_quietly(
    enabled: bool | None,
) -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1", attempt=3))
    a = replace(a, auto_recharge=None if enabled is None else settings(enabled))
    t = apply_recharge_failed(a, "req-1", cmd("x"), T0, POLICY)
    assert t.account.pending is None and t.outputs == ()
    assert t.recharge == ("failed", "dropped")
    assert t.account.auto_recharge is None or not t.account.auto_recharge.suspended


def test_a_second_failure_of_the_same_attempt_counts_once() -> None:
    a = account("1.0000", enabled=True, pending=failed("req-1"))
    t = apply_recharge_failed(a, "req-1", cmd("x-2"), T0 + MINUTE, POLICY)
    assert t.account == a and not t.changed and t.ignored == "attempt_already_failed"


def test_retry_only_after_retry_after_with_the_same_id_and_next_attempt() -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1"))
    failed_at = T0 + 5 * MINUTE
    a = apply_recharge_failed(a, "req-1", cmd("x-1"), failed_at, POLICY).account
    early = apply_timer(
        a,
        "req-1",
        1,
        cause("req-1#1", TIMER),
        failed_at + POLICY.retry_after - timedelta(seconds=1),
        POLICY,
    )
    assert early.account == a and early.outputs == () and early.ignored == "not_due"
    due = failed_at + POLICY.retry_after
    t = apply_timer(a, "req-1", 1, cause("req-1#1", TIMER), due, POLICY)
    (req,) = requests(t)
    assert (req.request_id, req.attempt, req.requested_at) == ("req-1", 2, due)
    assert str(req.amount) == "50.0000" and str(req.balance) == "1.0000"
    assert t.account.pending == PendingRecharge("req-1", D("50.0000"), 2, due)
    assert next_due(t.account, POLICY) == due + POLICY.timeout


def test_retry_keeps_the_amount_of_the_request_when_settings_changed() -> None:
    # Billing de-duplicates on request_id, so a re-sent request must not change.
    a = account(
        "1.0000", enabled=True, amount="70.0000", trigger="20.0000", pending=failed("req-1")
    )
    t = apply_timer(a, "req-1", 1, cause("t", TIMER), T0 + timedelta(hours=2), POLICY)
    (req,) = requests(t)
    assert str(req.amount) == "50.0000" and str(req.trigger_balance) == "20.0000"


def test_timeout_counts_as_a_failed_attempt() -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1", at=T0))
    not_yet = apply_timer(
        a, "req-1", 1, cause("t", TIMER), T0 + POLICY.timeout - timedelta(seconds=1), POLICY
    )
    assert not not_yet.changed and not_yet.ignored == "not_due" and not_yet.account == a
    at = T0 + POLICY.timeout
    t = apply_timer(a, "req-1", 1, cause("t", TIMER), at, POLICY)
    assert t.outputs == ()
    assert t.account.pending == failed("req-1", at=T0, failed_at=at)
    # a late failure from billing for the same attempt does not count twice
    late = apply_recharge_failed(t.account, "req-1", cmd("x"), at + MINUTE, POLICY)
    assert not late.changed
    # retried the same way
    r = apply_timer(t.account, "req-1", 1, cause("t", TIMER), at + POLICY.retry_after, POLICY)
    assert [(q.request_id, q.attempt) for q in requests(r)] == [("req-1", 2)]


@pytest.mark.parametrize(("request_id", "attempt"), [("req-2", 1), ("req-1", 2), ("req-1", 0)])
def test_stale_timer_ticks_change_nothing(request_id: str, attempt: int) -> None:
    for pending in (outstanding("req-1"), failed("req-1")):
        a = account("1.0000", enabled=True, pending=pending)
        t = apply_timer(a, request_id, attempt, cause("t", TIMER), T0 + timedelta(days=1), POLICY)
        assert t.account == a and t.outputs == () and t.ignored == "stale_timer"


def test_timer_tick_without_a_pending_request_changes_nothing() -> None:
    a = account("1.0000", enabled=True)
    t = apply_timer(a, "req-1", 1, cause("t", TIMER), T0 + timedelta(days=1), POLICY)
    assert t.account == a and not t.changed


@pytest.mark.parametrize(
    "change",
    [
        {"balance": D("10.0000")},  # topped up to the trigger
        {"balance": D("500.0000")},  # topped up above it
        {"auto_recharge": AutoRecharge(False, D("50.0000"), D("10.0000"))},  # disabled
    ],
)
def test_retry_is_dropped_when_nothing_is_left_to_recharge_for(change: dict[str, Any]) -> None:
    a = replace(account("1.0000", enabled=True, pending=failed("req-1")), **change)
    t = apply_timer(a, "req-1", 1, cause("t", TIMER), T0 + timedelta(hours=1), POLICY)
    assert t.account.pending is None and t.outputs == () and t.changed
    assert next_due(t.account, POLICY) is None


def run_to_suspension(a: Account, via_timeout: list[bool]) -> tuple[Account, list[Transition]]:
    """Fail each attempt of the pending request (by timeout or by billing) and retry."""
    history = []
    now = T0
    for i, timeout in enumerate(via_timeout):
        assert a.pending is not None
        rid, attempt = a.pending.request_id, a.pending.attempt
        if timeout:
            now = a.pending.requested_at + POLICY.timeout
            t = apply_timer(a, rid, attempt, cause(f"{rid}#{attempt}", TIMER), now, POLICY)
        else:
            now = now + MINUTE
            t = apply_recharge_failed(a, rid, cmd(f"fail-{i}"), now, POLICY)
        history.append(t)
        a = t.account
        if a.pending is None:
            break
        now = now + POLICY.retry_after
        t = apply_timer(a, rid, attempt, cause(f"{rid}#{attempt}", TIMER), now, POLICY)
        history.append(t)
        a = t.account
    return a, history


@pytest.mark.parametrize(
    "via_timeout",
    [[False, False, False], [True, True, True], [True, False, True], [False, True, False]],
)
def test_suspended_after_the_last_attempt_fails(via_timeout: list[bool]) -> None:
    a = acc.apply_debit(account("10.0000", enabled=True), debit("1.0000"), cause("ev"), T0).account
    assert a.pending is not None
    rid = a.pending.request_id
    final, history = run_to_suspension(a, via_timeout)
    sent = [(r.request_id, r.attempt) for t in history for r in requests(t)]
    assert sent == [(rid, 2), (rid, 3)]
    assert final.pending is None
    assert final.auto_recharge is not None and final.auto_recharge.suspended
    assert alerts(history[-1]) == [AlertKind.RECHARGE_FAILED]
    assert sum(len(alerts(t)) for t in history) == 1
    (alert,) = [o for o in history[-1].outputs if isinstance(o, AlertOut)]
    assert str(alert.balance) == "9.0000"
    # suspended: further debits request nothing
    t = acc.apply_debit(final, debit("1.0000"), cause("ev-after"), T0)
    assert requests(t) == []


def test_max_attempts_comes_from_the_policy() -> None:
    policy = RechargePolicy(max_attempts=1)
    a = account("1.0000", enabled=True, pending=outstanding("req-1"))
    t = apply_recharge_failed(a, "req-1", cmd("x"), T0, policy)
    assert t.account.pending is None and alerts(t) == [AlertKind.RECHARGE_FAILED]
    assert t.account.auto_recharge is not None and t.account.auto_recharge.suspended


def test_recharge_failed_alert_ids_are_deterministic() -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1", attempt=3))
    t1 = apply_recharge_failed(a, "req-1", cmd("x"), T0, POLICY)
    t2 = apply_recharge_failed(a, "req-1", cmd("x"), T0 + timedelta(hours=1), POLICY)
    t3 = apply_recharge_failed(a, "req-1", cmd("y"), T0, POLICY)
    ids = [next(o.alert_id for o in t.outputs if isinstance(o, AlertOut)) for t in (t1, t2, t3)]
    assert ids[0] == ids[1] != ids[2]


def test_suspension_then_manual_funds_start_a_new_request() -> None:
    a = account("1.0000", enabled=True, pending=outstanding("req-1", attempt=3))
    suspended = apply_recharge_failed(a, "req-1", cmd("x"), T0, POLICY).account
    t = funds(suspended, "1.0000", "m-1")
    (req,) = requests(t)
    assert req.request_id != "req-1" and req.attempt == 1


# ---- next_due --------------------------------------------------------------------


def test_next_due() -> None:
    assert next_due(account(), POLICY) is None
    assert next_due(account(pending=outstanding(at=T0)), POLICY) == T0 + POLICY.timeout
    f = failed(failed_at=T0 + MINUTE)
    assert next_due(account(pending=f), POLICY) == T0 + MINUTE + POLICY.retry_after


# ---- determinism -----------------------------------------------------------------


def test_the_same_transitions_from_the_same_state_give_identical_outputs() -> None:
    def run() -> list[Transition]:
        a = acc.new_account(TENANT, ZERO4)
        out: list[Transition] = []
        steps: list[Callable[[Account], Transition]] = [
            lambda a: configure_auto_recharge(a, settings(trigger="5.0000"), cmd("s"), T0),
            lambda a: funds(a, "3.0000", "m-1"),
            lambda a: acc.apply_debit(a, debit("4.0000"), cause("ev-1"), T0),
            lambda a: apply_recharge_failed(a, pending_id(a), cmd("x"), T0, POLICY),
            lambda a: apply_timer(
                a, pending_id(a), 1, cause("t", TIMER), T0 + timedelta(hours=1), POLICY
            ),
        ]
        for step in steps:
            t = step(a)
            out.append(t)
            a = t.account
        return out

    first, second = run(), run()
    assert first == second
    assert sum(len(requests(t)) for t in first) == 2  # first request, then its retry


def test_amounts_keep_their_decimal_places() -> None:
    a = acc.new_account(TENANT, ZERO4)
    t = funds(a, "1.5000")
    t = acc.apply_debit(t.account, debit("1.5000"), cause("ev"), T0)
    assert str(t.account.balance) == "0.0000"
    assert not t.account.balance.is_signed()
    assert t.account.balance.as_tuple().exponent == -4
    assert isinstance(t.account.balance, Decimal)


# The namespace of every id ever derived: pinned here, so that changing it fails a test.
ID_NAMESPACE = uuid.UUID("6f1c8a52-3d4e-4b7a-9c2e-5a0d9e8b7f31")


@given(st.lists(st.text(max_size=40), min_size=1, max_size=6))
def test_derive_id_is_uuid5_of_the_joined_parts(parts: list[str]) -> None:
    # The ids consumers already de-duplicate on: a faster spelling must not change them.
    expected = str(uuid.uuid5(ID_NAMESPACE, "\x1f".join(parts)))
    assert derive_id(*parts) == expected
