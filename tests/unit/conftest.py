"""Shared factories for the tests of the pure core (processor.core.account/engine).

Inputs are built the way the processor sees them: contract-shaped JSON dicts
(money as strings, RFC 3339 timestamps) validated into the `schemas` models. The
rate card is the contract's example card, parsed with `parse_rate_card`. Nothing
here is autouse, so other test modules in this directory are unaffected.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from processor.core.dedupe import DedupeWindow
from processor.core.engine import Engine, TimerTick
from processor.core.outcome import Outcome
from processor.core.outputs import AlertOut, LedgerOut, Output, RechargeOut
from processor.core.rate_card_parser import parse_rate_card
from processor.core.rating import RateCard
from processor.core.state import Account, RechargePolicy
from processor.core.stored import Position
from processor.core.usage import UsageEvent
from processor.kafka.usage_wire import call_event, conference_event
from schemas import (
    AutoRechargeConfigured,
    CallUsage,
    Command,
    ConferenceUsage,
    FundsAdded,
    RechargeFailed,
)
from schemas.types import format_timestamp

# The contract's example card ("The rate card"), with one extra dial-out entry.
CARD_DATA: dict[str, Any] = {
    "currency": "USD",
    "version": "2026-11",
    "rounding": {"decimals": 4, "mode": "half_up"},
    "tables": {
        "outbound": [
            {"prefix": "+1", "per_minute": "0.0200", "increment_seconds": 60},
            {
                "prefix": "+44",
                "per_minute": "0.0350",
                "increment_seconds": 1,
                "minimum_seconds": 30,
            },
            {
                "prefix": "+447",
                "per_minute": "0.1200",
                "increment_seconds": 1,
                "connect_fee": "0.0100",
            },
        ],
        "toll_free_inbound": [
            {"prefix": "+1800", "per_minute": "0.0190", "increment_seconds": 60},
        ],
        "conferencing_dial_out": [
            {"prefix": "+1", "per_minute": "0.0150", "increment_seconds": 60},
        ],
    },
}
CARD: RateCard = parse_rate_card(CARD_DATA, "contract-card")

# The same tables at 2 decimals in EUR, rounding down: a second precision to check
# that nothing assumes 4 places.
CARD2_DATA: dict[str, Any] = {
    **CARD_DATA,
    "currency": "EUR",
    "version": "two-places",
    "rounding": {"decimals": 2, "mode": "down"},
    "tables": {
        "outbound": [
            {"prefix": "+1", "per_minute": "0.02", "increment_seconds": 60},
            {"prefix": "+44", "per_minute": "0.35", "increment_seconds": 1, "minimum_seconds": 30},
        ],
        "toll_free_inbound": [{"prefix": "+1800", "per_minute": "0.19"}],
        "conferencing_dial_out": [{"prefix": "+1", "per_minute": "0.15"}],
    },
}
CARD2: RateCard = parse_rate_card(CARD2_DATA, "two-places-card")

POLICY = RechargePolicy(
    timeout=timedelta(hours=1), retry_after=timedelta(minutes=15), max_attempts=3
)
DEDUPE = DedupeWindow(days=7)

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

CALLS = "usage.calls"
CONFERENCING = "usage.conferencing"
COMMANDS = "credits.commands"
TIMER = "credits.timer"

TENANT = "acme"

# Numbers the contract card rates (and ones it does not).
US = "+14155550100"  # outbound +1: 0.0200/min, 60 s increments
UK = "+442071234567"  # outbound +44: 0.0350/min per second, 30 s minimum
UK_MOBILE = "+447700900123"  # outbound +447: 0.1200/min per second, 0.0100 connect fee
TOLL_FREE = "+18005550100"  # toll_free_inbound +1800: 0.0190/min
UNRATED = "+33123456789"  # no prefix in any table


def D(value: str) -> Decimal:
    return Decimal(value)


def ts(value: datetime) -> str:
    return format_timestamp(value)


def money(value: Decimal | str) -> str:
    return str(value)


class Inputs:
    """Builds input events from contract-shaped dicts; ids are numbered if omitted."""

    def __init__(self, tenant: str = TENANT, currency: str = "USD") -> None:
        self.tenant = tenant
        self.currency = currency
        self._ids: Iterator[int] = itertools.count(1)

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def call(
        self,
        event_id: str | None = None,
        *,
        duration: int = 60,
        number: str = US,
        call_type: str = "outbound",
        tenant: str | None = None,
        at: datetime = T0,
    ) -> UsageEvent:
        model = CallUsage.model_validate(
            {
                "event_id": event_id or self._id("call"),
                "tenant_id": tenant or self.tenant,
                "occurred_at": ts(at),
                "call_id": "call-" + (event_id or "x"),
                "user_id": "user-1",
                "call_type": call_type,
                "source_number": "+14155550199",
                "destination_number": number,
                "duration_seconds": duration,
            }
        )
        return call_event(model)

    def conference(
        self,
        event_id: str | None = None,
        *,
        duration: int = 60,
        number: str = US,
        leg_type: str = "dial_out",
        tenant: str | None = None,
        at: datetime = T0,
    ) -> UsageEvent:
        model = ConferenceUsage.model_validate(
            {
                "event_id": event_id or self._id("leg"),
                "tenant_id": tenant or self.tenant,
                "occurred_at": ts(at),
                "conference_id": "conf-1",
                "participant_id": "p-1",
                "leg_type": leg_type,
                "number": number,
                "duration_seconds": duration,
            }
        )
        return conference_event(model)

    def funds(
        self,
        amount: str,
        command_id: str | None = None,
        *,
        source: str = "manual",
        request_id: str | None = None,
        currency: str | None = None,
        tenant: str | None = None,
        at: datetime = T0,
        attempt: int | None = None,
    ) -> FundsAdded:
        body: dict[str, Any] = {
            "type": "funds_added",
            "command_id": command_id or self._id("funds"),
            "tenant_id": tenant or self.tenant,
            "occurred_at": ts(at),
            "amount": amount,
            "currency": currency or self.currency,
            "source": source,
        }
        if request_id is not None:
            body["recharge_request_id"] = request_id
        if attempt is not None:
            body["attempt"] = attempt
        return FundsAdded.model_validate(body)

    def auto_funds(
        self, amount: str, request_id: str, command_id: str | None = None, **kw: Any
    ) -> FundsAdded:
        return self.funds(amount, command_id, source="auto_recharge", request_id=request_id, **kw)

    def configure(
        self,
        command_id: str | None = None,
        *,
        enabled: bool = True,
        recharge_amount: str = "50.0000",
        trigger: str = "10.0000",
        tenant: str | None = None,
        at: datetime = T0,
    ) -> AutoRechargeConfigured:
        return AutoRechargeConfigured.model_validate(
            {
                "type": "auto_recharge_configured",
                "command_id": command_id or self._id("settings"),
                "tenant_id": tenant or self.tenant,
                "occurred_at": ts(at),
                "enabled": enabled,
                "recharge_amount": recharge_amount,
                "trigger_balance": trigger,
            }
        )

    def failed(
        self,
        request_id: str,
        command_id: str | None = None,
        *,
        reason: str = "card_declined",
        tenant: str | None = None,
        at: datetime = T0,
        attempt: int | None = None,
    ) -> RechargeFailed:
        body: dict[str, Any] = {
            "type": "recharge_failed",
            "command_id": command_id or self._id("failed"),
            "tenant_id": tenant or self.tenant,
            "occurred_at": ts(at),
            "recharge_request_id": request_id,
            "reason": reason,
        }
        if attempt is not None:
            body["attempt"] = attempt
        return RechargeFailed.model_validate(body)


def make_engine(card: RateCard = CARD, policy: RechargePolicy = POLICY) -> Engine:
    return Engine(card, policy, DEDUPE, {}, {})


class Offsets:
    """Record positions as a consumer sees them: one partition per topic, offsets
    increasing. A re-sent input is a new record at a new offset; a record re-read
    after a crash keeps its old position."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def next(self, topic: str) -> Position:
        tp = f"{topic}:0"
        offset = self._next.get(tp, 0)
        self._next[tp] = offset + 1
        return Position(tp, offset)


@dataclass
class Harness:
    """An Engine with dict stores, a clock, record positions, and every output kept."""

    engine: Engine
    now: datetime = T0
    outcomes: list[Outcome] = field(default_factory=list)
    offsets: Offsets = field(default_factory=Offsets)

    @property
    def outputs(self) -> list[Output]:
        return [out for outcome in self.outcomes for out in outcome.outputs]

    def ledger(self, tenant: str = TENANT) -> list[LedgerOut]:
        return [o for o in self.outputs if isinstance(o, LedgerOut) and o.tenant_id == tenant]

    def alerts(self, tenant: str = TENANT) -> list[AlertOut]:
        return [o for o in self.outputs if isinstance(o, AlertOut) and o.tenant_id == tenant]

    def requests(self, tenant: str = TENANT) -> list[RechargeOut]:
        return [o for o in self.outputs if isinstance(o, RechargeOut) and o.tenant_id == tenant]

    def account(self, tenant: str = TENANT) -> Account:
        return self.engine.accounts[tenant].account

    def find(self, tenant: str = TENANT) -> Account | None:
        stored = self.engine.accounts.get(tenant)
        return stored.account if stored is not None else None

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now

    def usage(self, event: UsageEvent, position: Position | None = None) -> Outcome:
        topic = CALLS if event.kind == "call" else CONFERENCING
        outcome = self.engine.usage(event, topic, self.now, position or self.offsets.next(topic))
        self.outcomes.append(outcome)
        return outcome

    def command(self, cmd: Command, position: Position | None = None) -> Outcome:
        outcome = self.engine.command(
            cmd, COMMANDS, self.now, position or self.offsets.next(COMMANDS)
        )
        self.outcomes.append(outcome)
        return outcome

    def tick(
        self,
        tenant: str = TENANT,
        *,
        request_id: str | None = None,
        attempt: int | None = None,
    ) -> Outcome:
        """A timer tick at the current time, for the tenant's pending request by default."""
        account = self.find(tenant)
        pending = account.pending if account is not None else None
        rid = request_id if request_id is not None else (pending.request_id if pending else "-")
        att = attempt if attempt is not None else (pending.attempt if pending else 1)
        tick = TimerTick(
            tick_id=f"{rid}#{att}@{int(self.now.timestamp())}",
            tenant_id=tenant,
            request_id=rid,
            attempt=att,
            at=self.now,
        )
        outcome = self.engine.timer(tick, TIMER, self.offsets.next(TIMER))
        self.outcomes.append(outcome)
        return outcome


@pytest.fixture
def inputs() -> Inputs:
    return Inputs()


@pytest.fixture
def harness() -> Harness:
    return Harness(make_engine())
