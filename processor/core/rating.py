"""The rate card: parsing, prefix lookup and charge computation.

This module is pure (no Kafka, Faust or metrics) so that the money rules can be
tested exhaustively and reused by tools. The rules are the contract's
(`/work/shared/CONTRACT.md`, "The rate card"):

* the longest matching ``prefix`` of the event's table wins;
* ``increment_seconds`` defaults to 60, ``minimum_seconds`` to ``increment_seconds``,
  ``connect_fee`` to 0;
* for a duration d > 0, billed seconds b = max(minimum_seconds,
  ceil(d / increment_seconds) * increment_seconds) and the charge is
  connect_fee + per_minute * b / 60, rounded once to the card's decimals and mode;
* for d = 0 the charge is 0.

Money never passes through binary floating point: YAML is read with every scalar
kept as a string, floats handed to :func:`parse_rate_card` are refused, and the
charge is computed with exact decimal arithmetic before its single rounding.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping, Sequence
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
from typing import Any, Final

import yaml

from processor.core.money import Unit
from processor.core.values import fast_init

__all__ = [
    "MAX_AUTHORIZED_SECONDS",
    "Charge",
    "Rate",
    "RateCard",
    "RateCardError",
    "RateTable",
    "RoundingMode",
    "example_rate_card_path",
    "load_rate_card",
    "parse_rate_card",
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


_PREFIX_RE: Final = re.compile(r"\+[1-9][0-9]{0,14}")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_INTEGER_RE: Final = re.compile(r"[+-]?[0-9]+")
_DECIMAL_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE_RE: Final = re.compile(r"[+-]?(?:nan|snan|inf|infinity|\.inf|\.nan)", re.IGNORECASE)

MAX_DECIMALS: Final = 12

_TOP_KEYS: Final = frozenset({"currency", "version", "rounding", "tables"})
_ROUNDING_KEYS: Final = frozenset({"decimals", "mode"})
_ENTRY_KEYS: Final = frozenset(
    {"prefix", "per_minute", "increment_seconds", "minimum_seconds", "connect_fee"}
)
_DEFAULT_INCREMENT_SECONDS: Final = 60
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
        if not _PREFIX_RE.fullmatch(self.prefix):
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


@fast_init
@dataclass(frozen=True, slots=True)
class Charge:
    """The rated cost of one usage event.

    ``amount`` is already rounded, once, to the card's decimals and mode; add it
    to/subtract it from balances as is.
    """

    amount: Decimal
    billed_seconds: int
    rate: Rate


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
        if not isinstance(self.currency, str) or not _CURRENCY_RE.fullmatch(self.currency):
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
        return Charge(amount=self._charge(entry, billed), billed_seconds=billed, rate=rate)

    def _charge(self, entry: _Entry, billed: int) -> Decimal:
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
            return self._charge(entry, rate.billed_seconds(seconds)) <= budget

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


def example_rate_card_path() -> pathlib.Path:
    """The example rate card shipped in the package (the default card)."""
    return pathlib.Path(__file__).resolve().parent.parent / "data" / "rate-card.example.yaml"


class _StrictLoader(yaml.BaseLoader):
    """BaseLoader (every scalar a string, so no float ever appears) that also
    rejects duplicate mapping keys, which PyYAML would otherwise silently
    resolve to the last one (a duplicated ``per_minute`` must not pass)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: let PyYAML report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_rate_card(path: str | os.PathLike[str]) -> RateCard:
    """Read and validate a YAML rate card.

    Raises RateCardError for invalid YAML or an invalid card; OSError (e.g.
    FileNotFoundError) propagates unchanged when the file cannot be read.
    """
    source = os.fspath(path)
    text = pathlib.Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - BaseLoader subclass: no tags, no objects
    except yaml.YAMLError as exc:
        raise RateCardError(source, "", f"invalid YAML: {_yaml_problem(exc)}") from exc
    return parse_rate_card(data, source)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's own str() spans several lines with source excerpts; one line with
    # the position reads better in logs.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context}: " if exc.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {context}{exc.problem}"
    return " ".join(str(exc).split())


def parse_rate_card(data: object, source: str = "<rate card>") -> RateCard:
    """Validate a rate card given as plain data (the YAML document).

    Scalars may be strings (as YAML's BaseLoader yields them), ints, or Decimals;
    floats are refused for money. Unknown keys, tables or modes are errors so
    that typos cannot silently fall back to defaults.
    """
    top = _mapping(
        data, source, "", _TOP_KEYS, required=("currency", "version", "rounding", "tables")
    )

    currency = top["currency"]
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        raise RateCardError(
            source, "currency", f"must be 3 uppercase letters (ISO 4217), got {currency!r}"
        )
    version = top["version"]
    if not isinstance(version, str) or not version.strip():
        raise RateCardError(source, "version", f"must be a non-empty string, got {version!r}")

    rounding = _mapping(
        top["rounding"], source, "rounding", _ROUNDING_KEYS, required=("decimals", "mode")
    )
    decimals = _integer(rounding["decimals"], source, "rounding.decimals")
    if not 0 <= decimals <= MAX_DECIMALS:
        raise RateCardError(
            source, "rounding.decimals", f"must be 0..{MAX_DECIMALS}, got {decimals}"
        )
    mode_raw = rounding["mode"]
    try:
        mode = RoundingMode(mode_raw) if isinstance(mode_raw, str) else None
    except ValueError:
        mode = None
    if mode is None:
        choices = " | ".join(m.value for m in RoundingMode)
        raise RateCardError(source, "rounding.mode", f"must be one of {choices}, got {mode_raw!r}")

    tables = top["tables"]
    if not isinstance(tables, Mapping):
        raise RateCardError(source, "tables", f"must be a mapping, got {_kind(tables)}")
    rates: list[Rate] = []
    for name, entries in tables.items():
        try:
            table = RateTable(name)
        except ValueError:
            choices = ", ".join(t.value for t in RateTable)
            raise RateCardError(
                source, f"tables.{name}", f"unknown table (known: {choices})"
            ) from None
        rates.extend(_parse_table(table, entries, source))
    if not rates:
        raise RateCardError(source, "tables", "has no entries; at least one is required")

    return RateCard(
        currency=currency, version=version, decimals=decimals, mode=mode, rates=tuple(rates)
    )


def _parse_table(table: RateTable, entries: object, source: str) -> list[Rate]:
    where = f"tables.{table}"
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
        raise RateCardError(source, where, f"must be a list of entries, got {_kind(entries)}")
    seen: dict[str, int] = {}
    rates: list[Rate] = []
    for i, raw in enumerate(entries):
        location = f"{where}[{i}]"
        if isinstance(raw, Mapping) and isinstance(raw.get("prefix"), str):
            location += f" (prefix {raw['prefix']!r})"
        entry = _mapping(raw, source, location, _ENTRY_KEYS, required=("prefix", "per_minute"))

        prefix = entry["prefix"]
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise RateCardError(
                source,
                location,
                f"prefix: must be '+' then 1 to 15 digits, the first not 0, got {prefix!r}",
            )
        if prefix in seen:
            raise RateCardError(source, location, f"prefix: duplicates {where}[{seen[prefix]}]")
        seen[prefix] = i

        per_minute = _money(entry["per_minute"], source, f"{location}: per_minute")
        connect_fee = (
            _money(entry["connect_fee"], source, f"{location}: connect_fee")
            if "connect_fee" in entry
            else Decimal(0)
        )
        increment = _DEFAULT_INCREMENT_SECONDS
        if "increment_seconds" in entry:
            increment = _integer(
                entry["increment_seconds"], source, f"{location}: increment_seconds"
            )
            if increment <= 0:
                raise RateCardError(
                    source, f"{location}: increment_seconds", f"must be > 0, got {increment}"
                )
        minimum = increment
        if "minimum_seconds" in entry:
            minimum = _integer(entry["minimum_seconds"], source, f"{location}: minimum_seconds")
            if minimum < 0:
                raise RateCardError(
                    source, f"{location}: minimum_seconds", f"must be >= 0, got {minimum}"
                )
        rates.append(
            Rate(
                table=table,
                prefix=prefix,
                per_minute=per_minute,
                increment_seconds=increment,
                minimum_seconds=minimum,
                connect_fee=connect_fee,
            )
        )
    return rates


def _mapping(
    value: object,
    source: str,
    location: str,
    allowed: frozenset[str],
    required: tuple[str, ...],
) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise RateCardError(source, location, f"must be a mapping, got {_kind(value)}")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise RateCardError(
            source,
            location,
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(allowed))})",
        )
    for key in required:
        if key not in value:
            raise RateCardError(source, _join(location, key), "missing (required)")
    return value


def _join(location: str, key: str) -> str:
    return f"{location}: {key}" if location else key


def _integer(value: object, source: str, location: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER_RE.fullmatch(value):
        return int(value)
    raise RateCardError(source, location, f"must be an integer, got {value!r}")


def _money(value: object, source: str, location: str) -> Decimal:
    if isinstance(value, float):
        # Even "0.02" as a float is 0.0200000000000000004163...; refuse rather
        # than guess what was meant.
        raise RateCardError(
            source, location, f"must be a decimal string like '0.0200', not a float ({value!r})"
        )
    if isinstance(value, bool):
        raise RateCardError(source, location, f"must be a decimal number, got {value!r}")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        if _NON_FINITE_RE.fullmatch(value):
            raise RateCardError(source, location, f"must be a finite number, got {value!r}")
        if not _DECIMAL_RE.fullmatch(value):
            raise RateCardError(source, location, f"must be a decimal number, got {value!r}")
        amount = Decimal(value)
    else:
        raise RateCardError(source, location, f"must be a decimal number, got {_kind(value)}")
    if not amount.is_finite():
        raise RateCardError(source, location, f"must be a finite number, got {value!r}")
    if amount < 0:
        raise RateCardError(source, location, f"must not be negative, got {value!r}")
    # "-0" parses to a signed zero; keep stored rates sign-free.
    return amount.copy_abs()


def _kind(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "nothing"
    return type(value).__name__
