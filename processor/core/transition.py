"""One transition of an account: its cause, the builder that collects its outputs in
order, and its result.

Pure: no Kafka, Faust or metrics. Every balance change goes through
`Builder.move_balance`: exactly one ledger entry, then the alerts it crosses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

from processor.core.money import EXACT
from processor.core.outputs import (
    AlertKind,
    AlertOut,
    LedgerOut,
    Output,
    RechargeOut,
    derive_id,
)
from processor.core.state import Account, Lot, PendingRecharge, RechargeStatus
from processor.core.usage import Debit, MonthUsage
from processor.core.values import replace


@dataclass(init=False, unsafe_hash=True, slots=True)
class Cause:
    """What made a transition happen: the input record, or a timer firing."""

    topic: Final[str]
    id: Final[str]
    occurred_at: Final[datetime]
    # Who sent the command (its `actor`), carried into the ledger entry.
    actor: Final[str | None]

    def __init__(
        self,
        topic: str,
        id: str,
        occurred_at: datetime,
        actor: str | None = None,
    ) -> None:
        self.topic = topic
        self.id = id
        self.occurred_at = occurred_at
        self.actor = actor


@dataclass(init=False, unsafe_hash=True, slots=True)
class Transition:
    account: Final[Account]
    outputs: Final[tuple[Output, ...]]
    # Why nothing happened, when nothing did (a stale answer, a timer for a request
    # that has moved on); None when the input took effect.
    ignored: Final[str | None]
    changed: Final[bool]
    # What became of a recharge request in this transition, for metrics: fulfilled,
    # failed, timed_out, suspended, dropped.
    recharge: Final[tuple[str, ...]]

    def __init__(
        self,
        account: Account,
        outputs: tuple[Output, ...] = (),
        ignored: str | None = None,
        changed: bool = True,
        recharge: tuple[str, ...] = (),
    ) -> None:
        self.account = account
        self.outputs = outputs
        self.ignored = ignored
        self.changed = changed
        self.recharge = recharge


@dataclass(init=False, slots=True)
class Builder:
    """Collects the outputs of one transition in the order consumers expect."""

    account: Account
    cause: Cause
    now: Final[datetime]
    outputs: Final[list[Output]]
    recharge: Final[list[str]]

    def __init__(self, account: Account, cause: Cause, now: datetime) -> None:
        self.account = account
        self.cause = cause
        self.now = now
        self.outputs = []
        self.recharge = []

    def alert(
        self,
        kind: AlertKind,
        tag: str = "",
        *,
        reason: str | None = None,
        request_id: str | None = None,
        amount: Decimal | None = None,
        expires_at: datetime | None = None,
        entry_id: str | None = None,
        threshold: Decimal | None = None,
        threshold_setting: str | None = None,
    ) -> None:
        acct = self.account
        status_seq = None
        if kind is AlertKind.EXHAUSTED or kind is AlertKind.RESTORED:
            # A status alert: numbered along the account's history.
            status_seq = acct.status_seq + 1
            self.account = acct = replace(acct, status_seq=status_seq)
        self.outputs.append(
            AlertOut(
                alert_id=derive_id(
                    "alert", acct.tenant_id, kind.value, self.cause.topic, self.cause.id, tag
                ),
                tenant_id=acct.tenant_id,
                alert=kind,
                balance=acct.balance,
                occurred_at=self.now,
                status_seq=status_seq,
                reason=reason,
                request_id=request_id,
                amount=amount,
                expires_at=expires_at,
                entry_id=entry_id,
                threshold=threshold,
                threshold_setting=threshold_setting,
            )
        )

    def status_changed(self, before: Account) -> None:
        """An exhausted or restored alert if the tenant crossed between the two."""
        if before.exhausted != self.account.exhausted:
            self.alert(AlertKind.EXHAUSTED if self.account.exhausted else AlertKind.RESTORED)

    def move_balance(
        self,
        signed_amount: Decimal,
        debit: Debit | None = None,
        kind: str | None = None,
        entry_id: str | None = None,
        lots: tuple[Lot, ...] | None = None,
        usage: tuple[MonthUsage, ...] | None = None,
    ) -> str:
        """Change the balance by exactly one ledger entry, and raise the state alerts.

        Returns the entry's id. `kind` and `entry_id` name an `expiry` entry; the
        others' come from their sign and their cause. The caller moves the lots
        (`lots`, `usage`: the account's after this change, set in the same copy).
        """
        before = self.account
        # Exact or raising, never rounded under the default context (core/money.py).
        after_balance = EXACT.add(before.balance, signed_amount)
        self.account = before.moved(
            after_balance,
            before.entries + 1,
            self.now,
            before.lots if lots is None else lots,
            before.usage if usage is None else usage,
        )
        if entry_id is None:
            entry_id = derive_id("ledger", before.tenant_id, self.cause.topic, self.cause.id)
        self.outputs.append(
            LedgerOut(
                entry_id=entry_id,
                tenant_id=before.tenant_id,
                kind=kind or ("debit" if signed_amount < 0 else "credit"),
                amount=EXACT.abs(signed_amount),
                balance_after=after_balance,
                cause_topic=self.cause.topic,
                cause_id=self.cause.id,
                occurred_at=self.cause.occurred_at,
                recorded_at=self.now,
                rate_prefix=debit.rate_prefix if debit else None,
                rate_per_minute=debit.rate_per_minute if debit else None,
                billed_seconds=debit.billed_seconds if debit else None,
                actor=self.cause.actor,
            )
        )
        self.status_changed(before)
        settings = before.auto_recharge
        trigger = None if settings is None else settings.trigger_balance
        if trigger is not None and before.balance >= trigger > after_balance:
            self.alert(
                AlertKind.LOW_BALANCE, threshold=trigger, threshold_setting="trigger_balance"
            )
        level = before.notify_below
        # The tenant's own level; one alert when it is the trigger's and both are crossed.
        if level is not None and level != trigger and before.balance >= level > after_balance:
            self.alert(
                AlertKind.LOW_BALANCE,
                tag="notify_below",
                threshold=level,
                threshold_setting="notify_below",
            )
        return entry_id

    def request_recharge_if_due(self) -> None:
        acct = self.account
        settings = acct.auto_recharge
        if (
            settings is None
            or not settings.enabled
            or settings.suspended
            or acct.pending is not None
            or acct.balance >= settings.trigger_balance
        ):
            return
        pending = PendingRecharge(
            # Numbered per tenant rather than named after the cause: two workers that
            # saw a tenant's records in a different order (a zombie and its successor)
            # still give its n-th request the same id, so billing charges it once.
            request_id=derive_id("recharge", acct.tenant_id, str(acct.requests_issued + 1)),
            amount=settings.amount_for(acct.balance),
            attempt=1,
            requested_at=self.now,
        )
        self.account = replace(
            acct, pending=pending, requests_issued=acct.requests_issued + 1, updated_at=self.now
        )
        self._emit_request(pending, settings.trigger_balance)

    def _emit_request(self, pending: PendingRecharge, trigger: Decimal) -> None:
        self.outputs.append(
            RechargeOut(
                request_id=pending.request_id,
                tenant_id=self.account.tenant_id,
                amount=pending.amount,
                trigger_balance=trigger,
                balance=self.account.balance,
                attempt=pending.attempt,
                requested_at=pending.requested_at,
            )
        )

    def retry(self, pending: PendingRecharge, trigger: Decimal) -> None:
        retried = replace(
            pending,
            attempt=pending.attempt + 1,
            requested_at=self.now,
            status=RechargeStatus.OUTSTANDING,
            failed_at=None,
        )
        self.account = replace(self.account, pending=retried, updated_at=self.now)
        self._emit_request(retried, trigger)

    def done(self) -> Transition:
        return Transition(self.account, tuple(self.outputs), recharge=tuple(self.recharge))
