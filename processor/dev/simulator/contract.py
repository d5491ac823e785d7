"""The contract's topics, rejection reasons and value formats, as the simulated systems use them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, Literal

# Unprefixed topic names, exactly as in CONTRACT.md.
USAGE_CALLS: Final = "usage.calls"
USAGE_CONFERENCING: Final = "usage.conferencing"
COMMANDS: Final = "credits.commands"
RECHARGE_REQUESTS: Final = "credits.recharge-requests"
ALERTS: Final = "credits.alerts"  # telephony's call gate reads the status alerts
SIMULATOR_TOPICS: Final = (USAGE_CALLS, USAGE_CONFERENCING, COMMANDS, RECHARGE_REQUESTS)

BILLING_GROUP_ID: Final = "credits-meter-simulator-billing"

CENT: Final = Decimal("0.01")

# Kinds of bad record the simulator sends, and the rejection reason an operator
# should find for each in credits.rejected (the processor may use a finer code for
# the invalid_event ones; these are the contract's codes).
GarbageKind = Literal[
    "truncated_json",
    "invalid_utf8",
    "missing_field",
    "negative_duration",
    "unknown_call_type",
    "bad_number",
    "no_rate",
    "currency_mismatch",
]
GARBAGE_KINDS: Final[tuple[GarbageKind, ...]] = (
    "truncated_json",
    "invalid_utf8",
    "missing_field",
    "negative_duration",
    "unknown_call_type",
    "bad_number",
    "no_rate",
    "currency_mismatch",
)
EXPECTED_REJECT_REASON: Final[Mapping[GarbageKind, str]] = {
    "truncated_json": "invalid_json",
    "invalid_utf8": "invalid_json",
    "missing_field": "invalid_event",
    "negative_duration": "invalid_event",
    "unknown_call_type": "invalid_event",
    "bad_number": "invalid_event",
    "no_rate": "no_rate",
    "currency_mismatch": "currency_mismatch",
}

# +999 is an unassigned country code, so no rate card can price it.
NO_RATE_PREFIX: Final = "+999"

FAILURE_REASONS: Final = (
    "card_declined",
    "insufficient_funds",
    "expired_card",
    "payment_method_missing",
    "processor_unavailable",
)


# --------------------------------------------------------------------------- time


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(ts: datetime) -> str:
    """RFC 3339 in UTC with a "Z", millisecond precision (what telephony CDRs carry)."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def money(value: Decimal) -> str:
    """Two-decimal string: admins and billing deal in cents, never in floats."""
    return format(value.quantize(CENT), "f")


def cents(amount: int) -> Decimal:
    return (Decimal(amount) / 100).quantize(CENT)
