"""Status alerts agree with the balance after a replay (issue 16, item 6).

`exhausted`/`restored` alerts carry a per-tenant `status_seq` that only grows along
the account's history; a consumer keeps the alert with the highest one. Here, random
interleavings of debits, credits and settings are applied, a crash throws away what
was applied after the last committed state, and the rest is replayed in another order:
the last status alert (by status_seq) must always be the balance's status.
"""

from __future__ import annotations

import copy
import itertools
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.core import account as acc
from processor.core.engine import Engine
from processor.core.outputs import AlertKind, AlertOut
from processor.core.recharge import configure_auto_recharge
from processor.core.state import Account, AutoRecharge
from processor.core.transition import Cause
from processor.core.usage import Debit, UsageEvent
from schemas import BalanceAlert, Command
from tests.unit.conftest import (
    CARD,
    DEDUPE,
    POLICY,
    T0,
    TENANT,
    UK_MOBILE,
    US,
    Harness,
    Inputs,
    make_engine,
)

Input = UsageEvent | Command

# One tenant; amounts of comparable size so the balance crosses zero often.
debit = st.tuples(st.just("debit"), st.sampled_from([US, UK_MOBILE]), st.integers(1, 600))
credit = st.tuples(st.just("credit"), st.integers(1, 300))  # cents
configure = st.tuples(st.just("configure"), st.booleans(), st.integers(1, 300), st.integers(0, 300))
operations = st.lists(st.one_of(debit, debit, credit, configure), min_size=1, max_size=25)


def build(ops: list[tuple[object, ...]]) -> list[Input]:
    """Each operation as the input record it is, with an id of its own."""
    i = Inputs()
    built: list[Input] = []
    for n, op in enumerate(ops):
        if op[0] == "debit":
            built.append(i.call(f"e{n}", number=str(op[1]), duration=int(str(op[2]))))
        elif op[0] == "credit":
            built.append(i.funds(f"{Decimal(int(str(op[1]))) / 100:.2f}", f"f{n}"))
        else:
            _, enabled, amount, trigger = op
            built.append(
                i.configure(
                    f"s{n}",
                    enabled=bool(enabled),
                    recharge_amount=f"{Decimal(int(str(amount))) / 100:.2f}",
                    trigger=f"{Decimal(int(str(trigger))) / 100:.2f}",
                )
            )
    return built


def apply(h: Harness, record: Input) -> None:
    if isinstance(record, UsageEvent):
        h.usage(record)
    else:
        h.command(record)


def status_alerts(h: Harness, since: int = 0) -> list[AlertOut]:
    return [
        out
        for outcome in h.outcomes[since:]
        for out in outcome.outputs
        if isinstance(out, AlertOut) and out.alert in (AlertKind.EXHAUSTED, AlertKind.RESTORED)
    ]


def copy_of(h: Harness) -> Harness:
    """Another worker's view of the same committed state (the values are immutable)."""
    engine = Engine(CARD, POLICY, DEDUPE, dict(h.engine.accounts), dict(h.engine.seen))
    return Harness(engine, h.now, list(h.outcomes), copy.deepcopy(h.offsets))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=operations, data=st.data())
def test_after_a_replay_in_another_order_the_last_status_alert_is_the_balances_status(
    ops: list[tuple[object, ...]], data: st.DataObject
) -> None:
    records = build(ops)
    committed = data.draw(st.integers(0, len(records)), label="committed")
    crashed_at = data.draw(st.integers(committed, len(records)), label="crashed at")
    replay = data.draw(st.permutations(records[committed:]), label="replay order")

    h = Harness(make_engine())
    for record in records[:committed]:
        apply(h, record)
    # The worker that crashed applied more, published its alerts, and lost its state.
    lost = copy_of(h)
    for record in records[committed:crashed_at]:
        apply(lost, record)
    # Its successor replays everything since the commit, in another order.
    before = len(h.outcomes)
    for record in replay:
        apply(h, record)

    account = h.account()
    alerts = status_alerts(h)
    seqs = [a.status_seq for a in alerts]
    # status_seq only grows along the history: 1, 2, 3, ... with no gap or repeat
    assert seqs == list(range(1, len(alerts) + 1))
    assert account.status_seq == len(alerts)
    # the replay continues the committed history's numbering
    replayed = status_alerts(h, before)
    assert [a.status_seq for a in replayed] == seqs[len(seqs) - len(replayed) :]
    # the alert with the highest status_seq is the balance's status (none: still the
    # new tenant's exhausted, which has no alert)
    if alerts:
        latest = max(alerts, key=lambda a: a.status_seq or 0)
        assert (latest.alert is AlertKind.EXHAUSTED) == account.exhausted
        assert latest.balance <= 0 if account.exhausted else latest.balance > 0
    else:
        assert account.exhausted
    # alternating, as the contract says, and each a valid contract record
    for a, b in itertools.pairwise(alerts):
        assert a.alert is not b.alert
    for a in alerts:
        BalanceAlert(
            alert_id=a.alert_id,
            tenant_id=TENANT,
            alert=a.alert.value,
            balance=a.balance,
            currency=CARD.currency,
            occurred_at=a.occurred_at,
            status_seq=a.status_seq,
        )
    # the replay's balance is the one any order gives
    straight = Harness(make_engine())
    for record in records:
        apply(straight, record)
    assert straight.account().balance == account.balance
    assert straight.account().exhausted == account.exhausted


def test_only_status_alerts_are_numbered() -> None:
    a = Account(TENANT, balance=Decimal("1.0000"), auto_recharge=None)
    a = configure_auto_recharge(
        a,
        AutoRecharge(False, Decimal("5.0000"), Decimal("0.5000")),
        Cause("credits.commands", "s", T0),
        T0,
    ).account
    t = acc.apply_debit(
        a,
        Debit(Decimal("2.0000"), "+1", Decimal("0.0200"), 60),
        Cause("usage.calls", "e", T0),
        T0,
    )
    by_kind = {o.alert: o.status_seq for o in t.outputs if isinstance(o, AlertOut)}
    assert by_kind == {AlertKind.EXHAUSTED: 1, AlertKind.LOW_BALANCE: None}
    assert t.account.status_seq == 1


def test_the_counter_is_kept_in_the_account_value() -> None:
    import orjson

    from processor.core.stored import StoredAccount
    from processor.worker.codec import dump_stored, load_stored
    from processor.worker.stored_v2 import stored_to_dict

    stored = StoredAccount(Account(TENANT, balance=Decimal("1.0000"), status_seq=12), seq=3)
    assert load_stored(dump_stored(stored)).account.status_seq == 12
    legacy = stored_to_dict(stored)  # the object form of version 2
    del legacy["account"]["status_seq"]  # written before status alerts were numbered
    assert load_stored(orjson.dumps(legacy)).account.status_seq == 0
