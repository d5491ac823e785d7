"""Balances keep their unit, and their arithmetic is exact (issue 16, item 9):
processor/core/money.py, and where the core, the codec and the store use it."""

from __future__ import annotations

from decimal import (
    Decimal,
    FloatOperation,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    localcontext,
)

import orjson
import pytest

from processor.core import account as acc
from processor.core.money import EXACT, PRECISION, Unit, UnitMismatch, check_unit, unit_problem
from processor.core.outputs import LedgerOut
from processor.core.state import Account
from processor.core.stored import StoredAccount
from processor.core.transition import Cause
from processor.core.usage import Debit
from processor.ops.service_commands import startup_refusal
from processor.worker.codec import Undecoded, dump_stored, load_stored
from processor.worker.stored_v2 import stored_to_dict
from tests.unit.conftest import CALLS, CARD, CARD2, T0, TENANT, Harness, Inputs, make_engine

USD4 = Unit("USD", 4)


# ---- the check ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "running"),
    [(None, USD4), (USD4, USD4), (Unit("USD", 2), USD4), (USD4, Unit("USD", 6))],
)
def test_the_same_currency_at_as_many_decimals_or_more_is_fine(
    stored: Unit | None, running: Unit
) -> None:
    assert unit_problem(stored, running) is None
    check_unit(stored, running)


def test_another_currency_is_refused_with_a_sentence() -> None:
    problem = unit_problem(USD4, Unit("EUR", 4), "acme")
    assert problem is not None
    assert "'acme'" in problem and "USD" in problem and "EUR" in problem
    assert "METER_RATE_CARD" in problem
    with pytest.raises(UnitMismatch, match="kept in USD, but the rate card is in EUR"):
        check_unit(USD4, Unit("EUR", 4), "acme")


def test_fewer_decimals_are_refused_with_a_sentence() -> None:
    with pytest.raises(UnitMismatch, match="kept at 4 decimals, but the rate card rounds to 2"):
        check_unit(USD4, Unit("USD", 2))


def test_the_card_names_its_unit() -> None:
    assert CARD.unit == USD4
    assert CARD2.unit == Unit("EUR", 2)


# ---- each value stores its unit ------------------------------------------------------


def test_the_engine_stamps_every_value_with_the_cards_unit() -> None:
    for card in (CARD, CARD2):
        h = Harness(make_engine(card))
        i = Inputs(currency=card.currency)
        h.command(i.funds("5" if card is CARD2 else "5.0000", "f-1"))
        h.usage(i.call("c-1"))
        assert h.engine.accounts[TENANT].unit == card.unit


def test_a_value_keeps_its_unit_through_the_codec() -> None:
    stored = StoredAccount(Account(TENANT, balance=Decimal("1.2300")), seq=3, unit=USD4)
    raw = dump_stored(stored)
    data = orjson.loads(raw)
    assert (data[5], data[6]) == ("USD", 4)  # currency, decimals (codec.stored_to_list)
    assert load_stored(raw) == stored
    assert Undecoded(raw).unit == USD4


def test_a_value_written_before_units_were_stored_still_decodes() -> None:
    # The format of the values already in every changelog: no currency, no decimals.
    legacy = stored_to_dict(StoredAccount(Account(TENANT, balance=Decimal("1.23")), seq=1))
    assert "currency" not in legacy and "decimals" not in legacy
    raw = orjson.dumps(legacy)
    assert load_stored(raw).unit is None
    # ... taken as the running card's when the reader knows it,
    assert load_stored(raw, CARD.unit).unit == CARD.unit
    # ... never refused,
    assert Undecoded(raw).unit is None and unit_problem(None, CARD2.unit) is None
    # ... and written with the card's unit from its next change on.
    engine = make_engine()
    engine.accounts[TENANT] = load_stored(raw)
    Harness(engine).usage(Inputs().call("c-1"))
    assert engine.accounts[TENANT].unit == CARD.unit
    assert load_stored(dump_stored(engine.accounts[TENANT])).unit == CARD.unit


def test_a_refusal_is_found_through_the_crash_that_carries_it() -> None:
    try:
        try:
            check_unit(USD4, Unit("EUR", 4), "acme")
        except UnitMismatch as exc:
            raise RuntimeError("rebalance failed") from exc
    except RuntimeError as crash:
        assert startup_refusal(crash) == unit_problem(USD4, Unit("EUR", 4), "acme")
    assert startup_refusal(RuntimeError("something else")) is None
    assert startup_refusal(None) is None


# ---- exact arithmetic ------------------------------------------------------------------


def test_the_context_traps_every_silent_change() -> None:
    for signal in (Inexact, Rounded, InvalidOperation, Overflow, FloatOperation):
        assert EXACT.traps[signal]
    with pytest.raises(Inexact):
        EXACT.divide(Decimal(1), Decimal(3))
    # Python's default context would round it silently
    assert Decimal(1) / Decimal(3) == Decimal("0.3333333333333333333333333333")


def test_a_balance_beyond_the_default_precision_stays_exact() -> None:
    # 30 significant digits: the default context (28) rounds the sum silently.
    big = Decimal("12345678901234567890123456.0000")
    a = Account(TENANT, balance=big)
    debit = Debit(Decimal("0.0001"), "+1", Decimal("0.0200"), 60)
    with localcontext() as ctx:
        ctx.prec = 28  # the default, whatever a caller set before
        t = acc.apply_debit(a, debit, Cause(CALLS, "e-1", T0), T0)
        f = acc.apply_funds(
            a,
            Decimal("0.0001"),
            Cause(CALLS, "f-1", T0),
            T0,
            manual=True,
            recharge_request_id=None,
        )
    assert t.account.balance == Decimal("12345678901234567890123455.9999")
    assert f.account.balance == Decimal("12345678901234567890123456.0001")
    (entry,) = [o for o in t.outputs if isinstance(o, LedgerOut)]
    assert entry.balance_after == t.account.balance and entry.amount == Decimal("0.0001")


def test_balance_arithmetic_does_not_depend_on_the_callers_context() -> None:
    a = Account(TENANT, balance=Decimal("10.0000"))
    debit = Debit(Decimal("0.0123"), "+1", Decimal("0.0200"), 60)
    with localcontext() as ctx:
        ctx.prec = 3  # a caller's careless context must not round a balance
        t = acc.apply_debit(a, debit, Cause(CALLS, "e-1", T0), T0)
    assert t.account.balance == Decimal("9.9877")


def test_a_sum_that_cannot_be_exact_raises_instead_of_rounding() -> None:
    huge = Decimal(10) ** PRECISION  # one digit more than the context holds, plus places
    a = Account(TENANT, balance=huge)
    debit = Debit(Decimal("0.0001"), "+1", Decimal("0.0200"), 60)
    with pytest.raises(Inexact):
        acc.apply_debit(a, debit, Cause(CALLS, "e-1", T0), T0)
