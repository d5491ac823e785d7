"""The rate card: prefix lookup and charge computation.

This module is pure (no Kafka, Faust or metrics) so that the money rules can be
tested exhaustively and reused by tools. The rules are the contract's
(docs/contract.md, "The rate card"):

* the longest matching ``prefix`` of the event's table wins;
* ``increment_seconds`` defaults to 60, ``minimum_seconds`` to ``increment_seconds``,
  ``connect_fee`` to 0;
* for a duration d > 0, billed seconds b = max(minimum_seconds,
  ceil(d / increment_seconds) * increment_seconds) and the charge is
  connect_fee + per_minute * b / 60, rounded once to the card's decimals and mode;
* for d = 0 the charge is 0.

Money never passes through binary floating point: a card is read without floats
(processor/core/rate_card_parser.py), and the charge is computed with exact decimal
arithmetic before its single rounding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)
from enum import StrEnum
from fractions import Fraction
from typing import Final

from processor.core.money import Unit

__all__ = [
    "MAX_AUTHORIZED_SECONDS",
    "Charge",
    "Rate",
    "RateCard",
    "RateCardError",
    "RateTable",
    "RoundingMode",
]


class RoundingMode(StrEnum):
    HALF_UP = "half_up"
    HALF_EVEN = "half_even"
    UP = "up"  # away from zero
    DOWN = "down"  # towards zero


class RateTable(StrEnum):
    OUTBOUND = "outbound"
    TOLL_FREE_INBOUND = "toll_free_inbound"
    CONFERENCING_DIAL_OUT = "conferencing_dial_out"


_DECIMAL_ROUNDING: Final[Mapping[RoundingMode, str]] = {
    RoundingMode.HALF_UP: ROUND_HALF_UP,
    RoundingMode.HALF_EVEN: ROUND_HALF_EVEN,
    RoundingMode.UP: ROUND_UP,
    RoundingMode.DOWN: ROUND_DOWN,
}

# Unbounded precision with every lossy signal trapped: used only for operations
# that are exact by nature (scaleb), so a bug that would round silently raises.
_EXACT: Final = Context(
    prec=MAX_PREC,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, Rounded],
)
# quantize() must round, so Inexact/Rounded are not trapped here; the huge
# precision keeps quantize from failing on large balances.
_ROUNDING: Final = Context(
    prec=MAX_PREC,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)


# What a prefix and a currency look like; the parser (rate_card_parser.py) checks them
# first with messages naming the entry, `Rate` and `RateCard` again for cards built by hand.
PREFIX_RE: Final = re.compile(r"\+[1-9][0-9]{0,14}")
CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")

MAX_DECIMALS: Final = 12

# The longest call `RateCard.max_seconds` authorizes: 24 h, the contract's longest
# usage event (duration_seconds <= 86400).
MAX_AUTHORIZED_SECONDS: Final = 86_400


class RateCardError(ValueError):
    """An invalid rate card.

    ``str(error)`` is ``"<source>: <location>: <problem>"`` where location names the
    offending entry, e.g. ``"rate-card.yaml: tables.outbound[2] (prefix '+44'):
    per_minute: must not be negative, got '-0.01'"``. Entry indices are 0-based,
    in file order.
    """

    def __init__(self, source: str, location: str, problem: str) -> None:
        self.source = source
        self.location = location
        self.problem = problem
        where = f"{source}: {location}" if location else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class Rate:
    """One rate card entry, with the contract's defaults already applied."""

    table: RateTable
    prefix: str
    per_minute: Decimal
    increment_seconds: int
    minimum_seconds: int
    connect_fee: Decimal

    def __post_init__(self) -> None:
        # The parser reports problems with better messages; this guards Rates
        # built by hand, because rate() divides by increment_seconds and relies
        # on non-negative money.
        if not PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"invalid prefix {self.prefix!r}")
        for name in ("per_minute", "connect_fee"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"{name} must be a finite, non-negative Decimal: {value!r}")
        if _is_bad_int(self.increment_seconds) or self.increment_seconds <= 0:
            raise ValueError(f"increment_seconds must be an int > 0: {self.increment_seconds!r}")
        if _is_bad_int(self.minimum_seconds) or self.minimum_seconds < 0:
            raise ValueError(f"minimum_seconds must be an int >= 0: {self.minimum_seconds!r}")

    def billed_seconds(self, duration_seconds: int) -> int:
        """Seconds billed for a call of ``duration_seconds`` (0 for 0)."""
        if duration_seconds <= 0:
            return 0
        # -(-a // b) is ceil(a / b) in integers; floats would misround large values.
        increments = -(-duration_seconds // self.increment_seconds)
        return max(self.minimum_seconds, increments * self.increment_seconds)


def _is_bad_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


# (rate, fee, per_minute, denominator): integers such that for billed seconds b,
# charge * 10**decimals == (fee + per_minute * b) / denominator exactly.
_Entry = tuple[Rate, int, int, int]


def _entry(rate: Rate, decimals: int) -> _Entry:
    # Precomputed once per card so the hot path is plain integer arithmetic.
    places = max(0, -_exponent(rate.per_minute), -_exponent(rate.connect_fee))
    scale = 10**decimals
    per_minute = int(_EXACT.scaleb(rate.per_minute, places))
    connect_fee = int(_EXACT.scaleb(rate.connect_fee, places))
    return (rate, connect_fee * 60 * scale, per_minute * scale, 60 * 10**places)


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: checked by Rate
    return exponent


@dataclass(init=False, unsafe_hash=True, slots=True)
class Charge:
    """The rated cost of one usage event.

    ``amount`` is already rounded, once, to the card's decimals and mode; add it
    to/subtract it from balances as is.
    """

    amount: Final[Decimal]
    billed_seconds: Final[int]
    rate: Final[Rate]

    def __init__(self, amount: Decimal, billed_seconds: int, rate: Rate) -> None:
        self.amount = amount
        self.billed_seconds = billed_seconds
        self.rate = rate


@dataclass(frozen=True)
class RateCard:
    """A validated rate card. Build it with :func:`load_rate_card` or
    :func:`parse_rate_card`; direct construction validates the same invariants
    but with plainer messages.
    """

    currency: str
    version: str
    decimals: int
    mode: RoundingMode
    rates: tuple[Rate, ...]

    # Derived in __post_init__ for the hot path; excluded from eq/hash/repr.
    _index: Mapping[str, tuple[Mapping[str, _Entry], tuple[int, ...]]] = field(
        init=False, repr=False, compare=False
    )
    _quantum: Decimal = field(init=False, repr=False, compare=False)
    _rounding: str = field(init=False, repr=False, compare=False)
    _zero: Decimal = field(init=False, repr=False, compare=False)
    _unit: Unit = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not CURRENCY_RE.fullmatch(self.currency):
            raise RateCardError("<rate card>", "currency", f"invalid {self.currency!r}")
        if not isinstance(self.version, str) or not self.version:
            raise RateCardError("<rate card>", "version", "must be a non-empty string")
        if _is_bad_int(self.decimals) or not 0 <= self.decimals <= MAX_DECIMALS:
            raise RateCardError("<rate card>", "rounding.decimals", f"must be 0..{MAX_DECIMALS}")
        mode = RoundingMode(self.mode)
        if not self.rates:
            raise RateCardError("<rate card>", "tables", "has no entries")
        by_table: dict[RateTable, dict[str, _Entry]] = {}
        for rate in self.rates:
            table = by_table.setdefault(RateTable(rate.table), {})
            if rate.prefix in table:
                raise RateCardError(
                    "<rate card>", f"tables.{rate.table}", f"duplicate prefix {rate.prefix!r}"
                )
            table[rate.prefix] = _entry(rate, self.decimals)
        index = {
            # Keyed by the plain string value: a StrEnum member and its string
            # hash and compare alike, so lookup() accepts either. Only the prefix
            # lengths present are tried, longest first.
            str(table): (
                entries,
                tuple(sorted({len(prefix) for prefix in entries}, reverse=True)),
            )
            for table, entries in by_table.items()
        }
        quantum = Decimal(1).scaleb(-self.decimals)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_quantum", quantum)
        object.__setattr__(self, "_rounding", _DECIMAL_ROUNDING[mode])
        object.__setattr__(self, "_zero", Decimal(0).quantize(quantum))
        object.__setattr__(self, "_unit", Unit(self.currency, self.decimals))

    @property
    def unit(self) -> Unit:
        """The card's currency and decimals: what every balance it meters is kept in."""
        return self._unit

    @property
    def zero(self) -> Decimal:
        """0 at the card's decimals (``Decimal("0.0000")`` for 4)."""
        return self._zero

    def table(self, table: RateTable) -> tuple[Rate, ...]:
        """The entries of one table, in file order."""
        return tuple(rate for rate in self.rates if rate.table == table)

    def lookup(self, table: RateTable, number: str) -> Rate | None:
        """The entry of ``table`` with the longest prefix of ``number``, or None.

        The number is not validated here: callers validate E.164 at their edge,
        and anything that is not one simply matches nothing useful.
        """
        entry = self._find(table, number)
        return None if entry is None else entry[0]

    def _find(self, table: RateTable, number: str) -> _Entry | None:
        indexed = self._index.get(table)
        if indexed is None:
            return None
        entries, lengths = indexed
        size = len(number)
        for length in lengths:
            if length <= size:
                entry = entries.get(number[:length])
                if entry is not None:
                    return entry
        return None

    def rate(self, table: RateTable, number: str, duration_seconds: int) -> Charge | None:
        """Rate a usage of ``duration_seconds`` to/at ``number`` in ``table``.

        Returns None when no prefix matches, also for duration 0: an unrated
        number is a card problem (``no_rate``) whatever the duration. For
        duration 0 a matching entry gives a zero charge with 0 billed seconds
        (no connect fee, no minimum). Raises ValueError for a negative or
        non-integer duration; the contract's upper bound (86400) is the event
        validator's job and is not enforced here.
        """
        if _is_bad_int(duration_seconds) or duration_seconds < 0:
            raise ValueError(f"duration_seconds must be an int >= 0: {duration_seconds!r}")
        entry = self._find(table, number)
        if entry is None:
            return None
        rate = entry[0]
        if duration_seconds == 0:
            return Charge(amount=self._zero, billed_seconds=0, rate=rate)
        billed = rate.billed_seconds(duration_seconds)
        return Charge(amount=self.charge_of(entry, billed), billed_seconds=billed, rate=rate)

    def charge_of(self, entry: _Entry, billed: int) -> Decimal:
        # charge * 10**decimals = (fee + per_minute * billed) / denominator, all
        # exact integers (see _entry). The division may not terminate (60 has a
        # factor 3), so it is split into quotient and remainder instead. Where the
        # remainder lies against half the denominator is all any of the four
        # modes needs, so a terminating stand-in with the same quotient and the
        # same position (quotient + 1/4, 1/2 or 3/4) is rounded by quantize():
        # the one rounding rule, applied once, rounding exactly as the true value.
        _rate, fee, per_minute, denominator = entry
        whole, remainder = divmod(fee + per_minute * billed, denominator)
        if remainder == 0:
            return _EXACT.scaleb(Decimal(whole), -self.decimals)  # nothing to round
        twice = 2 * remainder
        quarter = 1 if twice < denominator else 2 if twice == denominator else 3
        stand_in = _EXACT.scaleb(Decimal((4 * whole + quarter) * 25), -self.decimals - 2)
        return self.quantize(stand_in)

    def max_seconds(
        self,
        table: RateTable,
        number: str,
        budget: Decimal,
        cap: int = MAX_AUTHORIZED_SECONDS,
    ) -> tuple[Rate, int] | None:
        """The longest duration (<= ``cap``) whose charge, rated exactly as ``rate``
        rates it (increments, minimum, connect fee, the one rounding), is at most
        ``budget``; with the entry that rates it. None when no prefix matches.

        The charge only grows with the duration and only changes at whole increments,
        so the answer is a whole number of increments (or the cap). An estimate from
        the unrounded charge brackets it: the rounding moves a charge by less than one
        quantum, so at budget - 1 quantum the count is affordable and past budget + 1
        quantum it is not; a binary search between the two (checked, never trusted,
        at most ~17 ratings for a day of 1 s increments) finds the exact count.
        """
        entry = self._find(table, number)
        if entry is None:
            return None
        rate, fee, per_minute, denominator = entry
        if cap <= 0:
            return rate, 0
        increment = rate.increment_seconds

        def affordable(increments: int) -> bool:
            seconds = min(increments * increment, cap)
            return self.charge_of(entry, rate.billed_seconds(seconds)) <= budget

        top = -(-cap // increment)  # increments that reach the cap
        if affordable(top):
            return rate, cap
        if not affordable(1):
            return rate, 0
        low, high = 1, top  # affordable(low), not affordable(high)
        if per_minute:
            units = Fraction(budget) * 10**self.decimals  # the budget in quanta
            for quanta, bound in ((units - 1, "low"), (units + 1, "high")):
                # Billed seconds whose unrounded charge is `quanta`, in increments.
                seconds = (quanta * denominator - fee) / per_minute
                guess = int(seconds // increment) + (bound == "high")
                if low < guess < high:
                    if affordable(guess):
                        low = guess
                    else:
                        high = guess
        while high - low > 1:
            middle = (low + high) // 2
            if affordable(middle):
                low = middle
            else:
                high = middle
        return rate, min(low * increment, cap)

    def quantize(self, amount: Decimal) -> Decimal:
        """Round ``amount`` to the card's decimals with the card's mode.

        The single rounding rule for every amount the processor stores or
        reports. Idempotent; never returns negative zero. Raises ValueError for
        NaN or infinity. Negative amounts (a balance below zero) round as in
        Python's decimal module: half_up ties and up go away from zero, down
        goes towards zero.
        """
        if not amount.is_finite():
            raise ValueError(f"amount must be finite: {amount!r}")
        result = amount.quantize(self._quantum, rounding=self._rounding, context=_ROUNDING)
        if result.is_zero() and result.is_signed():
            # "-0.0000" would leak into JSON and confuse consumers.
            return self._zero
        return result

    def format(self, amount: Decimal) -> str:
        """``amount`` as a fixed-point string at the card's decimals ("12.3400").

        Quantizes first (a no-op for amounts already at card precision); never
        uses exponent notation, never "-0.0000".
        """
        return format(self.quantize(amount), "f")
