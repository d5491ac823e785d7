"""Tests for processor.core.rating: the contract's rate card rules, the loader's
validation and the money arithmetic (exact, rounded once, never via float)."""

from __future__ import annotations

import math
import pathlib
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.rate_card_parser import example_rate_card_path, load_rate_card, parse_rate_card
from processor.core.rating import Charge, Rate, RateCard, RateCardError, RateTable, RoundingMode

OUT = RateTable.OUTBOUND
TOLL_FREE = RateTable.TOLL_FREE_INBOUND
CONF = RateTable.CONFERENCING_DIAL_OUT

CONTRACT_CARD_YAML = """\
currency: USD
version: "2026-11"
rounding: {decimals: 4, mode: half_up}   # mode: half_up | half_even | up | down
tables:
  outbound:
    - {prefix: "+1", per_minute: "0.0200", increment_seconds: 60}
    - {prefix: "+44", per_minute: "0.0350", increment_seconds: 1, minimum_seconds: 30}
    - {prefix: "+447", per_minute: "0.1200", increment_seconds: 1, connect_fee: "0.0100"}
  toll_free_inbound:
    - {prefix: "+1800", per_minute: "0.0190", increment_seconds: 60}
  conferencing_dial_out:
    - {prefix: "+1", per_minute: "0.0150", increment_seconds: 60}
"""


def load_yaml_text(text: str, tmp_path: pathlib.Path, name: str = "card.yaml") -> RateCard:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_rate_card(path)


@pytest.fixture
def contract_card(tmp_path: pathlib.Path) -> RateCard:
    return load_yaml_text(CONTRACT_CARD_YAML, tmp_path)


def card_data(
    *entries: dict[str, Any],
    table: str = "outbound",
    decimals: Any = "4",
    mode: Any = "half_up",
    **top: Any,
) -> dict[str, Any]:
    """A minimal valid card as the YAML BaseLoader would produce it (all strings)."""
    data: dict[str, Any] = {
        "currency": "USD",
        "version": "test",
        "rounding": {"decimals": decimals, "mode": mode},
        "tables": {table: list(entries) or [{"prefix": "+1", "per_minute": "0.0200"}]},
    }
    data.update(top)
    return data


def one_rate_card(
    per_minute: str = "0.0300",
    decimals: int = 4,
    mode: str = "half_up",
    **entry: str,
) -> RateCard:
    return parse_rate_card(
        card_data(
            {"prefix": "+1", "per_minute": per_minute, **entry}, decimals=str(decimals), mode=mode
        )
    )


# --- the contract's sample card -------------------------------------------------------


def test_contract_card_header(contract_card: RateCard) -> None:
    assert contract_card.currency == "USD"
    assert contract_card.version == "2026-11"
    assert contract_card.decimals == 4
    assert contract_card.mode is RoundingMode.HALF_UP
    assert len(contract_card.rates) == 5


def test_defaults_applied(contract_card: RateCard) -> None:
    us = contract_card.lookup(OUT, "+14155550100")
    assert us == Rate(OUT, "+1", Decimal("0.0200"), 60, 60, Decimal(0))
    uk_mobile = contract_card.lookup(OUT, "+447700900123")
    # minimum_seconds defaults to the increment, not to 60.
    assert uk_mobile == Rate(OUT, "+447", Decimal("0.1200"), 1, 1, Decimal("0.0100"))


def test_increment_defaults_to_60_and_minimum_to_increment() -> None:
    card = parse_rate_card(card_data({"prefix": "+1", "per_minute": "0.02"}))
    rate = card.lookup(OUT, "+12125550100")
    assert rate is not None
    assert (rate.increment_seconds, rate.minimum_seconds, rate.connect_fee) == (60, 60, Decimal(0))
    card = parse_rate_card(
        card_data({"prefix": "+1", "per_minute": "0.02", "increment_seconds": "6"})
    )
    rate = card.lookup(OUT, "+12125550100")
    assert rate is not None
    assert (rate.increment_seconds, rate.minimum_seconds) == (6, 6)


@pytest.mark.parametrize(
    ("duration", "billed", "amount"),
    [
        (1, 60, "0.0200"),
        (59, 60, "0.0200"),
        (60, 60, "0.0200"),
        (61, 120, "0.0400"),
        (119, 120, "0.0400"),
        (120, 120, "0.0400"),
        (121, 180, "0.0600"),
        (86400, 86400, "28.8000"),
    ],
)
def test_per_minute_increments(
    contract_card: RateCard, duration: int, billed: int, amount: str
) -> None:
    charge = contract_card.rate(OUT, "+14155550100", duration)
    assert charge is not None
    assert charge.billed_seconds == billed
    assert charge.amount == Decimal(amount)
    assert str(charge.amount) == amount


@pytest.mark.parametrize(
    ("duration", "billed", "amount"),
    [
        (1, 30, "0.0175"),  # minimum 30 s
        (29, 30, "0.0175"),
        (30, 30, "0.0175"),
        (31, 31, "0.0181"),  # 0.0180833.. half_up
        (59, 59, "0.0344"),  # 0.0344166..
        (60, 60, "0.0350"),
        (61, 61, "0.0356"),  # 0.0355833..
        (86400, 86400, "50.4000"),
    ],
)
def test_per_second_with_minimum(
    contract_card: RateCard, duration: int, billed: int, amount: str
) -> None:
    charge = contract_card.rate(OUT, "+442071838750", duration)
    assert charge is not None
    assert charge.rate.prefix == "+44"
    assert (charge.billed_seconds, str(charge.amount)) == (billed, amount)


@pytest.mark.parametrize(
    ("duration", "amount"),
    [(1, "0.0120"), (59, "0.1280"), (60, "0.1300"), (61, "0.1320"), (86400, "172.8100")],
)
def test_connect_fee(contract_card: RateCard, duration: int, amount: str) -> None:
    charge = contract_card.rate(OUT, "+447700900123", duration)
    assert charge is not None
    assert charge.rate.prefix == "+447"
    assert charge.billed_seconds == duration
    assert str(charge.amount) == amount


def test_other_tables(contract_card: RateCard) -> None:
    toll_free = contract_card.rate(TOLL_FREE, "+18005550100", 61)
    assert toll_free is not None
    assert (toll_free.billed_seconds, str(toll_free.amount)) == (120, "0.0380")
    conf = contract_card.rate(CONF, "+14155550100", 90)
    assert conf is not None
    assert (conf.billed_seconds, str(conf.amount)) == (120, "0.0300")
    # Tables are independent: +44 is only in outbound, +1 is not toll-free.
    assert contract_card.rate(CONF, "+442071838750", 60) is None
    assert contract_card.rate(TOLL_FREE, "+14155550100", 60) is None


@pytest.mark.parametrize(
    ("increment", "minimum"), [(6, 30), (30, 60), (60, 0), (1, 0), (7, 7), (3600, 60)]
)
def test_increment_boundaries(increment: int, minimum: int) -> None:
    card = one_rate_card("0.6000", increment_seconds=str(increment), minimum_seconds=str(minimum))
    durations = {1, 59, 60, 61, increment - 1, increment, increment + 1, 86400} - {0}
    for d in sorted(durations):
        charge = card.rate(OUT, "+12125550100", d)
        assert charge is not None
        expected_billed = max(minimum, math.ceil(d / increment) * increment)
        assert charge.billed_seconds == expected_billed, d
        assert charge.amount == Decimal(expected_billed) / 100  # 0.60/min = 0.01/s


def test_increment_and_minimum_exact_values() -> None:
    card = one_rate_card("0.6000", increment_seconds="6", minimum_seconds="30")
    got = {d: card.rate(OUT, "+1", d) for d in (1, 5, 6, 7, 29, 30, 31, 36, 37)}
    billed = {d: c.billed_seconds for d, c in got.items() if c is not None}
    assert billed == {1: 30, 5: 30, 6: 30, 7: 30, 29: 30, 30: 30, 31: 36, 36: 36, 37: 42}


def test_minimum_not_a_multiple_of_increment() -> None:
    card = one_rate_card("0.6000", increment_seconds="60", minimum_seconds="90")
    charge = card.rate(OUT, "+1", 61)
    assert charge is not None and charge.billed_seconds == 120
    charge = card.rate(OUT, "+1", 1)
    assert charge is not None and charge.billed_seconds == 90


# --- longest prefix -------------------------------------------------------------------


def test_longest_prefix_wins() -> None:
    card = parse_rate_card(
        card_data(
            {"prefix": "+4", "per_minute": "0.9"},
            {"prefix": "+44", "per_minute": "0.1"},
            {"prefix": "+447", "per_minute": "0.2"},
            {"prefix": "+4477", "per_minute": "0.3"},
            {"prefix": "+449", "per_minute": "0.4"},
        )
    )

    def prefix(number: str) -> str | None:
        rate = card.lookup(OUT, number)
        return None if rate is None else rate.prefix

    assert prefix("+447712345678") == "+4477"
    assert prefix("+447612345678") == "+447"
    assert prefix("+442012345678") == "+44"
    assert prefix("+499876") == "+4"
    assert prefix("+4") == "+4"
    assert prefix("+449") == "+449"
    assert prefix("+1") is None
    assert prefix("") is None
    assert prefix("447712345678") is None  # no "+": not a prefix match


def test_entry_order_does_not_matter() -> None:
    entries = [
        {"prefix": "+447", "per_minute": "0.2"},
        {"prefix": "+44", "per_minute": "0.1"},
    ]
    card = parse_rate_card(card_data(*entries))
    rate = card.lookup(OUT, "+447700900123")
    assert rate is not None and rate.prefix == "+447"


def test_lookup_accepts_plain_table_name(contract_card: RateCard) -> None:
    # arg-type: a plain table name instead of the enum is the test
    assert contract_card.lookup("outbound", "+14155550100") is not None  # type: ignore[arg-type]
    # arg-type: an unknown table name is the test
    assert contract_card.lookup("nonsense", "+14155550100") is None  # type: ignore[arg-type]


def test_missing_table_matches_nothing() -> None:
    card = parse_rate_card(card_data({"prefix": "+1", "per_minute": "0.02"}))
    assert card.lookup(TOLL_FREE, "+18005550100") is None
    assert card.rate(CONF, "+14155550100", 60) is None


def test_no_match_returns_none_also_for_zero_duration(contract_card: RateCard) -> None:
    assert contract_card.rate(OUT, "+861012345678", 60) is None
    assert contract_card.rate(OUT, "+861012345678", 0) is None


def test_zero_duration_is_free(contract_card: RateCard) -> None:
    # +447 has a connect fee and +44 a minimum; an unanswered call pays neither.
    for number in ("+447700900123", "+442071838750", "+14155550100"):
        charge = contract_card.rate(OUT, number, 0)
        assert charge is not None
        assert charge.billed_seconds == 0
        assert charge.amount == 0
        assert str(charge.amount) == "0.0000"
        assert not charge.amount.is_signed()


@pytest.mark.parametrize("duration", [-1, -86400, True, 1.0, "60"])
def test_invalid_duration_raises(contract_card: RateCard, duration: Any) -> None:
    with pytest.raises(ValueError, match="duration_seconds"):
        contract_card.rate(OUT, "+14155550100", duration)


# --- rounding -------------------------------------------------------------------------

# 0.03 per minute, per-second billing, no minimum: d seconds cost d * 0.0005 exactly,
# so at 2 decimals even d lands on exact cents and odd multiples of 5 on ties.
ROUNDING_CASES = [
    # duration, exact, half_up, half_even, up, down
    (20, "0.01", "0.01", "0.01", "0.01", "0.01"),
    (9, "0.0045", "0.00", "0.00", "0.01", "0.00"),
    (10, "0.005", "0.01", "0.00", "0.01", "0.00"),  # tie, even neighbour below
    (11, "0.0055", "0.01", "0.01", "0.01", "0.00"),
    (30, "0.015", "0.02", "0.02", "0.02", "0.01"),  # tie, even neighbour above
    (50, "0.025", "0.03", "0.02", "0.03", "0.02"),  # tie, even neighbour below
    (70, "0.035", "0.04", "0.04", "0.04", "0.03"),
    (1, "0.0005", "0.00", "0.00", "0.01", "0.00"),
]


@pytest.mark.parametrize(("duration", "exact", *RoundingMode), ROUNDING_CASES)
def test_rounding_modes_with_ties(
    duration: int, exact: str, half_up: str, half_even: str, up: str, down: str
) -> None:
    expected = {"half_up": half_up, "half_even": half_even, "up": up, "down": down}
    assert Decimal(duration) * Decimal("0.03") / 60 == Decimal(exact)
    for mode, want in expected.items():
        card = one_rate_card(
            "0.03", decimals=2, mode=mode, increment_seconds="1", minimum_seconds="0"
        )
        charge = card.rate(OUT, "+1", duration)
        assert charge is not None
        assert str(charge.amount) == want, mode


@pytest.mark.parametrize(
    ("mode", "expected"),
    # 0.01/min for 1 s = 0.000166.. (non-terminating: rounding must not depend on a
    # truncated quotient).
    [("half_up", "0.0002"), ("half_even", "0.0002"), ("up", "0.0002"), ("down", "0.0001")],
)
def test_rounding_non_terminating(mode: str, expected: str) -> None:
    card = one_rate_card("0.01", decimals=4, mode=mode, increment_seconds="1")
    charge = card.rate(OUT, "+1", 1)
    assert charge is not None and str(charge.amount) == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    # 0.01/min for 3 s = 0.0005 exactly: a tie at 3 decimals.
    [("half_up", "0.001"), ("half_even", "0.000"), ("up", "0.001"), ("down", "0.000")],
)
def test_rounding_tie_to_zero_is_not_negative(mode: str, expected: str) -> None:
    card = one_rate_card("0.01", decimals=3, mode=mode, increment_seconds="1")
    charge = card.rate(OUT, "+1", 3)
    assert charge is not None
    assert str(charge.amount) == expected
    assert not charge.amount.is_signed()


def test_rounded_once_not_per_term() -> None:
    # connect 0.005 + 0.03/min * 20 s = 0.005 + 0.01 = 0.015. Rounding the terms
    # separately (half_even) would give 0.00 + 0.01 = 0.01; rounding once gives 0.02.
    card = one_rate_card(
        "0.03", decimals=2, mode="half_even", increment_seconds="1", connect_fee="0.005"
    )
    charge = card.rate(OUT, "+1", 20)
    assert charge is not None and str(charge.amount) == "0.02"
    card = one_rate_card(
        "0.03", decimals=2, mode="down", increment_seconds="1", connect_fee="0.005"
    )
    charge = card.rate(OUT, "+1", 20)
    assert charge is not None and str(charge.amount) == "0.01"


def test_precision_beyond_default_decimal_context() -> None:
    # 31 significant digits exceed the default 28-digit context; the charge must
    # still be computed exactly before its single rounding.
    per_minute = "0.1234567890123456789012345678915"
    card = one_rate_card(per_minute, decimals=12, mode="half_even", increment_seconds="1")
    charge = card.rate(OUT, "+1", 86399)
    assert charge is not None
    exact = Fraction(per_minute) * 86399 / 60
    assert charge.amount == reference_round(exact, 12, RoundingMode.HALF_EVEN)


@pytest.mark.parametrize("decimals", [0, 1, 2, 4, 12])
def test_amount_has_card_exponent(decimals: int) -> None:
    card = one_rate_card("1", decimals=decimals, increment_seconds="1")
    for duration in (0, 1, 60, 61):
        charge = card.rate(OUT, "+1", duration)
        assert charge is not None
        assert charge.amount.as_tuple().exponent == -decimals


def test_quantize_and_format() -> None:
    card = one_rate_card()
    assert card.quantize(Decimal("12.34")) == Decimal("12.3400")
    assert str(card.quantize(Decimal("12.34"))) == "12.3400"
    assert card.quantize(Decimal("0.00005")) == Decimal("0.0001")  # half_up tie
    assert card.quantize(Decimal("-0.00005")) == Decimal("-0.0001")  # away from zero
    assert card.format(Decimal("12.34")) == "12.3400"
    assert card.format(Decimal("1E+3")) == "1000.0000"
    assert card.format(Decimal("1E+30")) == "1" + "0" * 30 + ".0000"
    assert card.format(Decimal("1E-10")) == "0.0000"
    assert card.format(Decimal("-5.5")) == "-5.5000"
    assert card.format(Decimal(0)) == "0.0000"
    whole = parse_rate_card(card_data(decimals="0", mode="half_even"))
    assert whole.format(Decimal("2.5")) == "2"
    assert whole.format(Decimal("3.5")) == "4"
    assert whole.format(Decimal("250")) == "250"
    assert whole.zero == Decimal(0) and str(whole.zero) == "0"
    assert str(card.zero) == "0.0000"


@pytest.mark.parametrize("mode", list(RoundingMode))
@pytest.mark.parametrize("amount", ["-0.00004", "-0.00005", "-0", "-0.0000", "0E-9"])
def test_quantize_never_negative_zero(mode: RoundingMode, amount: str) -> None:
    card = parse_rate_card(card_data(mode=mode.value))
    result = card.quantize(Decimal(amount))
    if result.is_zero():
        assert not result.is_signed()
        assert card.format(Decimal(amount)) == "0.0000"


@pytest.mark.parametrize("amount", ["NaN", "sNaN", "Infinity", "-Infinity"])
def test_quantize_rejects_non_finite(amount: str) -> None:
    with pytest.raises(ValueError, match="finite"):
        one_rate_card().quantize(Decimal(amount))


# --- float-free loading ---------------------------------------------------------------


def test_unquoted_decimals_are_exact(tmp_path: pathlib.Path) -> None:
    card = load_yaml_text(
        """\
currency: EUR
version: 7
rounding: {decimals: 6, mode: half_even}
tables:
  outbound:
    - {prefix: +1, per_minute: 0.1, connect_fee: 0.0200}
    - {prefix: +2, per_minute: 0.30000000000000004441, increment_seconds: 1}
    - {prefix: +3, per_minute: 1e-2}
    - {prefix: +4, per_minute: 2}
""",
        tmp_path,
    )
    assert card.version == "7"  # unquoted numbers stay text
    rates = {rate.prefix: rate for rate in card.rates}
    assert str(rates["+1"].per_minute) == "0.1"
    assert str(rates["+1"].connect_fee) == "0.0200"
    assert rates["+2"].per_minute == Decimal("0.30000000000000004441")
    assert rates["+3"].per_minute == Decimal("0.01")
    assert rates["+4"].per_minute == 2
    for rate in card.rates:
        assert isinstance(rate.per_minute, Decimal)
        assert isinstance(rate.connect_fee, Decimal)
    # 0.1 * 3 as floats is 0.30000000000000004; exactly it is 0.3.
    charge = card.rate(OUT, "+1999", 180)
    assert charge is not None and str(charge.amount) == "0.320000"


def test_float_values_refused() -> None:
    data = card_data({"prefix": "+1", "per_minute": 0.02})
    with pytest.raises(
        RateCardError,
        match=r"tables\.outbound\[0\] \(prefix '\+1'\): "
        r"per_minute: .*not a float",
    ):
        parse_rate_card(data)


def test_int_and_decimal_values_accepted() -> None:
    card = parse_rate_card(
        card_data(
            {
                "prefix": "+1",
                "per_minute": Decimal("0.02"),
                "increment_seconds": 6,
                "minimum_seconds": 0,
                "connect_fee": 1,
            },
            decimals=4,
            mode=RoundingMode.DOWN,
        )
    )
    rate = card.lookup(OUT, "+1")
    assert rate == Rate(OUT, "+1", Decimal("0.02"), 6, 0, Decimal(1))
    assert card.mode is RoundingMode.DOWN


def test_negative_zero_money_normalised() -> None:
    card = parse_rate_card(card_data({"prefix": "+1", "per_minute": "-0.00"}))
    rate = card.lookup(OUT, "+1")
    assert rate is not None and not rate.per_minute.is_signed()
    charge = card.rate(OUT, "+1", 60)
    assert charge is not None and str(charge.amount) == "0.0000"


# --- validation errors ----------------------------------------------------------------


def entry_error(entry: dict[str, Any], *others: dict[str, Any]) -> str:
    """Message of the error for a card whose outbound table is others + [entry]."""
    with pytest.raises(RateCardError) as info:
        parse_rate_card(card_data(*others, entry), source="card.yaml")
    return str(info.value)


PLUS_1 = {"prefix": "+1", "per_minute": "0.02"}
PLUS_33 = {"prefix": "+33", "per_minute": "0.02"}


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("per_minute", "-0.01", "must not be negative"),
        ("per_minute", "NaN", "must be a finite number"),
        ("per_minute", "nan", "must be a finite number"),
        ("per_minute", "Infinity", "must be a finite number"),
        ("per_minute", ".inf", "must be a finite number"),
        ("per_minute", "-inf", "must be a finite number"),
        ("per_minute", "abc", "must be a decimal number"),
        ("per_minute", "", "must be a decimal number"),
        ("per_minute", "0,02", "must be a decimal number"),
        ("per_minute", "1_000", "must be a decimal number"),
        ("per_minute", " 0.02", "must be a decimal number"),
        ("per_minute", True, "must be a decimal number"),
        ("per_minute", None, "must be a decimal number"),
        ("per_minute", ["0.02"], "must be a decimal number"),
        ("per_minute", Decimal("NaN"), "must be a finite number"),
        ("per_minute", Decimal("-1"), "must not be negative"),
        ("connect_fee", "-0.0001", "must not be negative"),
        ("connect_fee", "Infinity", "must be a finite number"),
        ("increment_seconds", "0", "must be > 0"),
        ("increment_seconds", "-60", "must be > 0"),
        ("increment_seconds", "1.5", "must be an integer"),
        ("increment_seconds", "60s", "must be an integer"),
        ("increment_seconds", "", "must be an integer"),
        ("increment_seconds", True, "must be an integer"),
        ("increment_seconds", 1.0, "must be an integer"),
        ("minimum_seconds", "-1", "must be >= 0"),
        ("minimum_seconds", "thirty", "must be an integer"),
    ],
)
def test_field_errors_name_the_entry(field: str, value: Any, problem: str) -> None:
    message = entry_error({"prefix": "+44", "per_minute": "0.035", field: value}, PLUS_1, PLUS_33)
    assert message.startswith(f"card.yaml: tables.outbound[2] (prefix '+44'): {field}: ")
    assert problem in message


@pytest.mark.parametrize(
    "prefix",
    [
        "44",
        "+",
        "+0",
        "+044",
        "+1234567890123456",
        "+1 800",
        "+1-800",
        "+1a",
        "",
        " +1",
        "+١٢",
        44,
        None,
    ],
)
def test_bad_prefix(prefix: Any) -> None:
    message = entry_error({"prefix": prefix, "per_minute": "0.02"}, PLUS_1)
    assert "tables.outbound[1]" in message
    assert "prefix: must be '+' then 1 to 15 digits, the first not 0" in message


def test_longest_valid_prefix() -> None:
    card = parse_rate_card(card_data({"prefix": "+123456789012345", "per_minute": "1"}))
    assert card.lookup(OUT, "+123456789012345") is not None


def test_duplicate_prefix_in_one_table() -> None:
    message = entry_error({"prefix": "+1", "per_minute": "0.03"}, PLUS_1, PLUS_33)
    assert (
        message == "card.yaml: tables.outbound[2] (prefix '+1'): prefix: duplicates "
        "tables.outbound[0]"
    )


def test_same_prefix_in_different_tables_is_fine(contract_card: RateCard) -> None:
    assert contract_card.lookup(OUT, "+1") != contract_card.lookup(CONF, "+1")


def test_unknown_entry_key() -> None:
    message = entry_error({"prefix": "+44", "per_minut": "0.035"}, PLUS_1)
    assert message.startswith(
        "card.yaml: tables.outbound[1] (prefix '+44'): unknown key 'per_minut' (allowed: "
    )


@pytest.mark.parametrize("missing", ["prefix", "per_minute"])
def test_missing_entry_key(missing: str) -> None:
    entry = {"prefix": "+44", "per_minute": "0.035"}
    del entry[missing]
    message = entry_error(entry, PLUS_1)
    assert "tables.outbound[1]" in message
    assert message.endswith(f"{missing}: missing (required)")


@pytest.mark.parametrize("entry", ["+44", ["+44", "0.03"], None])
def test_entry_not_a_mapping(entry: Any) -> None:
    with pytest.raises(RateCardError, match=r"tables\.outbound\[0\]: must be a mapping"):
        parse_rate_card(card_data(entry))


@pytest.mark.parametrize(
    ("change", "location", "problem"),
    [
        ({"currency": "usd"}, "currency", "3 uppercase letters"),
        ({"currency": "US"}, "currency", "3 uppercase letters"),
        ({"currency": "USDX"}, "currency", "3 uppercase letters"),
        ({"currency": 840}, "currency", "3 uppercase letters"),
        ({"version": ""}, "version", "non-empty string"),
        ({"version": "  "}, "version", "non-empty string"),
        ({"version": None}, "version", "non-empty string"),
        ({"rounding": "4"}, "rounding", "must be a mapping"),
        ({"rounding": {"decimals": "4"}}, "rounding: mode", "missing"),
        ({"rounding": {"mode": "up"}}, "rounding: decimals", "missing"),
        (
            {"rounding": {"decimals": "4", "mode": "up", "places": "2"}},
            "rounding",
            "unknown key 'places'",
        ),
        ({"rounding": {"decimals": "13", "mode": "up"}}, "rounding.decimals", "0..12"),
        ({"rounding": {"decimals": "-1", "mode": "up"}}, "rounding.decimals", "0..12"),
        (
            {"rounding": {"decimals": "two", "mode": "up"}},
            "rounding.decimals",
            "must be an integer",
        ),
        (
            {"rounding": {"decimals": "4", "mode": "bankers"}},
            "rounding.mode",
            "must be one of half_up | half_even | up | down, got 'bankers'",
        ),
        ({"rounding": {"decimals": "4", "mode": "HALF_UP"}}, "rounding.mode", "must be one of"),
        ({"rounding": {"decimals": "4", "mode": None}}, "rounding.mode", "must be one of"),
        ({"tables": ["outbound"]}, "tables", "must be a mapping"),
        (
            {"tables": {"inbound": []}},
            "tables.inbound",
            "unknown table (known: outbound, toll_free_inbound, conferencing_dial_out)",
        ),
        ({"tables": {"outbound": []}}, "tables", "no entries"),
        ({"tables": {}}, "tables", "no entries"),
        ({"tables": {"outbound": "+1 0.02"}}, "tables.outbound", "must be a list"),
        ({"tables": {"outbound": None}}, "tables.outbound", "must be a list"),
        ({"tables": {"outbound": {"prefix": "+1"}}}, "tables.outbound", "must be a list"),
        ({"notes": "hi"}, "card.yaml", "unknown key 'notes'"),
    ],
)
def test_card_level_errors(change: dict[str, Any], location: str, problem: str) -> None:
    data = card_data()
    data.update(change)
    with pytest.raises(RateCardError) as info:
        parse_rate_card(data, source="card.yaml")
    message = str(info.value)
    if location != "card.yaml":
        assert message.startswith(f"card.yaml: {location}: ")
    assert problem in message


@pytest.mark.parametrize("key", ["currency", "version", "rounding", "tables"])
def test_missing_top_level_key(key: str) -> None:
    data = card_data()
    del data[key]
    with pytest.raises(RateCardError, match=f"^card.yaml: {key}: missing"):
        parse_rate_card(data, source="card.yaml")


@pytest.mark.parametrize("data", [None, "", [], "currency: USD", 42])
def test_document_not_a_mapping(data: object) -> None:
    with pytest.raises(RateCardError, match=r"^<rate card>: must be a mapping"):
        parse_rate_card(data)


def test_error_attributes() -> None:
    with pytest.raises(RateCardError) as info:
        parse_rate_card(card_data({"prefix": "+1", "per_minute": "-1"}), source="x.yaml")
    error = info.value
    assert isinstance(error, ValueError)
    assert error.source == "x.yaml"
    assert error.location == "tables.outbound[0] (prefix '+1'): per_minute"
    assert error.problem == "must not be negative, got '-1'"


def test_one_table_is_enough_and_tables_are_optional() -> None:
    card = parse_rate_card(
        card_data({"prefix": "+1800", "per_minute": "0.019"}, table="toll_free_inbound")
    )
    assert card.lookup(TOLL_FREE, "+18005550100") is not None
    assert card.lookup(OUT, "+18005550100") is None


def test_empty_table_beside_a_filled_one() -> None:
    data = card_data()
    data["tables"]["conferencing_dial_out"] = []
    card = parse_rate_card(data)
    assert card.table(CONF) == ()
    assert len(card.table(OUT)) == 1


# --- file loading ---------------------------------------------------------------------


def test_load_names_the_file_in_errors(tmp_path: pathlib.Path) -> None:
    text = CONTRACT_CARD_YAML.replace('"0.0350"', '"-0.0350"')
    with pytest.raises(RateCardError) as info:
        load_yaml_text(text, tmp_path, "bad.yaml")
    assert str(info.value) == (
        f"{tmp_path / 'bad.yaml'}: tables.outbound[1] (prefix '+44'): per_minute: "
        "must not be negative, got '-0.0350'"
    )


def test_load_typo_in_yaml_key(tmp_path: pathlib.Path) -> None:
    text = CONTRACT_CARD_YAML.replace("minimum_seconds", "minimum_second")
    with pytest.raises(
        RateCardError,
        match=r"tables\.outbound\[1\] \(prefix '\+44'\): "
        r"unknown key 'minimum_second'",
    ):
        load_yaml_text(text, tmp_path)


def test_load_rejects_duplicate_yaml_keys(tmp_path: pathlib.Path) -> None:
    text = CONTRACT_CARD_YAML.replace(
        '"+1", per_minute: "0.0200"', '"+1", per_minute: "0.0200", per_minute: "0.0001"', 1
    )
    with pytest.raises(
        RateCardError, match=r"invalid YAML: line 6, column 44: .*duplicate key 'per_minute'"
    ):
        load_yaml_text(text, tmp_path)


def test_load_rejects_duplicate_table_keys(tmp_path: pathlib.Path) -> None:
    text = CONTRACT_CARD_YAML + "  outbound:\n    - {prefix: '+9', per_minute: '1'}\n"
    with pytest.raises(RateCardError, match="duplicate key 'outbound'"):
        load_yaml_text(text, tmp_path)


@pytest.mark.parametrize("text", ["currency: [USD\n", "a: b\n---\nc: d\n", "\tcurrency: USD\n"])
def test_load_invalid_yaml(tmp_path: pathlib.Path, text: str) -> None:
    with pytest.raises(RateCardError, match="invalid YAML"):
        load_yaml_text(text, tmp_path)


def test_load_empty_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RateCardError, match="must be a mapping, got nothing"):
        load_yaml_text("# nothing here\n", tmp_path)


def test_load_yaml_tags_are_not_objects(tmp_path: pathlib.Path) -> None:
    text = CONTRACT_CARD_YAML.replace('"0.0200"', "!!float 0.0200")
    card = load_yaml_text(text, tmp_path)  # BaseLoader ignores the tag: still exact text
    rate = card.lookup(OUT, "+14155550100")
    assert rate is not None and str(rate.per_minute) == "0.0200"
    with pytest.raises(RateCardError):
        load_yaml_text(CONTRACT_CARD_YAML + "x: !!python/object:os.system ls\n", tmp_path)


def test_load_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_rate_card(tmp_path / "absent.yaml")


def test_load_accepts_str_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "card.yaml"
    path.write_text(CONTRACT_CARD_YAML, encoding="utf-8")
    assert load_rate_card(str(path)) == load_rate_card(path)


# --- direct construction --------------------------------------------------------------


def test_direct_construction_validates() -> None:
    rate = Rate(OUT, "+1", Decimal("0.02"), 60, 60, Decimal(0))
    card = RateCard("USD", "v", 4, RoundingMode.HALF_UP, (rate,))
    assert card.rate(OUT, "+1", 1) == Charge(Decimal("0.0200"), 60, rate)
    with pytest.raises(RateCardError, match="duplicate prefix"):
        RateCard("USD", "v", 4, RoundingMode.HALF_UP, (rate, rate))
    with pytest.raises(RateCardError, match="no entries"):
        RateCard("USD", "v", 4, RoundingMode.HALF_UP, ())
    with pytest.raises(RateCardError, match=r"rounding\.decimals"):
        RateCard("USD", "v", 13, RoundingMode.HALF_UP, (rate,))
    with pytest.raises(ValueError):
        # arg-type: an unknown rounding mode is the test
        RateCard("USD", "v", 4, "sideways", (rate,))  # type: ignore[arg-type]
    for bad in (
        dict(increment_seconds=0),
        dict(minimum_seconds=-1),
        dict(per_minute=Decimal("-0.01")),
        dict(connect_fee=Decimal("NaN")),
        dict(prefix="1"),
    ):
        fields: dict[str, Any] = dict(
            table=OUT,
            prefix="+1",
            per_minute=Decimal("0.02"),
            increment_seconds=60,
            minimum_seconds=60,
            connect_fee=Decimal(0),
        )
        fields.update(bad)
        with pytest.raises(ValueError):
            Rate(**fields)


def test_card_is_immutable_hashable_and_comparable(contract_card: RateCard) -> None:
    again = parse_rate_card(yaml.load(CONTRACT_CARD_YAML, Loader=yaml.BaseLoader))
    assert again == contract_card
    assert hash(again) == hash(contract_card)
    with pytest.raises(AttributeError):
        # misc: writing a frozen field is the test
        contract_card.decimals = 2  # type: ignore[misc]


# --- the example card -----------------------------------------------------------------


@pytest.fixture(scope="module")
def example_card() -> RateCard:
    return load_rate_card(example_rate_card_path())


def test_example_card_path() -> None:
    path = example_rate_card_path()
    assert path.is_file()
    assert path.name == "rate-card.example.yaml"
    assert path.parent.name == "data"


def test_example_card_header(example_card: RateCard) -> None:
    assert example_card.currency == "USD"
    assert example_card.version == "2026-11"
    assert (example_card.decimals, example_card.mode) == (4, RoundingMode.HALF_UP)
    countries = {rate.prefix[:3] for rate in example_card.table(OUT)}
    assert len(countries) >= 10
    assert len(example_card.table(TOLL_FREE)) >= 8
    assert len(example_card.table(CONF)) >= 4


def test_example_card_holds_the_contract_entries(
    example_card: RateCard, contract_card: RateCard
) -> None:
    for rate in contract_card.rates:
        assert example_card.lookup(rate.table, rate.prefix) == rate


@pytest.mark.parametrize(
    ("table", "number", "duration", "prefix", "billed", "amount"),
    [
        (OUT, "+14155550100", 1, "+1", 60, "0.0200"),
        (OUT, "+14155550100", 61, "+1", 120, "0.0400"),
        (OUT, "+16135550100", 0, "+1", 0, "0.0000"),
        (OUT, "+442071838750", 10, "+44", 30, "0.0175"),
        (OUT, "+442071838750", 31, "+44", 31, "0.0181"),
        (OUT, "+447700900123", 31, "+447", 31, "0.0720"),
        (OUT, "+447700900123", 1, "+447", 1, "0.0120"),
        (TOLL_FREE, "+18005550100", 61, "+1800", 120, "0.0380"),
        (TOLL_FREE, "+18885550100", 60, "+1888", 60, "0.0190"),
        (CONF, "+14155550100", 90, "+1", 120, "0.0300"),
        (CONF, "+447700900123", 60, "+447", 60, "0.1000"),
        (OUT, "+4915112345678", 1, "+4915", 60, "0.1500"),
        (OUT, "+33612345678", 30, "+336", 30, "0.0800"),
        (OUT, "+61412345678", 61, "+614", 90, "0.2600"),
        (TOLL_FREE, "+80012345678", 60, "+800", 60, "0.1500"),
    ],
)
def test_example_card_rates(
    example_card: RateCard,
    table: RateTable,
    number: str,
    duration: int,
    prefix: str,
    billed: int,
    amount: str,
) -> None:
    charge = example_card.rate(table, number, duration)
    assert charge is not None
    assert (charge.rate.prefix, charge.billed_seconds, str(charge.amount)) == (
        prefix,
        billed,
        amount,
    )


def test_example_card_unrated_numbers(example_card: RateCard) -> None:
    assert example_card.rate(OUT, "+861012345678", 60) is None  # China not on the card
    assert example_card.rate(TOLL_FREE, "+14155550100", 60) is None  # not toll-free


def test_lookup_is_fast_enough(example_card: RateCard) -> None:
    # The hot path must sustain ~50k lookups/s; this checks a 20x margin loosely.
    numbers = [
        "+14155550100",
        "+447700900123",
        "+4915112345678",
        "+861012345678",
        "+33612345678",
    ] * 2000
    start = time.perf_counter()
    for number in numbers:
        example_card.rate(OUT, number, 61)
    assert time.perf_counter() - start < 1.0


# --- properties -----------------------------------------------------------------------


def reference_round(value: Fraction, decimals: int, mode: RoundingMode) -> Decimal:
    """Independent rounding of a non-negative exact rational, for the oracle."""
    scaled = value * 10**decimals
    floor = math.floor(scaled)
    rest = scaled - floor
    if mode is RoundingMode.DOWN:
        result = floor
    elif mode is RoundingMode.UP:
        result = floor + (rest > 0)
    elif mode is RoundingMode.HALF_UP:
        result = floor + (rest >= Fraction(1, 2))
    else:
        result = floor + (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1))
    return Decimal(result).scaleb(-decimals)


money = st.decimals(
    min_value=0, max_value=Decimal("99.999999"), places=6, allow_nan=False, allow_infinity=False
)


@st.composite
def cards(draw: st.DrawFn) -> RateCard:
    entry: dict[str, Any] = {"prefix": "+1", "per_minute": str(draw(money))}
    if draw(st.booleans()):
        entry["increment_seconds"] = str(draw(st.integers(1, 3600)))
    if draw(st.booleans()):
        entry["minimum_seconds"] = str(draw(st.integers(0, 7200)))
    if draw(st.booleans()):
        entry["connect_fee"] = str(draw(money))
    return parse_rate_card(
        card_data(
            entry,
            decimals=str(draw(st.integers(0, 12))),
            mode=draw(st.sampled_from(list(RoundingMode))).value,
        )
    )


durations = st.integers(min_value=0, max_value=86400)


@settings(max_examples=300, deadline=None)
@given(card=cards(), duration=durations)
def test_property_matches_exact_oracle(card: RateCard, duration: int) -> None:
    charge = card.rate(OUT, "+12125550100", duration)
    assert charge is not None
    rate = charge.rate
    if duration == 0:
        assert charge.billed_seconds == 0 and charge.amount == 0
        return
    exact = Fraction(rate.connect_fee) + Fraction(rate.per_minute) * charge.billed_seconds / 60
    assert charge.amount == reference_round(exact, card.decimals, card.mode)
    assert charge.amount.as_tuple().exponent == -card.decimals


@settings(max_examples=300, deadline=None)
@given(card=cards(), duration=durations)
def test_property_never_negative_and_billed_rules(card: RateCard, duration: int) -> None:
    charge = card.rate(OUT, "+12125550100", duration)
    assert charge is not None
    assert charge.amount >= 0 and not charge.amount.is_signed()
    billed, rate = charge.billed_seconds, charge.rate
    assert billed >= duration
    if duration > 0:
        assert billed % rate.increment_seconds == 0 or billed == rate.minimum_seconds
        assert billed >= rate.minimum_seconds
        # Never more than one increment past what the minimum or duration requires.
        assert billed < max(rate.minimum_seconds + 1, duration + rate.increment_seconds)


@settings(max_examples=300, deadline=None)
@given(card=cards(), a=durations, b=durations)
def test_property_monotone_in_duration(card: RateCard, a: int, b: int) -> None:
    short, long = sorted((a, b))
    first = card.rate(OUT, "+1", short)
    second = card.rate(OUT, "+1", long)
    assert first is not None and second is not None
    assert first.billed_seconds <= second.billed_seconds
    assert first.amount <= second.amount


@settings(max_examples=300, deadline=None)
@given(
    decimals=st.integers(0, 12),
    mode=st.sampled_from(list(RoundingMode)),
    amount=st.decimals(
        allow_nan=False, allow_infinity=False, min_value=Decimal("-1e12"), max_value=Decimal("1e12")
    ),
)
def test_property_quantize_idempotent(decimals: int, mode: RoundingMode, amount: Decimal) -> None:
    card = parse_rate_card(card_data(decimals=str(decimals), mode=mode.value))
    once = card.quantize(amount)
    assert card.quantize(once) == once
    assert str(card.quantize(once)) == str(once)
    assert once.as_tuple().exponent == -decimals
    assert not (once.is_zero() and once.is_signed())
    assert abs(Fraction(once) - Fraction(amount)) < Fraction(1, 10**decimals)
    text = card.format(amount)
    assert "E" not in text and "e" not in text
    assert Decimal(text) == once
