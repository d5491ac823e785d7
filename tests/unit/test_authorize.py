"""Issue 20, part 3: how long may a call last (RateCard.max_seconds) and the answer
of GET /tenants/{id}/authorize built from it (processor/http/views.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.rate_card_parser import parse_rate_card
from processor.core.rating import MAX_AUTHORIZED_SECONDS, RateCard, RateTable, RoundingMode
from processor.core.state import Account
from processor.http.views import authorize_problem, authorize_view
from schemas.api import AuthorizeView
from tests.unit.conftest import CARD, TENANT, UK, UK_MOBILE, UNRATED, US, D

OUT = RateTable.OUTBOUND


def card_with(entry: dict[str, Any], decimals: int = 4, mode: str = "half_up") -> RateCard:
    return parse_rate_card(
        {
            "currency": "USD",
            "version": "t",
            "rounding": {"decimals": decimals, "mode": mode},
            "tables": {"outbound": [{"prefix": "+1", **entry}]},
        }
    )


def seconds(
    card: RateCard, budget: str, number: str = US, cap: int = MAX_AUTHORIZED_SECONDS
) -> int:
    found = card.max_seconds(OUT, number, D(budget), cap)
    assert found is not None
    return found[1]


# ---- examples ----------------------------------------------------------------------


def test_per_minute_increments() -> None:
    # +1: 0.0200/min in 60 s increments. 0.1000 pays 5 minutes, not a second more.
    assert seconds(CARD, "0.1000") == 300
    assert seconds(CARD, "0.0999") == 240
    assert seconds(CARD, "0.0199") == 0
    assert seconds(CARD, "0.0000") == 0
    assert seconds(CARD, "-1.0000") == 0


def test_connect_fee_and_per_second() -> None:
    # +447: 0.0100 connect fee + 0.1200/min per second (0.002/s). 0.0300 pays 10 s.
    assert seconds(CARD, "0.0300", UK_MOBILE) == 10
    assert seconds(CARD, "0.0100", UK_MOBILE) == 0  # the fee alone; no second left
    # Per second: 10 s = 0.0300, 11 s = 0.0320.
    assert seconds(CARD, "0.0319", UK_MOBILE) == 10


def test_minimum_seconds() -> None:
    # +44: 0.0350/min per second, 30 s minimum: the first call costs 0.0175.
    assert seconds(CARD, "0.0174", UK) == 0
    assert seconds(CARD, "0.0175", UK) == 30
    assert seconds(CARD, "0.0181", UK) == 31  # 31 s = 0.018083.. -> 0.0181


def test_capped_at_a_day_and_free_rates() -> None:
    assert seconds(CARD, "1000000.0000") == MAX_AUTHORIZED_SECONDS
    free = card_with({"per_minute": "0", "increment_seconds": 1})
    assert seconds(free, "0.0000") == MAX_AUTHORIZED_SECONDS
    assert seconds(free, "-0.0001") == 0
    assert seconds(CARD, "1.0000", cap=90) == 90  # a cap inside an increment


def test_no_rate_is_none() -> None:
    assert CARD.max_seconds(OUT, UNRATED, D("10")) is None


def test_rounding_down_lets_a_fraction_of_a_quantum_through() -> None:
    # 0.0001/min per second at 4 places rounding down: a charge below one quantum is
    # 0.0000, so a budget of 0.0000 pays 59 s (60 s = 0.0001 exactly), and rounding up
    # pays nothing.
    card = card_with({"per_minute": "0.0001", "increment_seconds": 1}, mode="down")
    assert seconds(card, "0.0000") == 59
    assert seconds(card, "0.0001") == 119
    up = card_with({"per_minute": "0.0001", "increment_seconds": 1}, mode="up")
    assert seconds(up, "0.0000") == 0


def test_never_rates_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    card = card_with({"per_minute": "0.000001", "increment_seconds": 1}, decimals=6)
    calls = 0
    charge = RateCard.charge_of

    def counting(self: RateCard, entry: Any, billed: int) -> Decimal:
        nonlocal calls
        calls += 1
        return charge(self, entry, billed)

    monkeypatch.setattr(RateCard, "charge_of", counting)
    assert 0 < seconds(card, "0.000500") < MAX_AUTHORIZED_SECONDS
    assert calls <= 25


# ---- properties --------------------------------------------------------------------

DECIMALS = st.integers(0, 6)


@st.composite
def cards_and_budgets(draw: st.DrawFn) -> tuple[RateCard, Decimal, Decimal]:
    decimals = draw(DECIMALS)
    places = draw(st.integers(0, 6))
    entry: dict[str, Any] = {
        "per_minute": str(Decimal(draw(st.integers(0, 500_000))).scaleb(-places)),
        "increment_seconds": draw(st.sampled_from([1, 6, 30, 60, 61, 3600, 86_401])),
    }
    if draw(st.booleans()):
        entry["minimum_seconds"] = draw(st.integers(0, 600))
    if draw(st.booleans()):
        entry["connect_fee"] = str(Decimal(draw(st.integers(0, 10_000))).scaleb(-places))
    card = card_with(entry, decimals, draw(st.sampled_from([m.value for m in RoundingMode])))
    quantum = Decimal(1).scaleb(-decimals)
    balance = draw(st.integers(-(10**7), 10**8)) * quantum
    credit_limit = draw(st.integers(0, 10**6)) * quantum
    return card, balance, credit_limit


@settings(max_examples=400, deadline=None)
@given(cards_and_budgets())
def test_max_seconds_is_paid_and_one_more_increment_is_not(
    case: tuple[RateCard, Decimal, Decimal],
) -> None:
    """Charging max_seconds never takes the balance below -credit_limit, and
    max_seconds + increment would (unless capped)."""
    card, balance, credit_limit = case
    found = card.max_seconds(OUT, US, balance + credit_limit)
    assert found is not None
    rate, most = found
    charge = card.rate(OUT, US, most)
    assert charge is not None
    # Charged nothing (0 s) a balance already below stays where it is.
    assert balance - charge.amount >= min(-credit_limit, balance)
    assert most > 0 or charge.amount == 0
    if most < MAX_AUTHORIZED_SECONDS:
        more = card.rate(OUT, US, most + rate.increment_seconds)
        assert more is not None
        assert balance - more.amount < -credit_limit


@settings(max_examples=150, deadline=None)
@given(cards_and_budgets(), st.integers(1, 400))
def test_max_seconds_is_what_rating_every_second_finds(
    case: tuple[RateCard, Decimal, Decimal], cap: int
) -> None:
    card, balance, credit_limit = case
    budget = balance + credit_limit
    found = card.max_seconds(OUT, US, budget, cap)
    assert found is not None
    brute = 0
    for duration in range(1, cap + 1):
        charge = card.rate(OUT, US, duration)
        assert charge is not None
        if charge.amount <= budget:
            brute = duration
    assert found[1] == brute


# ---- the answer --------------------------------------------------------------------


def test_authorize_a_funded_tenant() -> None:
    account = Account(TENANT, balance=D("0.0500"), credit_limit=D("0.0500"))
    view = authorize_view(TENANT, account, CARD, "outbound", US)
    assert view == {
        "tenant_id": TENANT,
        "allowed": True,
        "max_seconds": 300,
        "reason": None,
        "rate_prefix": "+1",
        "per_minute": "0.0200",
        "balance": "0.0500",
        "currency": "USD",
    }


def test_authorize_refusals() -> None:
    exhausted = Account(TENANT, balance=D("-0.0100"), credit_limit=D("0.0100"))
    view = authorize_view(TENANT, exhausted, CARD, "outbound", US)
    assert (view["allowed"], view["reason"], view["max_seconds"]) == (False, "exhausted", 0)
    poor = Account(TENANT, balance=D("0.0100"))  # active, but a minute costs 0.0200
    assert authorize_view(TENANT, poor, CARD, "outbound", US)["reason"] == "exhausted"
    rich = Account(TENANT, balance=D("10.0000"))
    no_rate = authorize_view(TENANT, rich, CARD, "conferencing_toll_free_dial_in", US)
    assert (no_rate["allowed"], no_rate["reason"], no_rate["rate_prefix"]) == (
        False,
        "no_rate",
        None,
    )
    for view in (authorize_view(TENANT, poor, CARD, "outbound", US), no_rate):
        AuthorizeView.model_validate_json(orjson.dumps(view))
    unknown = authorize_view(TENANT, None, CARD, "outbound", US)
    AuthorizeView.model_validate_json(orjson.dumps(unknown))
    assert (unknown["allowed"], unknown["reason"], unknown["balance"]) == (
        False,
        "unknown_tenant",
        None,
    )


def test_services_map_to_the_engines_tables() -> None:
    rich = Account(TENANT, balance=D("10.0000"))
    toll_free = "+18005550100"
    for service in ("toll_free_inbound", "conferencing_toll_free_dial_in"):
        view = authorize_view(TENANT, rich, CARD, service, toll_free)
        assert view["rate_prefix"] == "+1800" and view["per_minute"] == "0.0190"
    dial_out = authorize_view(TENANT, rich, CARD, "conferencing_dial_out", US)
    assert dial_out["per_minute"] == "0.0150"


@pytest.mark.parametrize(
    ("service", "number", "error"),
    [
        (None, US, "invalid_service"),
        ("inbound", US, "invalid_service"),
        ("outbound", None, "invalid_number"),
        ("outbound", "33612345678", "invalid_number"),
        ("outbound", "+0123", "invalid_number"),
        ("outbound", "+3361234567\n", "invalid_number"),
    ],
)
def test_bad_service_or_number(service: str | None, number: str | None, error: str) -> None:
    problem = authorize_problem(service, number)
    assert problem is not None and problem[0] == error
    assert authorize_problem("outbound", "+33612345678") is None
