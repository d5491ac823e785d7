"""Wire bodies of input events and commands, as a producer would send them (JSON dicts).

One copy for every test that writes records to Kafka or feeds the worker raw bodies;
a test file binds its own constants once, e.g. `call = partial(events.call, at=NOW)`.
Everything after the id is a keyword, so a call site says what it varies. The pydantic
builders for the domain core are the `events` fixture in tests/unit/conftest.py;
`usage_event` turns a validated usage model into what the engine rates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from processor.core.usage import UsageEvent
from processor.kafka.usage_wire import call_event, conference_event
from schemas import CallUsage, ConferenceUsage
from schemas.types import format_timestamp

TENANT = "acme"
SOURCE = "+14155550100"
UK_MOBILE = "+447700900123"  # 0.0100 setup + 0.1200/min, per second after the first minute
CONFERENCE_NUMBER = "+14155550111"


def now_rfc3339() -> str:
    """The time now as an event's occurred_at: a worker refuses event times older than
    METER_DEDUPE_DAYS (too_old) or ahead of its clock, so tests stamp events with now."""
    return format_timestamp(datetime.now(UTC).replace(microsecond=0))


def usage_event(model: CallUsage | ConferenceUsage) -> UsageEvent:
    """The engine's view of a usage model, as the worker decodes it."""
    return call_event(model) if isinstance(model, CallUsage) else conference_event(model)


def call(
    event_id: str,
    *,
    tenant: str = TENANT,
    seconds: int = 61,
    dest: str = UK_MOBILE,
    at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An outbound call's usage event; `at` defaults to now (see `now_rfc3339`)."""
    return {
        "event_id": event_id,
        "tenant_id": tenant,
        "occurred_at": at if at is not None else now_rfc3339(),
        "call_id": f"call-{event_id}",
        "call_type": "outbound",
        "source_number": SOURCE,
        "destination_number": dest,
        "duration_seconds": seconds,
        **extra,
    }


def conference(
    event_id: str,
    *,
    seconds: int,
    tenant: str = TENANT,
    number: str = CONFERENCE_NUMBER,
    at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A dial-out conference leg's usage event; `at` defaults to now."""
    return {
        "event_id": event_id,
        "tenant_id": tenant,
        "occurred_at": at if at is not None else now_rfc3339(),
        "conference_id": "conf-1",
        "leg_type": "dial_out",
        "number": number,
        "duration_seconds": seconds,
        **extra,
    }


def funds(
    command_id: str,
    *,
    amount: str,
    tenant: str = TENANT,
    currency: str = "USD",
    at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A manual `funds_added` command; `extra` adds or overrides fields; `at` defaults to now."""
    return {
        "type": "funds_added",
        "command_id": command_id,
        "tenant_id": tenant,
        "occurred_at": at if at is not None else now_rfc3339(),
        "amount": amount,
        "currency": currency,
        "source": "manual",
        **extra,
    }
