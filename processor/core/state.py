"""The account: one tenant's prepaid balance and the settings it is kept under.

Pure: no Kafka, Faust or metrics. Values only; the transitions that change an account
are in processor/core/account.py (balance changes and settings), recharge.py
(auto-recharge requests) and lots.py (expiring funds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Final

from processor.core.money import EXACT, ZERO
from processor.core.usage import MonthUsage


def is_exhausted(balance: Decimal, credit_limit: Decimal = ZERO) -> bool:
    """The one definition of exhausted: the balance plus the tenant's credit limit (how
    far below zero it may go) is at or below zero. Every crossing check, the account
    view and the tallies ask this."""
    # balance + credit_limit <= 0 without the sum: a comparison of Decimals is exact, and
    # so is copy_negate (no context), at a third of the cost of a sum in EXACT.
    return balance <= credit_limit.copy_negate()


# At most this many lots per tenant (beyond the merge of lots expiring the same UTC day):
# past it the two lots that expire last are merged (`lots.add_lot`).
MAX_LOTS = 16


class RechargeMode(StrEnum):
    FIXED = "fixed"  # request `recharge_amount`
    TO_TARGET = "to_target"  # request `target_balance - balance` ("recharge to")


class RechargeStatus(StrEnum):
    OUTSTANDING = "outstanding"  # sent to billing, no answer yet
    FAILED = "failed"  # the attempt failed or timed out; waiting to retry


@dataclass(init=False, unsafe_hash=True, slots=True)
class AutoRecharge:
    enabled: Final[bool]
    recharge_amount: Final[Decimal]
    trigger_balance: Final[Decimal]
    suspended: Final[bool]
    mode: Final[RechargeMode]
    # to_target only (above trigger_balance): what a recharge lifts the balance to.
    target_balance: Final[Decimal | None]

    def __init__(
        self,
        enabled: bool,
        recharge_amount: Decimal,
        trigger_balance: Decimal,
        suspended: bool = False,
        mode: RechargeMode = RechargeMode.FIXED,
        target_balance: Decimal | None = None,
    ) -> None:
        self.enabled = enabled
        self.recharge_amount = recharge_amount
        self.trigger_balance = trigger_balance
        self.suspended = suspended
        self.mode = mode
        self.target_balance = target_balance

    def amount_for(self, balance: Decimal) -> Decimal:
        """What to ask billing for when the balance is `balance` (below the trigger)."""
        if self.mode is RechargeMode.TO_TARGET and self.target_balance is not None:
            return EXACT.subtract(self.target_balance, balance)
        return self.recharge_amount


@dataclass(init=False, unsafe_hash=True, slots=True)
class PendingRecharge:
    request_id: Final[str]
    amount: Final[Decimal]
    attempt: Final[int]
    requested_at: Final[datetime]
    status: Final[RechargeStatus]
    failed_at: Final[datetime | None]

    def __init__(
        self,
        request_id: str,
        amount: Decimal,
        attempt: int,
        requested_at: datetime,
        status: RechargeStatus = RechargeStatus.OUTSTANDING,
        failed_at: datetime | None = None,
    ) -> None:
        self.request_id = request_id
        self.amount = amount
        self.attempt = attempt
        self.requested_at = requested_at
        self.status = status
        self.failed_at = failed_at


@dataclass(init=False, unsafe_hash=True, slots=True)
class Lot:
    """Funds of one credit (or of credits merged into it) and when they expire.

    `lot_id` is the `entry_id` of the credit that opened it: the cause of its expiry
    entry and of its alerts. `amount` is what is left (> 0; a spent lot is dropped).
    `expires_at` is a whole second (rounded up). `noticed`: its funds_expiring alert
    has been published.
    """

    lot_id: Final[str]
    amount: Final[Decimal]
    expires_at: Final[datetime]
    noticed: Final[bool]

    def __init__(
        self,
        lot_id: str,
        amount: Decimal,
        expires_at: datetime,
        noticed: bool = False,
    ) -> None:
        self.lot_id = lot_id
        self.amount = amount
        self.expires_at = expires_at
        self.noticed = noticed


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """METER_FUNDS_EXPIRE_DAYS (None: funds never expire) and
    METER_FUNDS_EXPIRING_NOTICE_DAYS."""

    expire_after: timedelta | None = None
    notice: timedelta = timedelta(days=30)
    max_lots: int = MAX_LOTS


@dataclass(init=False, unsafe_hash=True, slots=True)
class Notifications:
    """Who the notifier tells, how, and about what (`notifications_configured`).

    `webhook_secret_sealed` is the secret as the admin API sealed it; the core never
    sees it in clear.
    """

    emails: Final[tuple[str, ...]]
    webhook_url: Final[str | None]
    webhook_secret_sealed: Final[str | None]
    events: Final[tuple[str, ...]]
    command_id: Final[str]

    def __init__(
        self,
        emails: tuple[str, ...],
        webhook_url: str | None,
        webhook_secret_sealed: str | None,
        events: tuple[str, ...],
        command_id: str,
    ) -> None:
        self.emails = emails
        self.webhook_url = webhook_url
        self.webhook_secret_sealed = webhook_secret_sealed
        self.events = events
        self.command_id = command_id


@dataclass(init=False, unsafe_hash=True, slots=True)
class Account:
    tenant_id: Final[str]
    balance: Final[Decimal]
    auto_recharge: Final[AutoRecharge | None]
    pending: Final[PendingRecharge | None]
    updated_at: Final[datetime | None]
    # Ledger entries written so far; lets a reconciler spot a missing or extra entry.
    entries: Final[int]
    # Recharge requests issued so far; numbers the next request id.
    requests_issued: Final[int]
    # exhausted/restored alerts published so far: the last one's status_seq. Only grows
    # along the account's history, so the highest a consumer saw is the latest status.
    status_seq: Final[int]
    # How far below zero the balance may go before the tenant is exhausted (>= 0).
    credit_limit: Final[Decimal]
    # A low-balance level of the tenant's own (None: none), apart from auto-recharge.
    notify_below: Final[Decimal | None]
    # Funds that expire, oldest (soonest to expire) first. What the balance holds beyond
    # their sum (funds credited before lots existed, or while funds never expire) is
    # spent before any lot and never expires. A negative balance has no lots.
    lots: Final[tuple[Lot, ...]]
    # Charged usage of the newest month seen and of the month before it (newest first).
    usage: Final[tuple[MonthUsage, ...]]
    # Added: the tenant's notification settings (None: nobody is told anything).
    notifications: Final[Notifications | None]

    def __init__(
        self,
        tenant_id: str,
        balance: Decimal = ZERO,
        auto_recharge: AutoRecharge | None = None,
        pending: PendingRecharge | None = None,
        updated_at: datetime | None = None,
        entries: int = 0,
        requests_issued: int = 0,
        status_seq: int = 0,
        credit_limit: Decimal = ZERO,
        notify_below: Decimal | None = None,
        lots: tuple[Lot, ...] = (),
        usage: tuple[MonthUsage, ...] = (),
        notifications: Notifications | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.balance = balance
        self.auto_recharge = auto_recharge
        self.pending = pending
        self.updated_at = updated_at
        self.entries = entries
        self.requests_issued = requests_issued
        self.status_seq = status_seq
        self.credit_limit = credit_limit
        self.notify_below = notify_below
        self.lots = lots
        self.usage = usage
        self.notifications = notifications

    @property
    def exhausted(self) -> bool:
        return is_exhausted(self.balance, self.credit_limit)

    def moved(
        self,
        balance: Decimal,
        entries: int,
        updated_at: datetime,
        lots: tuple[Lot, ...],
        usage: tuple[MonthUsage, ...],
    ) -> Account:
        """A copy after a change of the balance (`transition.Builder.move_balance`).

        The one copy every record makes, built here rather than by `values.replace`,
        whose generic copy is interpreted and takes its changes as keywords (several
        times the cost). Every field is named: tests/unit/test_values.py holds the list.
        """
        return Account(
            self.tenant_id,
            balance,
            self.auto_recharge,
            self.pending,
            updated_at,
            entries,
            self.requests_issued,
            self.status_seq,
            self.credit_limit,
            self.notify_below,
            lots,
            usage,
            self.notifications,
        )


@dataclass(frozen=True, slots=True)
class RechargePolicy:
    timeout: timedelta = timedelta(hours=1)
    retry_after: timedelta = timedelta(minutes=15)
    max_attempts: int = 3
