"""Property-based tests of the core: random input sequences through the Engine.

Hypothesis draws abstract operations (usage of any duration and number, unrateable
ones included; funds manual/auto naming the pending, a closed or an unknown request;
settings changes; billing failures; timer ticks, current and stale; re-sent
duplicates; the clock moving on). Each is turned into a concrete contract input
against the current state, applied, and the contract's invariants are checked after
every step against a small reference model kept from the inputs and the outputs
alone. The concrete inputs are then replayed from the same start: the outputs must
be identical (CONTRACT.md, "Guarantees": re-delivered outputs carry the same ids).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from processor.core import account as acc
from processor.core.dedupe import dedupe_key
from processor.core.engine import Engine, TimerTick
from processor.core.outcome import Outcome, Status
from processor.core.outputs import AlertKind, AlertOut, LedgerOut, Output, RechargeOut
from processor.core.rating import RateCard, RateTable
from processor.core.recharge import next_due
from processor.core.state import (
    Account,
    AutoRecharge,
    PendingRecharge,
    RechargePolicy,
    RechargeStatus,
)
from processor.core.stored import Mark, Position, StoredAccount
from schemas import (
    AutoRechargeConfigured,
    BalanceAlert,
    CallUsage,
    ConferenceUsage,
    FundsAdded,
    LedgerEntry,
    RechargeFailed,
    RechargeRequested,
)
from tests.support.events import usage_event
from tests.unit.conftest import (
    CALLS,
    CARD,
    CARD2,
    COMMANDS,
    CONFERENCING,
    DEDUPE,
    POLICY,
    T0,
    TIMER,
    TOLL_FREE,
    UK,
    UK_MOBILE,
    UNRATED,
    US,
    Offsets,
    ts,
)

TENANTS = ("t1", "t2")
NUMBERS = (US, UK, UK_MOBILE, TOLL_FREE, UNRATED)
CALL_TYPES = ("outbound", "toll_free_inbound")
LEG_TYPES = ("dial_out", "toll_free_dial_in")
TABLES = {
    "outbound": RateTable.OUTBOUND,
    "toll_free_inbound": RateTable.TOLL_FREE_INBOUND,
    "dial_out": RateTable.CONFERENCING_DIAL_OUT,
    "toll_free_dial_in": RateTable.TOLL_FREE_INBOUND,
}

# ---- strategies ------------------------------------------------------------------

tenant = st.sampled_from(TENANTS[:1] * 3 + TENANTS[1:])
# cents, so that funds, charges and triggers are of comparable size
cents = st.one_of(st.integers(1, 3000), st.integers(1, 50_000))
money_form = st.sampled_from(["exact", "exact", "exact", "short", "too_many"])
durations = st.one_of(
    st.sampled_from([0, 1, 29, 30, 31, 59, 60, 61, 600, 3600]), st.integers(0, 86400)
)

usage_op = st.tuples(
    st.sampled_from(["call", "conference"]),
    tenant,
    st.integers(0, 12),  # event id: a small pool, so repeats happen
    durations,
    st.sampled_from(NUMBERS),
    st.integers(0, 1),  # call_type / leg_type
)
funds_op = st.tuples(
    st.just("funds"),
    tenant,
    st.one_of(st.integers(1, 2000), cents),
    money_form,
    st.sampled_from(["manual", "manual", "pending", "closed", "unknown"]),
    st.sampled_from(["right"] * 5 + ["wrong"]),
)
settings_op = st.tuples(
    st.just("configure"),
    tenant,
    st.booleans() | st.just(True),
    cents,
    st.one_of(st.integers(0, 3000), st.just(0)),
    money_form,
    st.sampled_from(["absent"] * 4 + ["right", "wrong"]),  # its optional currency
)
failed_op = st.tuples(
    st.just("failed"), tenant, st.sampled_from(["pending", "pending", "pending", "unknown"])
)
# "due": the timer fires when the pending request is next due (the clock jumps there)
tick_op = st.tuples(
    st.just("tick"),
    tenant,
    st.sampled_from(["due"] * 4 + ["current"] * 2 + ["stale_attempt", "stale_id"]),
)
advance_op = st.tuples(
    st.just("advance"),
    st.one_of(st.sampled_from([1, 60, 900, 3599, 3600, 4500]), st.integers(0, 4 * 3600)),
)
resend_op = st.tuples(st.just("resend"), st.integers(0, 10_000))
reread_op = st.tuples(st.just("reread"), st.integers(0, 10_000))

operation = st.one_of(
    usage_op,
    usage_op,
    usage_op,
    funds_op,
    funds_op,
    funds_op,
    settings_op,
    failed_op,
    failed_op,
    failed_op,
    tick_op,
    tick_op,
    tick_op,
    tick_op,
    tick_op,
    advance_op,
    advance_op,
    resend_op,
    reread_op,
)
operations = st.lists(operation, min_size=20, max_size=100)
cards = st.sampled_from([CARD, CARD2])
# the default policy, and shorter ones so that suspensions (and what lifts them) are
# reached often
policies = st.sampled_from(
    [
        POLICY,
        RechargePolicy(max_attempts=1),
        RechargePolicy(
            timeout=timedelta(minutes=30), retry_after=timedelta(minutes=5), max_attempts=2
        ),
    ]
)

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- turning abstract operations into concrete inputs ----------------------------


def amount_text(units: int, form: str, card: RateCard) -> str:
    value = Decimal(units).scaleb(-2)
    if form == "exact":
        return format(card.quantize(value), "f")
    if form == "short":
        # fewer places than the card (e.g. "5" or "0.5"): valid, kept at card places
        return format(card.quantize(value).normalize(), "f")
    # one significant digit beyond the card's places: must be rejected
    return format(card.quantize(value) + Decimal(1).scaleb(-card.decimals - 1), "f")


# ("usage" | "command" | "tick", input, now, the record's position)
Step = tuple[str, Any, datetime, Position]
TOPICS = {"tick": TIMER, "command": COMMANDS}


def topic_of(what: str, value: Any) -> str:
    if what == "usage":
        return CALLS if isinstance(value, CallUsage) else CONFERENCING
    return TOPICS[what]


@dataclass
class Generator:
    card: RateCard
    engine: Engine
    now: datetime = T0
    counter: Any = field(default_factory=lambda: itertools.count(1))
    issued: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sent: list[Step] = field(default_factory=list)
    processed: list[Step] = field(default_factory=list)
    offsets: Offsets = field(default_factory=Offsets)

    def stored(self, tenant: str) -> Account | None:
        stored = self.engine.accounts.get(tenant)
        return stored.account if stored is not None else None

    def concrete(self, op: tuple[Any, ...]) -> Step | None:
        kind = op[0]
        if kind == "advance":
            self.now += timedelta(seconds=op[1])
            return None
        if kind == "resend":  # the same input again, as a new record
            if not self.sent:
                return None
            what, value, _, _ = self.sent[op[1] % len(self.sent)]
            return (what, value, self.now, self.offsets.next(topic_of(what, value)))
        if kind == "reread":  # a record read again after a crash, at its old position
            if not self.processed:
                return None
            what, value, _, position = self.processed[op[1] % len(self.processed)]
            return (what, value, self.now, position)
        n = next(self.counter)
        t = op[1]
        at = ts(self.now - timedelta(seconds=n))
        account = self.stored(t)
        pending = account.pending if account is not None else None
        if kind in ("call", "conference"):
            _, _, ev, duration, number, type_index = op
            if kind == "call":
                model: Any = CallUsage.model_validate(
                    {
                        "event_id": f"ev-{ev}",
                        "tenant_id": t,
                        "occurred_at": at,
                        "call_id": f"c{n}",
                        "call_type": CALL_TYPES[type_index],
                        "source_number": "+14155550199",
                        "destination_number": number,
                        "duration_seconds": duration,
                    }
                )
            else:
                model = ConferenceUsage.model_validate(
                    {
                        "event_id": f"ev-{ev}",
                        "tenant_id": t,
                        "occurred_at": at,
                        "conference_id": f"k{n}",
                        "leg_type": LEG_TYPES[type_index],
                        "number": number,
                        "duration_seconds": duration,
                    }
                )
            step: Step = ("usage", model, self.now, self.offsets.next(topic_of("usage", model)))
        elif kind == "funds":
            _, _, units, form, which, currency = op
            body: dict[str, Any] = {
                "type": "funds_added",
                "command_id": f"cmd-{n}",
                "tenant_id": t,
                "occurred_at": at,
                "amount": amount_text(units, form, self.card),
                "currency": self.card.currency if currency == "right" else "JPY",
                "source": "manual" if which == "manual" else "auto_recharge",
            }
            if which == "pending":
                body["recharge_request_id"] = pending.request_id if pending else "no-pending"
            elif which == "closed":
                old = self.issued[t]
                body["recharge_request_id"] = old[n % len(old)] if old else "never-issued"
            elif which == "unknown":
                body["recharge_request_id"] = f"unknown-{n}"
            step = (
                "command",
                FundsAdded.model_validate(body),
                self.now,
                self.offsets.next(COMMANDS),
            )
        elif kind == "configure":
            _, _, enabled, units, trigger_units, form, currency = op
            settings_body: dict[str, Any] = {
                "type": "auto_recharge_configured",
                "command_id": f"cmd-{n}",
                "tenant_id": t,
                "occurred_at": at,
                "enabled": enabled,
                "recharge_amount": amount_text(units, form, self.card),
                "trigger_balance": amount_text(trigger_units, "exact", self.card),
            }
            if currency != "absent":
                settings_body["currency"] = self.card.currency if currency == "right" else "CHF"
            model = AutoRechargeConfigured.model_validate(settings_body)
            step = ("command", model, self.now, self.offsets.next(COMMANDS))
        elif kind == "failed":
            rid = pending.request_id if (pending and op[2] == "pending") else f"unknown-{n}"
            model = RechargeFailed.model_validate(
                {
                    "type": "recharge_failed",
                    "command_id": f"cmd-{n}",
                    "tenant_id": t,
                    "occurred_at": at,
                    "recharge_request_id": rid,
                    "reason": "declined",
                }
            )
            step = ("command", model, self.now, self.offsets.next(COMMANDS))
        else:  # tick
            which = op[2]
            if which == "due" and account is not None:
                due = next_due(account, self.engine.policy)
                if due is not None and due > self.now:
                    self.now = due
            rid = pending.request_id if pending else "none"
            attempt = pending.attempt if pending else 1
            if which == "stale_attempt":
                attempt += 1 if n % 2 else -1
            elif which == "stale_id":
                rid = f"stale-{n}"
            tick = TimerTick(f"tick-{n}", t, rid, attempt, self.now)
            step = ("tick", tick, self.now, self.offsets.next(TIMER))
        if step[0] != "tick":
            self.sent.append(step)
        return step


def run(engine: Engine, step: Step) -> Outcome:
    what, value, now, position = step
    if what == "usage":
        return engine.usage(usage_event(value), topic_of(what, value), now, position)
    if what == "command":
        return engine.command(value, COMMANDS, now, position)
    return engine.timer(value, TIMER, position)


# ---- the reference model and the invariants ----------------------------------------------


def exponent(value: Decimal) -> int:
    exp = value.as_tuple().exponent
    assert isinstance(exp, int)
    return exp


@dataclass
class Reference:
    card: RateCard
    policy: RechargePolicy
    balance: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    ledger_sum: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    entries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # exhausted according to the alerts seen so far (a new tenant starts exhausted)
    alerted_exhausted: dict[str, bool] = field(default_factory=lambda: defaultdict(lambda: True))
    last_attempt: dict[str, int] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    entry_ids: set[str] = field(default_factory=set)
    alert_ids: set[str] = field(default_factory=set)

    def check_money(self, value: Decimal, what: str) -> None:
        assert exponent(value) == -self.card.decimals, f"{what} {value!r} not at card places"
        assert not (value.is_zero() and value.is_signed()), f"{what} is -0"

    def check_account(self, a: Account) -> None:
        self.check_money(a.balance, "balance")
        if a.auto_recharge is not None:
            self.check_money(a.auto_recharge.recharge_amount, "recharge_amount")
            self.check_money(a.auto_recharge.trigger_balance, "trigger_balance")
        if a.pending is not None:
            self.check_money(a.pending.amount, "pending amount")
            assert 1 <= a.pending.attempt <= self.policy.max_attempts
            assert a.pending.request_id not in self.closed


def new(card: RateCard, t: str) -> Account:
    return acc.new_account(t, card.zero)


def key_of(what: str, value: Any) -> str | None:
    if what == "tick":
        return None
    if what == "command":
        return dedupe_key(value.tenant_id, "command", value.command_id)
    kind = "call" if isinstance(value, CallUsage) else "conference"
    return dedupe_key(value.tenant_id, kind, value.event_id)


def check_step(
    ref: Reference,
    card: RateCard,
    step: Step,
    outcome: Outcome,
    accounts_before: dict[str, StoredAccount],
    seen_before: dict[str, Mark],
    engine: Engine,
    first_outputs: dict[Position, tuple[Output, ...]],
) -> None:
    what, value, now, position = step
    if what == "tick":
        now = value.at  # the timer's clock when it fired
    t = value.tenant_id
    assert outcome.tenant_id == t
    stored_before = accounts_before.get(t)
    stored_after = engine.accounts.get(t)
    before = stored_before.account if stored_before is not None else new(card, t)
    after = stored_after.account if stored_after is not None else new(card, t)
    written = stored_after != stored_before
    others = {k: v for k, v in engine.accounts.items() if k != t}
    assert others == {k: v for k, v in accounts_before.items() if k != t}, "other tenant changed"

    if stored_before is not None and stored_before.has_applied(position):
        # Read again after a crash: already in the balance. Nothing changes, and nothing
        # is sent again: a value is written only after its records' outputs are in
        # Kafka (docs/guarantees.md); those outputs carried the ids of `first_outputs`.
        assert outcome.status is Status.REPLAYED
        assert outcome.outputs == ()
        assert after == before
        # only this record's mark may be (re)written, at this record's position
        mark = key_of(what, value)
        changed = {
            k
            for k in engine.seen.keys() | seen_before.keys()
            if engine.seen.get(k) != seen_before.get(k)
        }
        assert changed <= ({mark} if mark else set())
        if mark in changed:
            assert mark is not None
            assert engine.seen[mark].position == position
            ref.seen.add(mark)
        return
    if written:
        assert stored_after is not None
        assert stored_after.seq == (stored_before.seq if stored_before else 0) + 1
        assert outcome.seq == stored_after.seq
        first_outputs.setdefault(position, outcome.outputs)

    # -- what status the input must get
    key: str | None = None
    expected_charge: Decimal | None = None
    if what == "usage":
        if isinstance(value, CallUsage):
            key = dedupe_key(t, "call", value.event_id)
            table, number = TABLES[value.call_type], value.destination_number
        else:
            key = dedupe_key(t, "conference", value.event_id)
            table, number = TABLES[value.leg_type], value.number
        charge = card.rate(table, number, value.duration_seconds)
        if key in ref.seen:
            expected = Status.DUPLICATE
        elif charge is None:
            expected = Status.REJECTED
        else:
            expected = Status.APPLIED
            expected_charge = charge.amount
    elif what == "command":
        key = dedupe_key(t, "command", value.command_id)
        amounts = (
            [value.amount]
            if isinstance(value, FundsAdded)
            else [value.recharge_amount, value.trigger_balance]
            if isinstance(value, AutoRechargeConfigured)
            else []
        )
        if key in ref.seen:
            expected = Status.DUPLICATE
        elif getattr(value, "currency", None) not in (None, card.currency) or any(
            card.quantize(x) != x for x in amounts
        ):
            expected = Status.REJECTED
        elif isinstance(value, RechargeFailed) and (
            before.pending is None
            or before.pending.request_id != value.recharge_request_id
            or before.pending.status is RechargeStatus.FAILED
        ):
            expected = Status.IGNORED
        else:
            expected = Status.APPLIED
    else:
        expected = outcome.status  # checked below against the pending request
        p = before.pending
        if p is None or p.request_id != value.request_id or p.attempt != value.attempt:
            assert outcome.status is Status.IGNORED
        else:
            due = next_due(before, engine.policy)
            assert due is not None
            assert outcome.status is (Status.APPLIED if now >= due else Status.IGNORED)
    assert outcome.status is expected, (outcome, expected)

    # -- nothing changes unless applied
    if outcome.status is not Status.APPLIED:
        assert outcome.outputs == ()
        assert after == before
        # an ignored command of a known tenant is marked (written unchanged), so that
        # a repeat of it is a duplicate; nothing else that is not applied is written
        assert written == (
            outcome.status is Status.IGNORED and what == "command" and stored_before is not None
        )
        if outcome.status is Status.REJECTED:
            assert outcome.rejection is not None
            assert outcome.rejection.reason in ("no_rate", "currency_mismatch", "invalid_event")
    else:
        assert outcome.account == after
        assert written or after == before  # a same-value write is allowed (settings)
    if key is not None and written:
        assert engine.seen[key].position == position
        ref.seen.add(key)
    elif not written:
        assert engine.seen == seen_before

    ledger = [o for o in outcome.outputs if isinstance(o, LedgerOut)]
    alerts = [o for o in outcome.outputs if isinstance(o, AlertOut)]
    requests = [o for o in outcome.outputs if isinstance(o, RechargeOut)]
    assert all(o.tenant_id == t for o in outcome.outputs)

    # -- balance: exactly one entry per change, the right amount, the running sum
    assert len(ledger) <= 1
    if outcome.status is Status.APPLIED and what == "usage":
        assert expected_charge is not None
        if expected_charge == 0:
            assert outcome.outputs == () and after == before
        else:
            (entry,) = ledger
            assert entry.kind == "debit" and entry.amount == expected_charge
            ref.balance[t] -= expected_charge
    elif outcome.status is Status.APPLIED and isinstance(value, FundsAdded):
        (entry,) = ledger
        assert entry.kind == "credit" and entry.amount == value.amount
        ref.balance[t] += value.amount
    else:
        assert ledger == []
    for entry in ledger:
        assert entry.amount > 0
        ref.check_money(entry.amount, "entry amount")
        ref.check_money(entry.balance_after, "balance_after")
        ref.ledger_sum[t] += entry.amount if entry.kind == "credit" else -entry.amount
        ref.entries[t] += 1
        assert entry.balance_after == ref.ledger_sum[t]
        assert entry.cause_id == (value.event_id if what == "usage" else value.command_id)
        assert entry.recorded_at == now and entry.occurred_at == value.occurred_at
        assert (entry.rate_prefix is not None) == (entry.kind == "debit")
        assert entry.entry_id not in ref.entry_ids
        ref.entry_ids.add(entry.entry_id)
        LedgerEntry.model_validate(
            # kind: the core's str, checked against the contract's Literal here
            dict(
                entry_id=entry.entry_id,
                tenant_id=t,
                kind=entry.kind,
                amount=entry.amount,
                currency=card.currency,
                balance_after=entry.balance_after,
                cause_topic=entry.cause_topic,
                cause_id=entry.cause_id,
                occurred_at=entry.occurred_at,
                recorded_at=entry.recorded_at,
                rate_prefix=entry.rate_prefix,
                rate_per_minute=entry.rate_per_minute,
                billed_seconds=entry.billed_seconds,
            )
        )
    assert after.balance == ref.ledger_sum[t] == ref.balance[t]
    assert after.entries == ref.entries[t]
    ref.check_account(after)

    # -- alerts
    state_alerts = [a for a in alerts if a.alert in (AlertKind.EXHAUSTED, AlertKind.RESTORED)]
    if ledger and before.exhausted != after.exhausted:
        assert [a.alert for a in state_alerts] == [
            AlertKind.EXHAUSTED if after.exhausted else AlertKind.RESTORED
        ]
    else:
        assert state_alerts == []
    for a in state_alerts:  # they alternate, starting from "exhausted, no alert"
        assert (a.alert is AlertKind.EXHAUSTED) != ref.alerted_exhausted[t]
        ref.alerted_exhausted[t] = a.alert is AlertKind.EXHAUSTED
    assert ref.alerted_exhausted[t] == after.exhausted

    s = before.auto_recharge
    fell = bool(ledger) and s is not None and before.balance >= s.trigger_balance > after.balance
    assert sum(a.alert is AlertKind.LOW_BALANCE for a in alerts) == int(fell)

    was_suspended = before.auto_recharge is not None and before.auto_recharge.suspended
    now_suspended = after.auto_recharge is not None and after.auto_recharge.suspended
    suspended_now = now_suspended and not was_suspended
    assert sum(a.alert is AlertKind.RECHARGE_FAILED for a in alerts) == int(suspended_now)
    if suspended_now:
        assert before.pending is not None
        assert before.pending.attempt == engine.policy.max_attempts
        assert after.pending is None
    for a in alerts:
        ref.check_money(a.balance, "alert balance")
        assert a.balance == after.balance and a.occurred_at == now
        assert a.alert_id not in ref.alert_ids
        ref.alert_ids.add(a.alert_id)
        BalanceAlert(
            alert_id=a.alert_id,
            tenant_id=t,
            alert=a.alert.value,
            balance=a.balance,
            currency=card.currency,
            occurred_at=a.occurred_at,
            status_seq=a.status_seq,
            reason=a.reason,
            request_id=a.request_id,
            amount=a.amount,
        )

    # -- recharge requests: one outstanding at most, attempts 1, 2, 3 of one id
    assert len(requests) <= 1
    if before.pending is not None and (
        after.pending is None or after.pending.request_id != before.pending.request_id
    ):
        ref.closed.add(before.pending.request_id)
        # closed only by funds naming it, by new settings that disable it while
        # waiting to be retried, by a retry with nothing left to recharge for, or by
        # suspension
        if isinstance(value, FundsAdded):
            assert value.recharge_request_id == before.pending.request_id
    for r in requests:
        assert r.request_id not in ref.closed
        assert after.pending is not None and after.pending.request_id == r.request_id
        assert after.pending.attempt == r.attempt and after.pending.status is (
            RechargeStatus.OUTSTANDING
        )
        previous = ref.last_attempt.get(r.request_id)
        if previous is None:
            assert r.attempt == 1 and what != "tick"
            assert before.pending is None or (
                isinstance(value, FundsAdded)
                and value.recharge_request_id == before.pending.request_id
            )
        else:
            assert r.attempt == previous + 1 and what == "tick"
        ref.last_attempt[r.request_id] = r.attempt
        assert 1 <= r.attempt <= engine.policy.max_attempts
        assert r.amount > 0 and r.requested_at == now and r.balance == after.balance
        for v, name in (
            (r.amount, "amount"),
            (r.trigger_balance, "trigger"),
            (r.balance, "request balance"),
        ):
            ref.check_money(v, name)
        assert after.auto_recharge is not None
        assert r.trigger_balance == after.auto_recharge.trigger_balance
        RechargeRequested(
            request_id=r.request_id,
            tenant_id=t,
            amount=r.amount,
            currency=card.currency,
            trigger_balance=r.trigger_balance,
            balance=r.balance,
            attempt=r.attempt,
            requested_at=r.requested_at,
        )
        if previous is None:
            # issued only when all the conditions hold
            s = after.auto_recharge
            assert s.enabled and not s.suspended and r.balance < s.trigger_balance
            assert r.amount == s.recharge_amount
    # "Issued when auto-recharge is enabled, the balance is below trigger_balance,
    # and no request of the tenant is outstanding; checked after every balance
    # change and every settings change."
    s = after.auto_recharge
    if s is not None and s.enabled and not s.suspended and after.balance < s.trigger_balance:
        assert after.pending is not None
    if after.pending is not None:
        assert after.auto_recharge is not None
    if outcome.status is Status.APPLIED:
        check_recharge_lifecycle(value, now, before, after, requests, engine.policy)


def check_recharge_lifecycle(
    value: Any,
    now: datetime,
    before: Account,
    after: Account,
    requests: list[RechargeOut],
    policy: RechargePolicy,
) -> None:
    """What each applied input does to the settings and the pending request."""
    p = before.pending
    suspended_before = before.auto_recharge is not None and before.auto_recharge.suspended
    suspended_after = after.auto_recharge is not None and after.auto_recharge.suspended
    if isinstance(value, AutoRechargeConfigured):
        # new settings replace the old ones and lift a suspension
        assert after.auto_recharge == AutoRecharge(
            value.enabled, value.recharge_amount, value.trigger_balance, suspended=False
        )
        if p is not None and p.status is RechargeStatus.FAILED and not value.enabled:
            assert after.pending is None  # dropped, no longer to be retried
        elif p is not None:
            assert after.pending == p and requests == []  # billing may still charge it
        return
    assert after.auto_recharge is not None or before.auto_recharge is None
    if isinstance(value, FundsAdded):
        # manual funds lift a suspension; auto-recharge funds do not
        assert suspended_after == (suspended_before and value.source != "manual")
        if p is not None and value.recharge_request_id == p.request_id:
            assert after.pending is None or after.pending.request_id != p.request_id
        elif p is not None:
            assert after.pending == p  # unknown or stale id: left open
        return
    assert suspended_after == suspended_before or (suspended_after and p is not None)
    if isinstance(value, RechargeFailed) or (
        isinstance(value, TimerTick) and p is not None and p.status is RechargeStatus.OUTSTANDING
    ):
        # billing's failure, or no answer within the timeout: a failed attempt
        assert p is not None and p.status is RechargeStatus.OUTSTANDING
        assert requests == []
        settings = before.auto_recharge
        if settings is None or not settings.enabled:
            # turned off while with billing: ended quietly (no suspension, no alert)
            assert after.pending is None and suspended_after == suspended_before
            return
        if p.attempt >= policy.max_attempts:
            assert after.pending is None and suspended_after
        else:
            assert after.pending == replace(p, status=RechargeStatus.FAILED, failed_at=now)
            assert not suspended_after or suspended_before
        return
    if isinstance(value, TimerTick):
        # the retry, once retry_after has passed since the failure
        assert p is not None and p.failed_at is not None
        assert now >= p.failed_at + policy.retry_after
        s = before.auto_recharge
        if s is not None and s.enabled and not s.suspended and before.balance < s.trigger_balance:
            assert after.pending == PendingRecharge(p.request_id, p.amount, p.attempt + 1, now)
            assert [(r.request_id, r.attempt, r.amount) for r in requests] == [
                (p.request_id, p.attempt + 1, p.amount)
            ]
        else:
            assert after.pending is None and requests == []
        return
    # usage: a pending request is untouched
    if p is not None:
        assert after.pending == p


def check_all_tenants(ref: Reference, card: RateCard, engine: Engine) -> None:
    for t in TENANTS:
        stored = engine.accounts.get(t)
        a = stored.account if stored is not None else new(card, t)
        assert a.balance == ref.ledger_sum[t] == ref.balance[t]
        assert a.entries == ref.entries[t]


# ---- the properties ------------------------------------------------------------------


def fresh(card: RateCard, policy: RechargePolicy = POLICY) -> Engine:
    return Engine(card, policy, DEDUPE, {}, {})


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(card=cards, policy=policies, ops=operations)
def test_random_sequences_keep_the_contracts_invariants(
    card: RateCard, policy: RechargePolicy, ops: list[tuple[Any, ...]]
) -> None:
    engine = fresh(card, policy)
    gen = Generator(card, engine)
    ref = Reference(card, policy)
    steps: list[Step] = []
    outcomes: list[Outcome] = []
    labels: set[str] = set()
    first_outputs: dict[Position, tuple[Output, ...]] = {}
    for op in ops:
        step = gen.concrete(op)
        if step is None:
            continue
        accounts_before = dict(engine.accounts)
        seen_before = dict(engine.seen)
        outcome = run(engine, step)
        check_step(ref, card, step, outcome, accounts_before, seen_before, engine, first_outputs)
        check_all_tenants(ref, card, engine)
        labels.update(_lifted(step, accounts_before, engine))
        for out in outcome.outputs:
            if isinstance(out, RechargeOut) and out.attempt == 1:
                gen.issued[out.tenant_id].append(out.request_id)
        gen.processed.append(step)
        steps.append(step)
        outcomes.append(outcome)
    for label in sorted(labels | _labels(outcomes)):
        event(label)

    # replaying the same inputs from the same start gives identical outputs
    replay = fresh(card, policy)
    again = [run(replay, step) for step in steps]
    assert again == outcomes
    assert replay.accounts == engine.accounts
    assert replay.seen == engine.seen


@settings(PROPERTY_SETTINGS, max_examples=50)
@given(card=cards, policy=policies, ops=operations, data=st.data())
def test_a_resent_input_changes_nothing(
    card: RateCard, policy: RechargePolicy, ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    """Re-sending any usage event or command that changed its account (or was
    marked as seen) is a duplicate: same stores, no outputs, whenever it comes back."""
    engine = fresh(card, policy)
    gen = Generator(card, engine)
    taken: list[Step] = []
    for op in ops:
        step = gen.concrete(op)
        if step is None:
            continue
        before = engine.accounts.get(step[1].tenant_id)
        outcome = run(engine, step)
        written = engine.accounts.get(step[1].tenant_id) != before
        if step[0] != "tick" and outcome.status is not Status.REPLAYED and written:
            taken.append(step)
        gen.processed.append(step)
        if len(taken) > 0 and data.draw(st.booleans(), label="resend now"):
            what, value, _, _ = data.draw(st.sampled_from(taken), label="resent")
            accounts, seen = dict(engine.accounts), dict(engine.seen)
            position = gen.offsets.next(topic_of(what, value))
            dup = run(engine, (what, value, gen.now, position))
            assert dup.status is Status.DUPLICATE and dup.outputs == ()
            assert engine.accounts == accounts and engine.seen == seen


@PROPERTY_SETTINGS
@given(
    card=cards,
    start=st.integers(-5000, 5000),
    enabled=st.booleans(),
    trigger=st.integers(0, 3000),
    charges=st.lists(st.integers(0, 86400), max_size=30),
)
def test_balance_is_exact_and_every_request_follows_the_rules(
    card: RateCard, start: int, enabled: bool, trigger: int, charges: list[int]
) -> None:
    """Straight debits from any start: the balance is the start minus the exact sum of
    the rated charges, at the card's places, with one request at most."""
    engine = fresh(card)
    zero = card.zero
    start_balance = card.quantize(Decimal(start).scaleb(-2)) + zero
    account = Account("t1", balance=start_balance)
    if enabled or trigger:
        account = Account(
            "t1",
            balance=start_balance,
            auto_recharge=AutoRecharge(
                enabled, card.quantize(Decimal(5000)), card.quantize(Decimal(trigger).scaleb(-2))
            ),
        )
    engine.accounts["t1"] = StoredAccount(account)
    total = zero
    requests = 0
    for n, seconds in enumerate(charges):
        event = CallUsage.model_validate(
            {
                "event_id": f"e{n}",
                "tenant_id": "t1",
                "occurred_at": ts(T0),
                "call_id": "c",
                "call_type": "outbound",
                "source_number": "+14155550199",
                "destination_number": UK,
                "duration_seconds": seconds,
            }
        )
        outcome = engine.usage(usage_event(event), CALLS, T0, Position(f"{CALLS}:0", n))
        charge = card.rate(RateTable.OUTBOUND, UK, seconds)
        assert charge is not None
        total += charge.amount
        requests += sum(isinstance(o, RechargeOut) for o in outcome.outputs)
    final = engine.accounts["t1"].account
    assert final.balance == start_balance - total
    assert exponent(final.balance) == -card.decimals
    assert requests <= 1
    s = final.auto_recharge
    expect_request = (
        s is not None
        and s.enabled
        and any(start_balance - sub < s.trigger_balance for sub in _prefix_sums(card, charges))
    )
    assert (requests == 1) == expect_request


def _lifted(step: Step, before: dict[str, StoredAccount], engine: Engine) -> set[str]:
    t = step[1].tenant_id
    sa, sb = before.get(t), engine.accounts.get(t)
    a = sa.account if sa is not None else None
    b = sb.account if sb is not None else None
    was = a is not None and a.auto_recharge is not None and a.auto_recharge.suspended
    now = b is not None and b.auto_recharge is not None and b.auto_recharge.suspended
    return {f"suspension lifted by {type(step[1]).__name__}"} if was and not now else set()


def _labels(outcomes: list[Outcome]) -> set[str]:
    """What a run exercised (see pytest --hypothesis-show-statistics)."""
    labels = {f"status {o.status.value}" for o in outcomes}
    for o in outcomes:
        labels.update(f"rejected {o.rejection.reason}" for _ in [0] if o.rejection)
        for out in o.outputs:
            if isinstance(out, AlertOut):
                labels.add(f"alert {out.alert.value}")
            elif isinstance(out, RechargeOut):
                labels.add(f"request attempt {out.attempt}")
    return labels


def _prefix_sums(card: RateCard, charges: list[int]) -> list[Decimal]:
    total = card.zero
    sums = []
    for seconds in charges:
        charge = card.rate(RateTable.OUTBOUND, UK, seconds)
        assert charge is not None
        if charge.amount:
            total += charge.amount
            sums.append(total)
    return sums
