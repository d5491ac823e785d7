"""Reading a rate card: the YAML file, and the validation of its plain data.

Pure: no Kafka, Faust or metrics. Money never passes through binary floating point:
YAML is read with every scalar kept as a string, floats handed to
:func:`parse_rate_card` are refused. Every problem is a `RateCardError` naming the
offending entry, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import yaml

from processor.core.rating import (
    CURRENCY_RE,
    MAX_DECIMALS,
    PREFIX_RE,
    Rate,
    RateCard,
    RateCardError,
    RateTable,
    RoundingMode,
)

__all__ = ["example_rate_card_path", "load_rate_card", "parse_rate_card"]

_INTEGER_RE: Final = re.compile(r"[+-]?[0-9]+")
_DECIMAL_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE_RE: Final = re.compile(r"[+-]?(?:nan|snan|inf|infinity|\.inf|\.nan)", re.IGNORECASE)

_TOP_KEYS: Final = frozenset({"currency", "version", "rounding", "tables"})
_ROUNDING_KEYS: Final = frozenset({"decimals", "mode"})
_ENTRY_KEYS: Final = frozenset(
    {"prefix", "per_minute", "increment_seconds", "minimum_seconds", "connect_fee"}
)
_DEFAULT_INCREMENT_SECONDS: Final = 60


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
    if not isinstance(currency, str) or not CURRENCY_RE.fullmatch(currency):
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
        if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
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
