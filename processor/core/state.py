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

from processor.core.money import EXACT, ZERO
from processor.core.usage import MonthUsage
from processor.core.values import fast_init


def is_exhausted(balance: Decimal, credit_limit: Decimal = ZERO) -> bool:
    """The one definition of exhausted: the balance plus the tenant's credit limit (how
    far below zero it may go) is at or below zero. Every crossing check, the account
    view and the tallies ask this."""
    return EXACT.add(balance, credit_limit) <= ZERO


# At most this many lots per tenant (beyond the merge of lots expiring the same UTC day):
# past it the two lots that expire last are merged (`lots.add_lot`).
MAX_LOTS = 16


class RechargeMode(StrEnum):
    FIXED = "fixed"  # request `recharge_amount`
    TO_TARGET = "to_target"  # request `target_balance - balance` ("recharge to")


class RechargeStatus(StrEnum):
    OUTSTANDING = "outstanding"  # sent to billing, no answer yet
    FAILED = "failed"  # the attempt failed or timed out; waiting to retry


@fast_init
@dataclass(frozen=True, slots=True)
class AutoRecharge:
    enabled: bool
    recharge_amount: Decimal
    trigger_balance: Decimal
    suspended: bool = False
    mode: RechargeMode = RechargeMode.FIXED
    # to_target only (above trigger_balance): what a recharge lifts the balance to.
    target_balance: Decimal | None = None

    def amount_for(self, balance: Decimal) -> Decimal:
        """What to ask billing for when the balance is `balance` (below the trigger)."""
        if self.mode is RechargeMode.TO_TARGET and self.target_balance is not None:
            return EXACT.subtract(self.target_balance, balance)
        return self.recharge_amount


@fast_init
@dataclass(frozen=True, slots=True)
class PendingRecharge:
    request_id: str
    amount: Decimal
    attempt: int
    requested_at: datetime
    status: RechargeStatus = RechargeStatus.OUTSTANDING
    failed_at: datetime | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Lot:
    """Funds of one credit (or of credits merged into it) and when they expire.

    `lot_id` is the `entry_id` of the credit that opened it: the cause of its expiry
    entry and of its alerts. `amount` is what is left (> 0; a spent lot is dropped).
    `expires_at` is a whole second (rounded up). `noticed`: its funds_expiring alert
    has been published.
    """

    lot_id: str
    amount: Decimal
    expires_at: datetime
    noticed: bool = False


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """METER_FUNDS_EXPIRE_DAYS (None: funds never expire) and
    METER_FUNDS_EXPIRING_NOTICE_DAYS."""

    expire_after: timedelta | None = None
    notice: timedelta = timedelta(days=30)
    max_lots: int = MAX_LOTS


@fast_init
@dataclass(frozen=True, slots=True)
class Notifications:
    """Who the notifier tells, how, and about what (`notifications_configured`).

    `webhook_secret_sealed` is the secret as the admin API sealed it; the core never
    sees it in clear.
    """

    emails: tuple[str, ...]
    webhook_url: str | None
    webhook_secret_sealed: str | None
    events: tuple[str, ...]
    command_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class Account:
    tenant_id: str
    balance: Decimal = ZERO
    auto_recharge: AutoRecharge | None = None
    pending: PendingRecharge | None = None
    updated_at: datetime | None = None
    # Ledger entries written so far; lets a reconciler spot a missing or extra entry.
    entries: int = 0
    # Recharge requests issued so far; numbers the next request id.
    requests_issued: int = 0
    # exhausted/restored alerts published so far: the last one's status_seq. Only grows
    # along the account's history, so the highest a consumer saw is the latest status.
    status_seq: int = 0
    # How far below zero the balance may go before the tenant is exhausted (>= 0).
    credit_limit: Decimal = ZERO
    # A low-balance level of the tenant's own (None: none), apart from auto-recharge.
    notify_below: Decimal | None = None
    # Funds that expire, oldest (soonest to expire) first. What the balance holds beyond
    # their sum (funds credited before lots existed, or while funds never expire) is
    # spent before any lot and never expires. A negative balance has no lots.
    lots: tuple[Lot, ...] = ()
    # Charged usage of the newest month seen and of the month before it (newest first).
    usage: tuple[MonthUsage, ...] = ()
    # Added: the tenant's notification settings (None: nobody is told anything).
    notifications: Notifications | None = None

    @property
    def exhausted(self) -> bool:
        return is_exhausted(self.balance, self.credit_limit)


@dataclass(frozen=True, slots=True)
class RechargePolicy:
    timeout: timedelta = timedelta(hours=1)
    retry_after: timedelta = timedelta(minutes=15)
    max_attempts: int = 3
