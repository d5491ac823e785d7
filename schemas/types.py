"""Field types shared by every event model (CONTRACT.md, "Encoding").

Each type is an ``Annotated`` alias, so models read like the contract tables and a
rule lives in exactly one place. The validators here run on the hot path (every
usage event), so they are plain functions over precompiled regexes: no per-call
allocation of adapters or patterns.

Pattern strings are written for both engines that see them: pydantic-core's Rust
regex (validation) and ECMA-262 (consumers of the published JSON Schema). That is
why they spell digits as ``[0-9]`` (Rust's ``\\d`` is any Unicode digit).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StringConstraints,
    WithJsonSchema,
)

__all__ = [
    "CURRENCY_PATTERN",
    "E164",
    "E164_PATTERN",
    "ID_PATTERN",
    "MAX_AMOUNT",
    "MAX_FRACTION_DIGITS",
    "MAX_INTEGER_DIGITS",
    "MONEY_PATTERN",
    "OUTPUT_ID_PATTERN",
    "RATE_PREFIX_PATTERN",
    "REASON_CODE_PATTERN",
    "TENANT_ID_PATTERN",
    "TIMESTAMP_PATTERN",
    "UNSIGNED_MONEY_PATTERN",
    "CommandId",
    "Currency",
    "DetailText",
    "DurationSeconds",
    "EventId",
    "ExternalId",
    "Money",
    "NonNegativeAmount",
    "NonNegativeMoney",
    "OptionalText",
    "OutputId",
    "PositiveAmount",
    "PositiveMoney",
    "RatePrefix",
    "Reason",
    "ReasonCode",
    "RequestId",
    "StrictBool",
    "TenantId",
    "Timestamp",
    "TopicName",
    "WireText",
    "format_money",
    "format_timestamp",
    "parse_money",
    "parse_timestamp",
    "scrub_text",
]

# The limits of the input fields, named once for the patterns and types below and for
# the worker's own reading of usage records (processor/kafka/usage_wire.py).
MAX_TENANT_ID_LENGTH: Final = 64
MAX_ID_LENGTH: Final = 128
MAX_EXTERNAL_ID_LENGTH: Final = 256
MAX_TEXT_LENGTH: Final = 128
MAX_E164_DIGITS: Final = 15
MAX_DURATION_SECONDS: Final = 86_400

TENANT_ID_PATTERN: Final = rf"^[A-Za-z0-9._:-]{{1,{MAX_TENANT_ID_LENGTH}}}$"
# 0x20-0x7E written as a range so ECMA and Rust read it the same way.
ID_PATTERN: Final = rf"^[ -~]{{1,{MAX_ID_LENGTH}}}$"
# Ids the processor derives (entry_id, alert_id, ...) may embed a tenant id and an
# event id, so they get more room than the ids producers send.
OUTPUT_ID_PATTERN: Final = r"^[ -~]{1,256}$"
E164_PATTERN: Final = rf"^\+[1-9][0-9]{{1,{MAX_E164_DIGITS - 1}}}$"
# A rate-card prefix may be shorter than a full number ("+1").
RATE_PREFIX_PATTERN: Final = r"^\+[0-9]{1,15}$"
CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"

MAX_INTEGER_DIGITS: Final = 18
MAX_FRACTION_DIGITS: Final = 12
MONEY_PATTERN: Final = rf"^-?[0-9]{{1,{MAX_INTEGER_DIGITS}}}(\.[0-9]{{1,{MAX_FRACTION_DIGITS}}})?$"
# The largest single amount of money a command may move (funds, recharge amount).
MAX_AMOUNT: Final = Decimal(1_000_000)

# RFC 3339 date-time with a mandatory offset. "T"/"Z" are case-insensitive per
# RFC 3339 section 5.6; fractions beyond microseconds are accepted and truncated.
TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)

# fullmatch() rather than "$": Python's "$" also matches before a trailing newline.
_MONEY_RE: Final = re.compile(MONEY_PATTERN.removeprefix("^").removesuffix("$"))
_TIMESTAMP_RE: Final = re.compile(TIMESTAMP_PATTERN.removeprefix("^").removesuffix("$"))

# Outside this window a timestamp is garbage for a billing system, and staying well
# inside datetime's range means converting offsets or adding dedupe windows
# (days, years) can never overflow.
_MIN_TIMESTAMP: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIMESTAMP: Final = datetime(9000, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- money


_MONEY_SHAPE: Final = (
    "must be a decimal number in a JSON string, like \"50.00\": optional '-', "
    f"at most {MAX_INTEGER_DIGITS} integer and {MAX_FRACTION_DIGITS} fraction digits, "
    "no exponent, no '+', no spaces"
)


def parse_money(value: Any) -> Decimal:
    """A contract money value: a JSON string holding a plain decimal number.

    JSON numbers are refused outright: a producer sending ``50.1`` has already been
    through binary floating point, and accepting it would hide that. Decimal
    instances pass (Python-side construction) when they fit the same shape.
    """
    if type(value) is str:
        if _MONEY_RE.fullmatch(value) is None:
            raise ValueError(_MONEY_SHAPE)
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        # Same digit limits as the text form; also refuses NaN and infinities.
        if not value.is_finite() or _MONEY_RE.fullmatch(format(value, "f")) is None:
            raise ValueError(f"{_MONEY_SHAPE} (got Decimal {value})")
        amount = value
    elif isinstance(value, bool | int | float):
        kind = "boolean" if isinstance(value, bool) else "number"
        raise ValueError(f'must be a decimal number in a JSON string, like "50.00", not a {kind}')
    else:
        raise ValueError('must be a decimal number in a JSON string, like "50.00"')
    # "-0.00" is zero; normalise it here so no output can ever print a signed zero.
    if amount.is_zero() and amount.is_signed():
        amount = amount.copy_abs()
    return amount


def format_money(value: Decimal) -> str:
    """Fixed-point text, exactly at the value's own precision: never "1E+3", never "-0"."""
    if value.is_zero():
        value = value.copy_abs()
    # str() writes fixed-point text unless the exponent is positive or the value tiny,
    # and is several times faster than format(); only those go through format().
    text = str(value)
    return text if "E" not in text else format(value, "f")


def _money_validator(
    *, gt: Decimal | None = None, ge: Decimal | None = None, le: Decimal | None = None
) -> Callable[[Any], Decimal]:
    # One Python call per value, bounds included: pydantic's own decimal constraints
    # stacked behind a before-validator cost several times more on the hot path.
    def validate(value: Any) -> Decimal:
        amount = parse_money(value)
        if gt is not None and not amount > gt:
            raise ValueError(f"must be greater than {gt}")
        if ge is not None and not amount >= ge:
            raise ValueError(f"must be at least {ge}")
        if le is not None and not amount <= le:
            raise ValueError(f"must be at most {le}")
        return amount

    return validate


# Published for amounts that cannot be negative; validation still goes through
# MONEY_PATTERN so that "-5" is reported as "must be greater than 0", not as a typo.
UNSIGNED_MONEY_PATTERN: Final = MONEY_PATTERN.replace("^-?", "^", 1)


def _money_json_schema(description: str, *, signed: bool = False) -> WithJsonSchema:
    pattern = MONEY_PATTERN if signed else UNSIGNED_MONEY_PATTERN
    return WithJsonSchema({"type": "string", "pattern": pattern, "description": description})


_SERIALIZE_MONEY: Final = PlainSerializer(format_money, return_type=str, when_used="json")
_ZERO: Final = Decimal(0)

Money = Annotated[
    Decimal,
    PlainValidator(_money_validator()),
    _SERIALIZE_MONEY,
    _money_json_schema('Decimal number as a string, e.g. "50.00"; may be negative.', signed=True),
]
"""Any money value (balances may be negative)."""

PositiveAmount = Annotated[
    Decimal,
    PlainValidator(_money_validator(gt=_ZERO, le=MAX_AMOUNT)),
    _SERIALIZE_MONEY,
    _money_json_schema(
        'Decimal number as a string, e.g. "50.00"; greater than 0 and at most 1000000.'
    ),
]
"""Money moved by one command: > 0 and <= MAX_AMOUNT."""

NonNegativeAmount = Annotated[
    Decimal,
    PlainValidator(_money_validator(ge=_ZERO, le=MAX_AMOUNT)),
    _SERIALIZE_MONEY,
    _money_json_schema('Decimal number as a string, e.g. "10.00"; at least 0 and at most 1000000.'),
]
"""A threshold such as trigger_balance: >= 0 and <= MAX_AMOUNT."""

# Outputs are computed, not accepted, so they carry sign rules but no MAX_AMOUNT cap
# (a long call at a high rate can legitimately cost more than one top-up).
PositiveMoney = Annotated[
    Decimal,
    PlainValidator(_money_validator(gt=_ZERO)),
    _SERIALIZE_MONEY,
    _money_json_schema('Decimal number as a string, e.g. "0.0245"; greater than 0.'),
]
NonNegativeMoney = Annotated[
    Decimal,
    PlainValidator(_money_validator(ge=_ZERO)),
    _SERIALIZE_MONEY,
    _money_json_schema('Decimal number as a string, e.g. "0.0200"; at least 0.'),
]


# ---------------------------------------------------------------------- timestamps


def parse_timestamp(value: Any) -> datetime:
    """An RFC 3339 string with an offset (or an aware datetime), returned in UTC.

    Epoch numbers and naive times are refused: the contract requires an offset, and
    guessing the zone of a naive time would silently shift event time.
    """
    if type(value) is str:
        if _TIMESTAMP_RE.fullmatch(value) is None:
            raise ValueError(
                'must be an RFC 3339 timestamp with an offset, like "2026-11-23T10:00:00Z"'
            )
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise ValueError(f"is not a valid date and time ({exc})") from None
    elif isinstance(value, datetime):
        parsed = value
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("must be timezone-aware (naive datetimes are refused)")
    else:
        raise ValueError(
            'must be an RFC 3339 timestamp string with an offset, like "2026-11-23T10:00:00Z"'
        )
    if parsed.tzinfo is not UTC:  # "Z" already parses to UTC itself; skip the copy
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range") from None
    if not _MIN_TIMESTAMP <= parsed < _MAX_TIMESTAMP:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z")
    return parsed


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with "Z"; microseconds only when non-zero."""
    if value.tzinfo is not UTC:
        if value.utcoffset() is None:
            # astimezone() would silently read a naive time as the host's local time.
            raise ValueError("cannot format a naive datetime as RFC 3339")
        value = value.astimezone(UTC)
    return value.isoformat()[:-6] + "Z"


Timestamp = Annotated[
    datetime,
    PlainValidator(parse_timestamp),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}),
]
"""Aware datetime, normalised to UTC on input; RFC 3339 "...Z" text on output."""


# ------------------------------------------------------------------ ids and text

TenantId = Annotated[str, Strict(), StringConstraints(pattern=TENANT_ID_PATTERN)]
EventId = Annotated[str, Strict(), StringConstraints(pattern=ID_PATTERN)]
CommandId = EventId
RequestId = EventId
OutputId = Annotated[str, Strict(), StringConstraints(pattern=OUTPUT_ID_PATTERN)]
# Added: who caused a command (a token's `sub`, `admin-token` for the static token).
Actor = Annotated[str, Strict(), StringConstraints(pattern=ID_PATTERN)]
E164 = Annotated[str, Strict(), StringConstraints(pattern=E164_PATTERN)]
RatePrefix = Annotated[str, Strict(), StringConstraints(pattern=RATE_PREFIX_PATTERN)]
Currency = Annotated[str, Strict(), StringConstraints(pattern=CURRENCY_PATTERN)]

# call_id / conference_id: the contract only says "string"; telephony ids (SIP
# Call-ID and the like) are free-form, so any non-empty text of sane length.
ExternalId = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=MAX_EXTERNAL_ID_LENGTH)
]
# Informational optional fields (user_id, participant_id). Empty is tolerated: a
# billing event must not be rejected over a blank label.
OptionalText = Annotated[str, Strict(), StringConstraints(max_length=MAX_TEXT_LENGTH)]
Reason = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1000)]
# Kafka caps topic names at 249 characters.
TopicName = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=249)]

REASON_CODE_PATTERN: Final = r"^[a-z0-9_]{1,64}$"
ReasonCode = Annotated[str, Strict(), StringConstraints(pattern=REASON_CODE_PATTERN)]

_MAX_DETAIL_TEXT: Final = 2000


def scrub_text(value: str) -> str:
    """Text that any UTF-8 encoder accepts, clipped to a sane size.

    Details can quote arbitrary input; a lone surrogate in one would make the
    rejected record itself unserialisable, which must never stop the processor.
    """
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) > _MAX_DETAIL_TEXT:
        value = value[: _MAX_DETAIL_TEXT - 3] + "..."
    return value


# Truncated rather than refused: building a RejectedRecord must not fail.
DetailText = Annotated[str, Strict(), AfterValidator(scrub_text)]


def _require_utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be encodable as UTF-8 (no lone surrogates)") from None
    return value


# Free text copied into an output record; refused at construction if no JSON
# encoder could write it, instead of failing later inside the producer.
WireText = Annotated[str, Strict(), AfterValidator(_require_utf8)]

DurationSeconds = Annotated[int, Strict(), Field(ge=0, le=MAX_DURATION_SECONDS)]
StrictBool = Annotated[bool, Strict()]


def check_recharge_target(mode: str, target_balance: Decimal | None, trigger: Decimal) -> None:
    """Recharge-to-target needs a target above the trigger (a command and the admin
    API's request alike); raises ValueError, which pydantic reports as the model's."""
    if mode == "to_target":
        if target_balance is None:
            raise ValueError("target_balance is required when mode is to_target")
        if target_balance <= trigger:
            raise ValueError("target_balance must be above trigger_balance")


# The settings a partial auto-recharge change may name.
AUTO_RECHARGE_SETTINGS: Final = (
    "enabled",
    "recharge_amount",
    "trigger_balance",
    "mode",
    "target_balance",
)


def check_settings_named(given: set[str], values: object) -> None:
    """A partial auto-recharge change (a command and the admin PATCH alike) names at
    least one setting, and never a null one but target_balance; raises ValueError."""
    named = [name for name in AUTO_RECHARGE_SETTINGS if name in given]
    if not named:
        raise ValueError(
            "name at least one of enabled, recharge_amount, trigger_balance, mode, target_balance"
        )
    for name in named:
        if name != "target_balance" and getattr(values, name) is None:
            raise ValueError(f"{name} may not be null (only target_balance may be cleared)")


def check_limits_named(given: set[str], credit_limit: Decimal | None) -> None:
    """Limits settings (a command and the admin API's request alike) name at least one
    limit, and never a null credit limit; raises ValueError."""
    if "credit_limit" not in given and "notify_below" not in given:
        raise ValueError("name credit_limit, notify_below or both")
    if "credit_limit" in given and credit_limit is None:
        raise ValueError("credit_limit may not be null (0 is no credit)")
