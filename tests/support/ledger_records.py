"""Contract records for the ledger sink's tests and bench: ledger entries whose
`balance_after` chains per tenant, recharge requests, and billing's answers.

Every value is built through the `schemas` models, so it is what a worker writes.
"""

from __future__ import annotations

import decimal
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.outputs import LedgerEntry, RechargeRequested
from schemas.types import format_timestamp

__all__ = ["LedgerStream", "funds_added_auto", "recharge_failed", "recharge_request"]

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@dataclass
class LedgerStream:
    """Ledger entries for `tenants` tenants, each tenant's balance chained."""

    tenants: int = 10
    seed: int = 7
    prefix: str = ""
    balances: dict[str, Decimal] = field(default_factory=dict)
    _n: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def tenant(self, i: int) -> str:
        return f"tenant-{i:04d}"

    def entry(
        self,
        tenant: str | None = None,
        *,
        kind: str | None = None,
        amount: Decimal | None = None,
        occurred_at: datetime | None = None,
        cause_topic: str | None = None,
        cause_id: str | None = None,
    ) -> LedgerEntry:
        rng = self._rng
        self._n += 1
        tenant = tenant or self.tenant(rng.randrange(self.tenants))
        kind = kind or ("credit" if rng.random() < 0.1 else "debit")
        if amount is None:
            cents = rng.randrange(1, 500_000) if kind == "credit" else rng.randrange(1, 20_000)
            amount = Decimal(cents).scaleb(-4)
        before = self.balances.get(tenant, Decimal("0.0000"))
        with decimal.localcontext(prec=80):  # exact, like the processor's balances
            # A debit and an expiry take from the balance.
            after = before + amount if kind == "credit" else before - amount
        self.balances[tenant] = after
        when = occurred_at or T0 + timedelta(minutes=self._n)
        debit = kind == "debit"
        topic = cause_topic or (
            f"{self.prefix}usage.{'calls' if self._n % 4 else 'conferencing'}"
            if debit
            else f"{self.prefix}credits.commands"
        )
        billed = rng.randrange(1, 3600)
        return LedgerEntry(
            entry_id=f"{tenant}:e{self._n}",
            tenant_id=tenant,
            # arg-type: kinds given as plain strings, validated by the model
            kind=kind,  # type: ignore[arg-type]
            amount=amount,
            currency="USD",
            balance_after=after,
            cause_topic=topic,
            cause_id=cause_id or f"cause-{self._n}",
            occurred_at=when,
            recorded_at=when + timedelta(seconds=1),
            rate_prefix="+447" if debit else None,
            rate_per_minute=Decimal("0.1200") if debit else None,
            billed_seconds=billed if debit else None,
        )

    def expiry(self, credit: LedgerEntry, amount: Decimal | None = None) -> LedgerEntry:
        """The `expiry` entry of the lot `credit` opened: what is left of it (all of it
        by default) leaves the balance; its cause is the credit entry."""
        return self.entry(
            credit.tenant_id,
            kind="expiry",
            amount=credit.amount if amount is None else amount,
            cause_topic=f"{self.prefix}credits.ledger",
            cause_id=credit.entry_id,
        )

    def entries(self, count: int) -> Iterator[LedgerEntry]:
        for _ in range(count):
            yield self.entry()


def recharge_request(tenant: str, request_id: str, attempt: int = 1) -> bytes:
    return RechargeRequested(
        request_id=request_id,
        tenant_id=tenant,
        amount=Decimal("25.00"),
        currency="USD",
        trigger_balance=Decimal("5.00"),
        balance=Decimal("4.9900"),
        attempt=attempt,
        requested_at=T0,
    ).to_json()


def _command(**fields: Any) -> bytes:
    return json.dumps({"occurred_at": format_timestamp(T0), **fields}).encode()


def funds_added_auto(
    tenant: str, command_id: str, request_id: str, attempt: int | None = 1
) -> bytes:
    extra = {} if attempt is None else {"attempt": attempt}
    return _command(
        type="funds_added",
        command_id=command_id,
        tenant_id=tenant,
        amount="25.00",
        currency="USD",
        source="auto_recharge",
        recharge_request_id=request_id,
        **extra,
    )


def recharge_failed(tenant: str, command_id: str, request_id: str, attempt: int = 1) -> bytes:
    return _command(
        type="recharge_failed",
        command_id=command_id,
        tenant_id=tenant,
        recharge_request_id=request_id,
        reason="card declined",
        attempt=attempt,
    )
