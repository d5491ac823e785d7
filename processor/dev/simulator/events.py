"""The records telephony, conferencing, admins and billing send, good and deliberately bad."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from processor.dev.simulator.contract import (
    COMMANDS,
    NO_RATE_PREFIX,
    USAGE_CALLS,
    USAGE_CONFERENCING,
    GarbageKind,
    money,
    rfc3339,
)
from processor.dev.simulator.phones import (
    CONFERENCE_DIAL_OUT_COUNTRIES,
    random_destination,
    random_digits,
)
from processor.dev.simulator.tenants import AutoRecharge, TenantProfile
from processor.kafka.wire import dumps


def _duration(rng: random.Random, *, unanswered: float, median: float) -> int:
    if rng.random() < unanswered:
        return 0
    # Log-normal: many calls of a few minutes and a long tail, capped at an hour.
    return max(1, min(3600, round(rng.lognormvariate(math.log(median), 1.0))))


def _hex_id(rng: random.Random, bits: int = 64) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


CallType = Literal["outbound", "toll_free_inbound"]
LegType = Literal["dial_out", "toll_free_dial_in"]


def make_call_usage(
    tenant: TenantProfile,
    rng: random.Random,
    now: datetime,
    event_id: str,
    call_type: CallType | None = None,
) -> dict[str, Any]:
    """A ``CallUsage`` (usage.calls): mostly outbound, some to the tenant's toll-free lines."""
    if call_type is None:
        call_type = "outbound" if rng.random() < 0.88 else "toll_free_inbound"
    event: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant.tenant_id,
        "occurred_at": rfc3339(now),
        "call_id": "call-" + _hex_id(rng, 96),
    }
    if call_type == "outbound":
        if rng.random() < 0.8:  # trunk calls carry no user
            event["user_id"] = f"u{rng.randint(1000, 1999)}"
        event["call_type"] = "outbound"
        event["source_number"] = rng.choice(tenant.dids)
        event["destination_number"] = random_destination(rng, tenant.home)
        event["duration_seconds"] = _duration(rng, unanswered=0.15, median=120.0)
    else:
        event["call_type"] = "toll_free_inbound"
        event["source_number"] = random_destination(rng, tenant.home)
        event["destination_number"] = rng.choice(tenant.toll_free)
        # Callers to a toll-free line hang up unanswered less often (IVR picks up).
        event["duration_seconds"] = _duration(rng, unanswered=0.05, median=240.0)
    return event


def make_conference_usage(
    tenant: TenantProfile,
    rng: random.Random,
    now: datetime,
    event_id: str,
    leg_type: LegType | None = None,
) -> dict[str, Any]:
    """A ``ConferenceUsage`` (usage.conferencing) leg."""
    if leg_type is None:
        leg_type = "dial_out" if rng.random() < 0.6 else "toll_free_dial_in"
    event: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant.tenant_id,
        "occurred_at": rfc3339(now),
        # A small pool per tenant, so several legs share a conference.
        "conference_id": f"conf-{tenant.tenant_id}-{rng.randint(1, 40):03d}",
    }
    if rng.random() < 0.7:
        event["participant_id"] = "p-" + _hex_id(rng, 32)
    event["leg_type"] = leg_type
    if leg_type == "dial_out":
        event["number"] = random_destination(rng, tenant.home, CONFERENCE_DIAL_OUT_COUNTRIES)
        event["duration_seconds"] = _duration(rng, unanswered=0.1, median=600.0)
    else:
        event["number"] = rng.choice(tenant.toll_free)
        event["duration_seconds"] = _duration(rng, unanswered=0.02, median=900.0)
    return event


def make_funds_added(
    tenant_id: str,
    amount: Decimal | str,
    currency: str,
    now: datetime,
    command_id: str,
    *,
    source: Literal["manual", "auto_recharge"] = "manual",
    recharge_request_id: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    # A str amount is passed through untouched: billing echoes the request's amount.
    command: dict[str, Any] = {
        "type": "funds_added",
        "command_id": command_id,
        "tenant_id": tenant_id,
        "occurred_at": rfc3339(now),
        "amount": amount if isinstance(amount, str) else money(amount),
        "currency": currency,
        "source": source,
    }
    if source == "auto_recharge":
        if recharge_request_id is None:
            raise ValueError("auto_recharge funds need the recharge_request_id")
        command["recharge_request_id"] = recharge_request_id
        if attempt is not None:
            command["attempt"] = attempt
    return command


def make_auto_recharge_configured(
    tenant_id: str, settings: AutoRecharge, now: datetime, command_id: str
) -> dict[str, Any]:
    return {
        "type": "auto_recharge_configured",
        "command_id": command_id,
        "tenant_id": tenant_id,
        "occurred_at": rfc3339(now),
        "enabled": settings.enabled,
        "recharge_amount": money(settings.recharge_amount),
        "trigger_balance": money(settings.trigger_balance),
    }


def make_recharge_failed(
    tenant_id: str,
    recharge_request_id: str,
    reason: str,
    now: datetime,
    command_id: str,
    attempt: int | None = None,
) -> dict[str, Any]:
    command: dict[str, Any] = {
        "type": "recharge_failed",
        "command_id": command_id,
        "tenant_id": tenant_id,
        "occurred_at": rfc3339(now),
        "recharge_request_id": recharge_request_id,
        "reason": reason,
    }
    if attempt is not None:
        # Which attempt failed: a late answer can then never fail a later attempt.
        command["attempt"] = attempt
    return command


def encode(value: Mapping[str, Any]) -> bytes:
    # Compact: the bench holds a million of these before producing them.
    return dumps(value)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce; ``topic`` is unprefixed (the prefix is applied on send)."""

    topic: str
    key: bytes | None
    value: bytes


def make_garbage(
    kind: GarbageKind,
    tenant: TenantProfile,
    rng: random.Random,
    now: datetime,
    event_id: str,
    currency: str = "USD",
) -> OutRecord:
    """A record the processor must route to credits.rejected (see EXPECTED_REJECT_REASON)."""
    key = tenant.tenant_id.encode()
    if kind == "currency_mismatch":
        wrong = "EUR" if currency != "EUR" else "GBP"
        cmd = make_funds_added(tenant.tenant_id, Decimal("25.00"), wrong, now, event_id)
        return OutRecord(COMMANDS, key, encode(cmd))
    if kind == "no_rate" and rng.random() < 0.3:
        leg = make_conference_usage(tenant, rng, now, event_id, "dial_out")
        leg["number"] = NO_RATE_PREFIX + random_digits(rng, rng.randint(6, 9))
        return OutRecord(USAGE_CONFERENCING, key, encode(leg))
    call = make_call_usage(tenant, rng, now, event_id, "outbound")
    if kind == "truncated_json":
        raw = encode(call)
        # Any strict prefix of a JSON object lacks its closing brace: never parseable.
        return OutRecord(USAGE_CALLS, key, raw[: rng.randint(1, len(raw) - 1)])
    if kind == "invalid_utf8":
        # A lone continuation byte and an overlong lead: invalid in any UTF-8 decoder.
        raw = encode(call).replace(
            tenant.tenant_id.encode(), tenant.tenant_id.encode() + b"\x80\xc0", 1
        )
        return OutRecord(USAGE_CALLS, key, raw)
    if kind == "missing_field":
        required = ("event_id", "occurred_at", "call_id", "call_type",
                    "source_number", "destination_number", "duration_seconds")  # fmt: skip
        del call[rng.choice(required)]
    elif kind == "negative_duration":
        call["duration_seconds"] = -5
    elif kind == "unknown_call_type":
        call["call_type"] = rng.choice(("inbound", "video", "sms", "OUTBOUND"))
    elif kind == "bad_number":
        # National format without "+", or a leading zero after it: not E.164.
        call["destination_number"] = rng.choice(("0044", "+0", "00", "+44 ")) + random_digits(
            rng, 9
        )
    elif kind == "no_rate":
        call["destination_number"] = NO_RATE_PREFIX + random_digits(rng, rng.randint(6, 9))
    else:  # pragma: no cover - Literal is exhaustive
        raise ValueError(f"unknown garbage kind {kind!r}")
    return OutRecord(USAGE_CALLS, key, encode(call))
