"""Funds expiry (issue 20 part 1): lots, the `expiry` entry, its alerts and its timer,
and the account's consumption (part 2)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core import account as acc
from processor.core.engine import EXPIRY_TICK, Engine, TimerTick
from processor.core.lots import apply_expiry, expiry_entry_id, lots_total, next_expiry_due
from processor.core.outcome import Status
from processor.core.outputs import AlertKind, AlertOut, LedgerOut, RechargeOut
from processor.core.recharge import configure_auto_recharge
from processor.core.state import Account, AutoRecharge, ExpiryPolicy
from processor.core.stored import StoredAccount
from processor.core.transition import Cause, Transition
from processor.core.usage import Debit, MonthUsage, count_usage
from processor.core.values import replace
from processor.http.views import account_view
from processor.kafka.topics import TopicNames
from processor.kafka.wire import dump_tick, load_tick, output_to_dict
from processor.testing import MemoryPublisher
from processor.worker.codec import Undecoded, dump_stored, load_stored
from processor.worker.due import EXPIRY_HORIZON
from processor.worker.pipeline import Pipeline
from processor.worker.records import Record, Source
from processor.worker.tally import AccountTally
from schemas import BalanceAlert, LedgerEntry
from schemas.api import AccountView
from tests.unit.conftest import CARD, DEDUPE, POLICY, T0, TENANT, D, Harness, Inputs

LEDGER = "credits.ledger"
YEAR = ExpiryPolicy(expire_after=timedelta(days=365))
DAY = timedelta(days=1)


def engine(policy: ExpiryPolicy = YEAR) -> Engine:
    return Engine(CARD, POLICY, DEDUPE, {}, {}, expiry=policy, ledger_topic=LEDGER)


def cause(cid: str, at: datetime = T0) -> Cause:
    return Cause("credits.commands", cid, at)


def credit(
    a: Account, amount: str, cid: str, at: datetime = T0, policy: ExpiryPolicy = YEAR
) -> Transition:
    return acc.apply_funds(
        a, D(amount), cause(cid, at), at, manual=True, recharge_request_id=None, expiry=policy
    )


def debit(a: Account, amount: str, eid: str = "ev", at: datetime = T0) -> Transition:
    d = Debit(D(amount), "+1", D("0.0200"), 60, service="outbound")
    return acc.apply_debit(a, d, Cause("usage.calls", eid, at), at)


def new() -> Account:
    return acc.new_account(TENANT, D("0.0000"))


# ---- lots --------------------------------------------------------------------------


def test_a_credit_is_a_lot_expiring_a_period_after_its_event_time() -> None:
    at = T0 + timedelta(microseconds=250)
    t = credit(new(), "10.0000", "c-1", at)
    [entry] = [o for o in t.outputs if isinstance(o, LedgerOut)]
    [lot] = t.account.lots
    assert lot.lot_id == entry.entry_id
    assert lot.amount == D("10.0000")
    # occurred_at + 365 days, rounded up to the whole second.
    assert lot.expires_at == T0 + timedelta(days=365, seconds=1)


def test_no_lot_when_funds_never_expire() -> None:
    t = credit(new(), "10.0000", "c-1", policy=ExpiryPolicy())
    assert t.account.lots == ()
    assert t.account.balance == D("10.0000")


def test_a_credit_first_pays_off_a_negative_balance() -> None:
    a = debit(new(), "3.0000").account
    assert a.balance == D("-3.0000")
    t = credit(a, "10.0000", "c-1")
    assert [lot.amount for lot in t.account.lots] == [D("7.0000")]
    # All of it paid debt: no lot.
    assert credit(a, "2.0000", "c-2").account.lots == ()


def test_debits_spend_the_oldest_lot_first() -> None:
    a = credit(new(), "5.0000", "c-1", T0).account
    a = credit(a, "5.0000", "c-2", T0 + 2 * DAY).account
    a = debit(a, "6.0000").account
    assert [(lot.amount, lot.expires_at) for lot in a.lots] == [
        (D("4.0000"), T0 + timedelta(days=367))
    ]


def test_funds_outside_any_lot_are_spent_before_the_lots() -> None:
    # A balance credited before lots existed (an old account value) is the oldest money.
    old = Account(TENANT, balance=D("3.0000"))
    a = credit(old, "5.0000", "c-1").account
    a = debit(a, "4.0000").account
    assert a.balance == D("4.0000")
    assert [lot.amount for lot in a.lots] == [D("4.0000")]


def test_lots_expiring_the_same_utc_day_are_merged() -> None:
    a = credit(new(), "5.0000", "c-1", T0).account
    a = credit(a, "2.0000", "c-2", T0 + timedelta(hours=3)).account
    [lot] = a.lots
    assert lot.amount == D("7.0000")
    # The first credit's id; the later expiry: no money expires before its time.
    assert lot.expires_at == T0 + timedelta(days=365, hours=3)
    a = credit(a, "1.0000", "c-3", T0 + DAY).account
    assert len(a.lots) == 2


def test_lots_past_the_bound_merge_the_two_expiring_last() -> None:
    policy = ExpiryPolicy(expire_after=timedelta(days=365), max_lots=3)
    a = new()
    for day in range(5):
        a = credit(a, "1.0000", f"c-{day}", T0 + day * DAY, policy).account
    assert len(a.lots) == 3
    assert [lot.amount for lot in a.lots] == [D("1.0000"), D("1.0000"), D("3.0000")]
    assert a.lots[-1].expires_at == T0 + timedelta(days=365 + 4)
    assert lots_total(a.lots) == a.balance


# ---- expiry ------------------------------------------------------------------------


def test_expiry_takes_exactly_what_is_left_through_one_entry() -> None:
    a = credit(new(), "10.0000", "c-1").account
    a = debit(a, "2.5000").account
    lot = a.lots[0]
    early = apply_expiry(a, LEDGER, lot.expires_at - timedelta(seconds=1), YEAR)
    # Only the notice was due (30 days ahead), no expiry.
    assert [o.alert for o in early.outputs if isinstance(o, AlertOut)] == [AlertKind.FUNDS_EXPIRING]
    t = apply_expiry(early.account, LEDGER, lot.expires_at, YEAR)
    entries = [o for o in t.outputs if isinstance(o, LedgerOut)]
    assert len(entries) == 1
    [entry] = entries
    assert entry.kind == "expiry"
    assert entry.amount == D("7.5000")
    assert entry.balance_after == D("0.0000")
    assert entry.cause_topic == LEDGER
    assert entry.cause_id == lot.lot_id
    assert entry.entry_id == expiry_entry_id(TENANT, lot.lot_id)
    assert entry.occurred_at == lot.expires_at
    assert t.account.lots == ()
    assert t.account.entries == a.entries + 1
    alerts = {o.alert: o for o in t.outputs if isinstance(o, AlertOut)}
    assert alerts[AlertKind.FUNDS_EXPIRED].amount == D("7.5000")
    assert alerts[AlertKind.FUNDS_EXPIRED].entry_id == entry.entry_id
    # The usual alerts after a balance change: the balance reached zero.
    assert AlertKind.EXHAUSTED in alerts
    # Nothing is left to expire: a repeated tick changes nothing.
    assert not apply_expiry(t.account, LEDGER, lot.expires_at + DAY, YEAR).changed


def test_expiry_applies_the_auto_recharge_rule() -> None:
    a = credit(new(), "20.0000", "c-1").account
    settings = AutoRecharge(True, D("50.0000"), D("10.0000"))
    a = configure_auto_recharge(a, settings, cause("s-1"), T0).account
    t = apply_expiry(a, LEDGER, a.lots[0].expires_at, YEAR)
    [request] = [o for o in t.outputs if isinstance(o, RechargeOut)]
    assert request.balance == D("0.0000")
    assert AlertKind.LOW_BALANCE in [o.alert for o in t.outputs if isinstance(o, AlertOut)]


def test_funds_expiring_once_per_lot_with_a_deterministic_id() -> None:
    a = credit(new(), "10.0000", "c-1").account
    expires = a.lots[0].expires_at
    assert next_expiry_due(a, YEAR) == expires - timedelta(days=30)
    assert not apply_expiry(a, LEDGER, expires - timedelta(days=31), YEAR).changed
    t = apply_expiry(a, LEDGER, expires - timedelta(days=29), YEAR)
    [alert] = t.outputs
    assert isinstance(alert, AlertOut)
    assert alert.alert is AlertKind.FUNDS_EXPIRING
    assert (alert.amount, alert.expires_at) == (D("10.0000"), expires)
    again = apply_expiry(a, LEDGER, expires - timedelta(days=20), YEAR)
    assert isinstance(again.outputs[0], AlertOut)
    assert again.outputs[0].alert_id == alert.alert_id
    # Once noticed, the next time due is the expiry itself.
    assert not apply_expiry(t.account, LEDGER, expires - DAY, YEAR).changed
    assert next_expiry_due(t.account, YEAR) == expires
    # The alert as the contract's model takes it.
    BalanceAlert.model_validate_json(orjson.dumps(output_to_dict(alert, "USD")))


def test_expiry_outputs_validate_against_the_contract() -> None:
    a = credit(new(), "10.0000", "c-1").account
    t = apply_expiry(a, LEDGER, a.lots[0].expires_at, YEAR)
    for out in t.outputs:
        raw = orjson.dumps(output_to_dict(out, "USD"))
        if isinstance(out, LedgerOut):
            assert LedgerEntry.model_validate_json(raw).kind == "expiry"
        else:
            BalanceAlert.model_validate_json(raw)


# Operations on one account: credits and debits at various times, and timer ticks.
_ops = st.lists(
    st.tuples(
        st.sampled_from(["credit", "debit", "tick"]),
        st.integers(min_value=1, max_value=5_000_000),  # ten-thousandths
        st.integers(min_value=0, max_value=800),  # days after T0
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_ops, st.integers(min_value=1, max_value=6))
def test_lots_always_add_up_to_the_balance(ops: list[tuple[str, int, int]], max_lots: int) -> None:
    """balance = funds outside lots + lots - debt; lots hold money, in expiry order,
    within the bound; an expiry takes exactly its lot's rest; oldest spent first; and
    the ledger's signed sum is the balance."""
    policy = ExpiryPolicy(expire_after=timedelta(days=365), max_lots=max_lots)
    a = new()
    signed = Decimal(0)
    clock = T0
    for n, (op, units, days) in enumerate(ops):
        amount = Decimal(units).scaleb(-4)
        at = T0 + days * DAY
        if op == "credit":
            t = credit(a, str(amount), f"c-{n}", at, policy)
        elif op == "debit":
            before = a.lots
            t = debit(a, str(amount), f"e-{n}", at)
            # Oldest first: what is left is a suffix of the lots, the first maybe cut.
            after = t.account.lots
            if after:
                assert after[1:] == before[len(before) - len(after) + 1 :]
        else:
            clock = max(clock, at)
            t = apply_expiry(a, LEDGER, clock, policy)
            expired = {o.cause_id: o.amount for o in t.outputs if isinstance(o, LedgerOut)}
            for lot in a.lots:
                if lot.expires_at <= clock:
                    assert expired.pop(lot.lot_id) == lot.amount
            assert not expired
            assert all(lot.expires_at > clock for lot in t.account.lots)
        for out in t.outputs:
            if isinstance(out, LedgerOut):
                signed += out.amount if out.kind == "credit" else -out.amount
        a = t.account
        lots = a.lots
        assert signed == a.balance
        assert all(lot.amount > 0 for lot in lots)
        assert list(lots) == sorted(lots, key=lambda lot: lot.expires_at)
        assert len(lots) <= max_lots
        assert len({lot.expires_at.date() for lot in lots}) == len(lots)
        if a.balance < 0:
            assert lots == ()
        else:
            assert lots_total(lots) <= a.balance


# ---- the engine and the timer tick -----------------------------------------------


def expiry_tick(at: datetime, tenant: str = TENANT) -> TimerTick:
    return TimerTick(f"expiry@{int(at.timestamp())}", tenant, "", 0, at, kind=EXPIRY_TICK)


def test_engine_expires_a_lot_once_through_a_replayed_tick(inputs: Inputs) -> None:
    h = Harness(engine())
    h.command(inputs.funds("10.0000", "f-1"))
    expires = h.account().lots[0].expires_at
    position = h.offsets.next("timer")
    first = h.engine.timer(expiry_tick(expires), "timer", position)
    assert first.status is Status.APPLIED
    assert h.account().balance == D("0.0000")
    # The same tick read again after a crash: replayed, not applied again.
    again = h.engine.timer(expiry_tick(expires), "timer", position)
    assert again.status is Status.REPLAYED
    # A later tick for the same tenant: nothing left to expire.
    later = h.engine.timer(expiry_tick(expires + DAY), "timer", h.offsets.next("timer"))
    assert later.status is Status.IGNORED
    assert later.account is not None  # the timer's index learns the tenant has no lots
    assert h.account().balance == D("0.0000")
    assert h.account().entries == 2


def test_engine_credits_lots_only_when_funds_expire(inputs: Inputs) -> None:
    never = Harness(engine(ExpiryPolicy()))
    never.command(inputs.funds("10.0000", "f-1"))
    assert never.account().lots == ()


def test_a_tick_for_an_unknown_tenant_is_ignored() -> None:
    h = Harness(engine())
    outcome = h.engine.timer(expiry_tick(T0, "nobody"), "timer", h.offsets.next("timer"))
    assert outcome.status is Status.IGNORED


# ---- consumption ---------------------------------------------------------------------


def test_consumption_counts_per_service_in_the_event_times_month(inputs: Inputs) -> None:
    h = Harness(engine())
    h.now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    dec = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    nov = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    h.command(inputs.funds("100.0000", "f-1", at=dec))
    h.usage(inputs.call("c-1", duration=61, at=dec))  # 120 s, 0.0400
    h.usage(inputs.call("c-2", duration=30, at=nov))  # 60 s, 0.0200
    tf = inputs.call(
        "c-3", duration=60, call_type="toll_free_inbound", number="+18005550100", at=nov
    )
    h.usage(tf)
    h.usage(inputs.conference("l-1", duration=60, at=dec))
    h.usage(
        inputs.conference(
            "l-2", duration=60, leg_type="toll_free_dial_in", number="+18005550100", at=dec
        )
    )
    h.usage(inputs.call("c-0", duration=0, at=dec))  # charged nothing: not counted
    view = account_view(h.account(), "USD", h.now)
    AccountView.model_validate_json(orjson.dumps(view))
    current, previous = view["consumption"]
    assert current["month"] == "2026-12"
    assert current["services"]["outbound"] == {
        "events": 1,
        "billed_seconds": 120,
        "amount": "0.0400",
    }
    assert current["services"]["conferencing_dial_out"]["events"] == 1
    assert current["services"]["conferencing_toll_free_dial_in"]["events"] == 1
    assert previous["month"] == "2026-11"
    # c-3 happened on 2026-11-30: the previous month.
    assert previous["services"]["outbound"]["events"] == 1
    assert previous["services"]["toll_free_inbound"]["events"] == 1
    assert previous["services"]["conferencing_dial_out"] == {
        "events": 0,
        "billed_seconds": 0,
        "amount": "0.0000",
    }
    # Read again (a replayed record, a duplicate): never counted twice.
    h.usage(inputs.call("c-1", duration=61, at=dec))
    assert account_view(h.account(), "USD", h.now)["consumption"] == view["consumption"]


def test_consumption_keeps_two_months_by_event_time() -> None:
    d = Debit(D("1.0000"), "+1", D("0.0200"), 60, service="outbound")
    usage: tuple[MonthUsage, ...] = ()
    usage = count_usage(usage, datetime(2026, 10, 5, tzinfo=UTC), "outbound", d)
    usage = count_usage(usage, datetime(2026, 12, 5, tzinfo=UTC), "outbound", d)
    assert [m.month for m in usage] == [202612]  # October is not the month before
    usage = count_usage(usage, datetime(2026, 11, 5, tzinfo=UTC), "outbound", d)
    assert [m.month for m in usage] == [202612, 202611]
    # Older than both: not counted.
    assert count_usage(usage, datetime(2026, 10, 5, tzinfo=UTC), "outbound", d) is usage
    usage = count_usage(usage, datetime(2027, 1, 1, tzinfo=UTC), "toll_free_inbound", d)
    assert [m.month for m in usage] == [202701, 202612]
    assert usage[0].services[1].events == 1
    # The view's current month is the clock's; an idle tenant shows zeros.
    view = account_view(Account(TENANT, balance=D("0.0000"), usage=usage), "USD", T0)
    assert [m["month"] for m in view["consumption"]] == ["2027-01", "2026-12"]
    later = account_view(
        Account(TENANT, balance=D("0.0000"), usage=usage),
        "USD",
        datetime(2027, 3, 1, tzinfo=UTC),
    )
    assert [m["month"] for m in later["consumption"]] == ["2027-03", "2027-02"]
    assert all(s["events"] == 0 for m in later["consumption"] for s in m["services"].values())


# ---- the view ------------------------------------------------------------------------


def test_the_view_lists_at_most_three_lots_soonest_first() -> None:
    a = new()
    for day in (3, 0, 4, 1, 2):
        a = credit(a, f"{day + 1}.0000", f"c-{day}", T0 + day * DAY).account
    view = account_view(a, "USD", T0)
    assert view["expiring"] == [
        {"amount": "1.0000", "expires_at": "2027-11-23T10:00:00Z"},
        {"amount": "2.0000", "expires_at": "2027-11-24T10:00:00Z"},
        {"amount": "3.0000", "expires_at": "2027-11-25T10:00:00Z"},
    ]
    AccountView.model_validate_json(orjson.dumps(view))


# ---- stored values and ticks ---------------------------------------------------------

# An account value as the code before lots and consumption wrote it.
OLD_VALUE = (
    b'{"v":2,"account":{"v":1,"tenant_id":"acme","balance":"34.6834","entries":76,'
    b'"requests_issued":0,"status_seq":0,"updated_at":"2026-11-25T10:00:00Z",'
    b'"auto_recharge":{"enabled":true,"recharge_amount":"25.00","trigger_balance":"5.00",'
    b'"suspended":false},"pending":null},"seq":81,"gen":7,"epoch":3,'
    b'"applied":{"usage.calls:0":133456},"outbox":[],"currency":"USD","decimals":4}'
)


def test_an_old_account_value_loads_without_lots_or_consumption() -> None:
    stored = load_stored(OLD_VALUE)
    assert stored.account.balance == D("34.6834")
    assert stored.account.lots == ()
    assert stored.account.usage == ()
    assert Undecoded(OLD_VALUE).expires is None
    # Its balance is funds outside any lot: spent first, never expiring.
    a = credit(stored.account, "10.0000", "c-1").account
    assert [lot.amount for lot in a.lots] == [D("10.0000")]
    assert debit(a, "34.6834").account.lots == a.lots


def test_lots_and_consumption_round_trip_compactly(inputs: Inputs) -> None:
    h = Harness(engine())
    h.command(inputs.funds("10.0000", "f-1"))
    h.usage(inputs.call("c-1"))
    h.engine.timer(
        expiry_tick(h.account().lots[0].expires_at - timedelta(days=1)),
        "timer",
        h.offsets.next("timer"),
    )
    stored = h.engine.accounts[TENANT]
    raw = dump_stored(stored)
    again = load_stored(raw)
    assert again.account == stored.account
    data = orjson.loads(raw)  # codec.stored_to_list: lots at 14, usage at 15
    lot = stored.account.lots[0]
    assert lot.expires_at.microsecond == 0 and data[6] == 4  # scale: the card's decimals
    assert data[14] == [[lot.lot_id, 99800, int(lot.expires_at.timestamp()), 1]]
    assert data[15] == [[202611, [1, 60, 200]]]
    assert Undecoded(raw).expires == int(lot.expires_at.timestamp())


def test_expiry_ticks_round_trip_and_recharge_ticks_still_load() -> None:
    tick = expiry_tick(T0)
    assert load_tick(dump_tick(tick)) == tick
    assert "request_id" not in orjson.loads(dump_tick(tick))
    old = (
        b'{"tick_id":"r#1@1","tenant_id":"acme","request_id":"r","attempt":1,'
        b'"at":"2026-11-23T10:00:00Z"}'
    )
    assert load_tick(old) == TimerTick("r#1@1", "acme", "r", 1, T0)


def test_the_tally_indexes_tenants_with_lots_undecoded_or_not() -> None:
    a = credit(new(), "10.0000", "c-1").account
    stored = StoredAccount(a)
    tally = AccountTally()
    tally.replace(0, TENANT, None, Undecoded(dump_stored(stored)))
    first = int(a.lots[0].expires_at.timestamp())
    assert list(tally.expiring([0])) == [(TENANT, first)]
    spent = StoredAccount(debit(a, "10.0000").account)
    tally.replace(0, TENANT, stored, spent)
    assert list(tally.expiring([0])) == []


# ---- the handler's due index -----------------------------------------------------------

NAMES = TopicNames(
    calls="usage.calls",
    conferencing="usage.conferencing",
    commands="credits.commands",
    recharge_requests="credits.recharge-requests",
    ledger=LEDGER,
    alerts="credits.alerts",
    rejected="credits.rejected",
    reroute="app-reroute",
    timer="app-recharge-timer",
    accounts_changelog="app-accounts-changelog",
    dedupe_changelog="app-dedupe-changelog",
)


def test_the_timer_fires_only_for_tenants_due_and_expires_through_its_tick(
    inputs: Inputs,
) -> None:
    clock = [T0]
    pub = MemoryPublisher()
    pipeline = Pipeline.build(
        CARD, POLICY, DEDUPE, {}, {}, NAMES, 1, pub, expiry=YEAR, clock=lambda: clock[0]
    )

    def run(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run(coro)

    for offset, (tenant, day) in enumerate((("acme", 0), ("globex", 40))):
        cmd = inputs.funds("5.0000", f"f-{tenant}", tenant=tenant, at=T0 + day * DAY)
        clock[0] = T0 + day * DAY
        value = orjson.dumps(cmd.model_dump(mode="json"))
        status = pipeline.intake.stage(
            Source.COMMANDS, Record(NAMES.commands, 0, offset, tenant.encode(), value)
        )
        assert status == "applied"
    run(pipeline.flusher.flush())
    assert set(pipeline.due.expiry_due) == {"acme", "globex"}
    acme_lot = pipeline.engine.accounts["acme"].account.lots[0]
    # Not yet within the notice period: nothing fires.
    clock[0] = acme_lot.expires_at - timedelta(days=31)
    assert pipeline.due.fire() == 0
    # At acme's expiry only acme is due (globex's notice comes 10 days after it).
    clock[0] = acme_lot.expires_at
    assert pipeline.due.fire() == 1
    run(pipeline.flusher.flush())
    [tick_value] = [v for t, _k, v, _h in pub.sent if t == NAMES.timer]
    tick = load_tick(tick_value)
    assert (tick.tenant_id, tick.kind) == ("acme", EXPIRY_TICK)
    # The tick comes back through the timer topic to the owner and is applied there.
    assert pipeline.intake.stage_tick(Record(NAMES.timer, 0, 0, b"acme", tick_value)) == "applied"
    run(pipeline.flusher.flush())
    assert "acme" not in pipeline.due.expiry_due
    assert pipeline.engine.accounts["acme"].account.balance == D("0.0000")
    [entry] = [e for e in pub.values(NAMES.ledger) if e["kind"] == "expiry"]
    assert entry["cause_id"] == acme_lot.lot_id
    kinds = [a["alert"] for a in pub.values(NAMES.alerts)]
    assert "funds_expired" in kinds
    # A lost tick is fired again a while later, not on every timer turn.
    assert pipeline.due.fire() == 0


def test_the_index_holds_only_tenants_due_within_its_horizon() -> None:
    clock = [T0]
    pipeline = Pipeline.build(
        CARD,
        POLICY,
        DEDUPE,
        {},
        {},
        NAMES,
        1,
        MemoryPublisher(),
        expiry=YEAR,
        clock=lambda: clock[0],
    )
    soon = int((T0 + timedelta(days=30, hours=1)).timestamp())  # notice due in an hour
    later = int((T0 + timedelta(days=60)).timestamp())
    pipeline.due.rebuild([], lambda _t: True, [("soon", soon), ("later", later)])
    assert set(pipeline.due.expiry_due) == {"soon"}
    assert pipeline.due.expiry_due["soon"] == T0 + timedelta(hours=1)
    assert not pipeline.due.needs_rebuild()
    clock[0] = T0 + EXPIRY_HORIZON / 2
    assert pipeline.due.needs_rebuild()
    # 30 days on, "later" comes within the horizon of a rebuild.
    clock[0] = T0 + timedelta(days=29, hours=20)
    pipeline.due.rebuild([], lambda _t: True, [("later", later)])
    assert pipeline.due.expiry_due == {"later": T0 + timedelta(days=30)}
    # A tenant whose account changes is indexed only when due within the horizon.
    a = credit(new(), "1.0000", "c-1", clock[0])
    pipeline.due.track(replace(a.account, tenant_id="fresh"))
    assert "fresh" not in pipeline.due.expiry_due


def test_both_kinds_of_tick_match_the_documented_timer_message() -> None:
    import jsonschema
    import yaml

    from schemas import asyncapi

    document = yaml.safe_load(asyncapi.DOC_PATH.read_text())
    payload = document["components"]["messages"]["TimerTick"]["payload"]
    recharge = TimerTick("r#1@1", "acme", "r", 1, T0)
    for tick in (expiry_tick(T0), recharge):
        jsonschema.validate(orjson.loads(dump_tick(tick)), payload)


def test_a_lot_merged_past_the_bound_never_reuses_a_notice_id() -> None:
    policy = ExpiryPolicy(expire_after=timedelta(days=365), notice=timedelta(days=30), max_lots=1)
    a = credit(new(), "1.0000", "c-1", T0, policy).account
    first = a.lots[0].expires_at
    noticed = apply_expiry(a, LEDGER, first - timedelta(days=1), policy)
    [notice] = noticed.outputs
    # A credit a day later merges into the noticed lot (the bound is 1): a later expiry.
    merged = credit(noticed.account, "2.0000", "c-2", T0 + DAY, policy).account
    assert [(lot.lot_id, lot.noticed) for lot in merged.lots] == [(a.lots[0].lot_id, False)]
    again = apply_expiry(merged, LEDGER, first, policy)
    [second] = again.outputs
    assert isinstance(second, AlertOut) and second.amount == D("3.0000")
    assert isinstance(notice, AlertOut)
    assert second.alert_id != notice.alert_id
