"""Usage: the event the engine rates, the debit it makes, and the account's consumption.

Pure: no Kafka, Faust or metrics. The consumption counts each charged event under its
service in the calendar month (UTC) of its event time, for the newest month seen and
the one before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from processor.core.money import EXACT, ZERO

# The services usage is counted under in the account's consumption, in this order.
SERVICES = (
    "outbound",
    "toll_free_inbound",
    "conferencing_dial_out",
    "conferencing_toll_free_dial_in",
)


@dataclass(init=False, unsafe_hash=True, slots=True)
class UsageEvent:
    """A call or a conference leg, reduced to what rating and de-duplication read.

    Decoded from the contract's CallUsage or ConferenceUsage (processor/kafka/
    usage_wire.py): a native value rather than the pydantic model, since building the
    model is most of a usage record's decode.
    """

    event_id: Final[str]
    tenant_id: Final[str]
    occurred_at: Final[datetime]
    # "call" or "conference": the event's kind in its dedupe key.
    kind: Final[str]
    # call_type or leg_type: which rate table and service the event is charged under.
    usage_type: Final[str]
    # destination_number or number: what is rated.
    number: Final[str]
    duration_seconds: Final[int]

    def __init__(
        self,
        event_id: str,
        tenant_id: str,
        occurred_at: datetime,
        kind: str,
        usage_type: str,
        number: str,
        duration_seconds: int,
    ) -> None:
        self.event_id = event_id
        self.tenant_id = tenant_id
        self.occurred_at = occurred_at
        self.kind = kind
        self.usage_type = usage_type
        self.number = number
        self.duration_seconds = duration_seconds


@dataclass(init=False, unsafe_hash=True, slots=True)
class ServiceUsage:
    events: Final[int]
    billed_seconds: Final[int]
    amount: Final[Decimal]

    def __init__(self, events: int = 0, billed_seconds: int = 0, amount: Decimal = ZERO) -> None:
        self.events = events
        self.billed_seconds = billed_seconds
        self.amount = amount


_NO_USAGE = ServiceUsage()


@dataclass(init=False, unsafe_hash=True, slots=True)
class MonthUsage:
    """One calendar month (UTC, of the usage's event time) of charged usage, per
    service in SERVICES order. `month` is year * 100 + month (202612)."""

    month: Final[int]
    services: Final[tuple[ServiceUsage, ...]]

    def __init__(
        self,
        month: int,
        services: tuple[ServiceUsage, ...] = (_NO_USAGE,) * len(SERVICES),
    ) -> None:
        self.month = month
        self.services = services


@dataclass(init=False, unsafe_hash=True, slots=True)
class Debit:
    amount: Final[Decimal]
    rate_prefix: Final[str]
    rate_per_minute: Final[Decimal]
    billed_seconds: Final[int]
    # One of SERVICES, for the account's consumption (None: not counted).
    service: Final[str | None]

    def __init__(
        self,
        amount: Decimal,
        rate_prefix: str,
        rate_per_minute: Decimal,
        billed_seconds: int,
        service: str | None = None,
    ) -> None:
        self.amount = amount
        self.rate_prefix = rate_prefix
        self.rate_per_minute = rate_per_minute
        self.billed_seconds = billed_seconds
        self.service = service


_SERVICE_INDEX = {name: i for i, name in enumerate(SERVICES)}


def _month_of(at: datetime) -> int:
    if at.utcoffset():
        at = at.astimezone(UTC)
    return at.year * 100 + at.month


def month_before(month: int) -> int:
    year, m = divmod(month, 100)
    return (year - 1) * 100 + 12 if m == 1 else month - 1


def count_usage(
    usage: tuple[MonthUsage, ...], occurred_at: datetime, service: str, debit: Debit
) -> tuple[MonthUsage, ...]:
    """`usage` with one charged event counted in its event time's month (UTC).

    Kept: the newest month seen and the one before it. An event of a later month
    starts a new one (keeping the month before it if that is the newest so far); an
    event older than both months kept is not counted (its debit still is).
    """
    month = _month_of(occurred_at)
    index = _SERVICE_INDEX[service]
    if usage and usage[0].month == month:  # nearly every event: this month's
        return (_add_usage(usage[0], index, debit), *usage[1:])
    for i, kept in enumerate(usage):
        if kept.month == month:
            counted = list(usage)
            counted[i] = _add_usage(kept, index, debit)
            return tuple(counted)
    if not usage or month > usage[0].month:
        new = _add_usage(MonthUsage(month), index, debit)
        if usage and usage[0].month == month_before(month):
            return (new, usage[0])
        return (new,)
    if len(usage) == 1 and month == month_before(usage[0].month):
        return (usage[0], _add_usage(MonthUsage(month), index, debit))
    return usage


def _add_usage(month: MonthUsage, index: int, debit: Debit) -> MonthUsage:
    services = month.services
    old = services[index]
    counted = ServiceUsage(
        old.events + 1,
        old.billed_seconds + debit.billed_seconds,
        EXACT.add(old.amount, debit.amount),
    )
    return MonthUsage(month.month, (*services[:index], counted, *services[index + 1 :]))
