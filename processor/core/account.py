"""The account state machine: one tenant's prepaid balance and its auto-recharge.

Pure: no Kafka, Faust or metrics. Every transition takes an `Account` and returns a
new one plus the events to publish, so a replay from the same state produces the same
outputs with the same ids (the ids derive from the cause, never from a clock or a
random source).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from processor.core.money import EXACT
from processor.core.values import fast_init, replace

ZERO = Decimal(0)


def is_exhausted(balance: Decimal, credit_limit: Decimal = ZERO) -> bool:
    """The one definition of exhausted: the balance plus the tenant's credit limit (how
    far below zero it may go) is at or below zero. Every crossing check, the account
    view and the tallies ask this."""
    return EXACT.add(balance, credit_limit) <= ZERO


# Fixed namespace so ids are the same on every worker and across restarts.
_ID_NAMESPACE = uuid.UUID("6f1c8a52-3d4e-4b7a-9c2e-5a0d9e8b7f31")
_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


def derive_id(*parts: str) -> str:
    """A deterministic id from the parts of a cause (uuid5, so consumers can dedupe).

    uuid.uuid5 spelled out (SHA-1 of namespace and name, version 5, RFC 4122 variant):
    the same ids, without building a UUID object on every ledger entry.
    """
    name = _NAMESPACE_BYTES + "\x1f".join(parts).encode()
    digest = bytearray(hashlib.sha1(name, usedforsecurity=False).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class AlertKind(StrEnum):
    EXHAUSTED = "exhausted"
    RESTORED = "restored"
    LOW_BALANCE = "low_balance"
    RECHARGE_FAILED = "recharge_failed"
    # A lot with money left comes within the notice period of its expiry (once a lot).
    FUNDS_EXPIRING = "funds_expiring"
    # A lot expired with money left: an `expiry` ledger entry took it.
    FUNDS_EXPIRED = "funds_expired"
    # Added: the funds of an outstanding auto-recharge request arrived.
    RECHARGE_SUCCEEDED = "recharge_succeeded"


# The services usage is counted under in the account's consumption, in this order.
SERVICES = (
    "outbound",
    "toll_free_inbound",
    "conferencing_dial_out",
    "conferencing_toll_free_dial_in",
)
# At most this many lots per tenant (beyond the merge of lots expiring the same UTC day):
# past it the two lots that expire last are merged (`_add_lot`).
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


@fast_init
@dataclass(frozen=True, slots=True)
class ServiceUsage:
    events: int = 0
    billed_seconds: int = 0
    amount: Decimal = ZERO


_NO_USAGE = ServiceUsage()


@fast_init
@dataclass(frozen=True, slots=True)
class MonthUsage:
    """One calendar month (UTC, of the usage's event time) of charged usage, per
    service in SERVICES order. `month` is year * 100 + month (202612)."""

    month: int
    services: tuple[ServiceUsage, ...] = (_NO_USAGE,) * len(SERVICES)


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


@fast_init
@dataclass(frozen=True, slots=True)
class Cause:
    """What made a transition happen: the input record, or a timer firing."""

    topic: str
    id: str
    occurred_at: datetime
    # Who sent the command (its `actor`), carried into the ledger entry.
    actor: str | None = None


# ---- outputs ---------------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class LedgerOut:
    entry_id: str
    tenant_id: str
    kind: str  # "debit" | "credit"
    amount: Decimal
    balance_after: Decimal
    cause_topic: str
    cause_id: str
    occurred_at: datetime
    recorded_at: datetime
    rate_prefix: str | None = None
    rate_per_minute: Decimal | None = None
    billed_seconds: int | None = None
    actor: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AlertOut:
    alert_id: str
    tenant_id: str
    alert: AlertKind
    balance: Decimal
    occurred_at: datetime
    # exhausted/restored only: the account's status_seq after this alert.
    status_seq: int | None = None
    # recharge_failed only: billing's reason for the last failure, and the request.
    reason: str | None = None
    request_id: str | None = None
    # funds_expiring and funds_expired: the lot's amount left (recharge_succeeded: what
    # the recharge credited); funds_expiring: when it expires; funds_expired: the
    # expiry entry that took it.
    amount: Decimal | None = None
    expires_at: datetime | None = None
    entry_id: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class NotificationsOut:
    """The tenant's notification settings, for `credits.notification-settings`."""

    tenant_id: str
    settings: Notifications
    updated_at: datetime


@fast_init
@dataclass(frozen=True, slots=True)
class RechargeOut:
    request_id: str
    tenant_id: str
    amount: Decimal
    trigger_balance: Decimal
    balance: Decimal
    attempt: int
    requested_at: datetime


Output = LedgerOut | AlertOut | RechargeOut | NotificationsOut


@fast_init
@dataclass(frozen=True, slots=True)
class Transition:
    account: Account
    outputs: tuple[Output, ...] = ()
    # Why nothing happened, when nothing did (a stale answer, a timer for a request
    # that has moved on); None when the input took effect.
    ignored: str | None = None
    changed: bool = True
    # What became of a recharge request in this transition, for metrics: fulfilled,
    # failed, timed_out, suspended, dropped.
    recharge: tuple[str, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Debit:
    amount: Decimal
    rate_prefix: str
    rate_per_minute: Decimal
    billed_seconds: int
    # One of SERVICES, for the account's consumption (None: not counted).
    service: str | None = None


@dataclass(slots=True)
class _Builder:
    """Collects the outputs of one transition in the order consumers expect."""

    account: Account
    cause: Cause
    now: datetime
    outputs: list[Output] = field(default_factory=list)
    recharge: list[str] = field(default_factory=list)

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
        self.account = replace(
            before,
            balance=after_balance,
            entries=before.entries + 1,
            updated_at=self.now,
            lots=before.lots if lots is None else lots,
            usage=before.usage if usage is None else usage,
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
            self.alert(AlertKind.LOW_BALANCE)
        level = before.notify_below
        # The tenant's own level; one alert when it is the trigger's and both are crossed.
        if level is not None and level != trigger and before.balance >= level > after_balance:
            self.alert(AlertKind.LOW_BALANCE, tag="notify_below")
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


# ---- transitions -----------------------------------------------------------------


def new_account(tenant_id: str, zero: Decimal = ZERO) -> Account:
    """A tenant never seen: balance 0, so exhausted, and no alert for that.

    `zero` is 0 at the rate card's precision (`RateCard.zero`, e.g. 0.0000): balances
    are kept and reported at the card's decimals, also before the first entry.
    """
    return Account(tenant_id=tenant_id, balance=zero)


def apply_debit(account: Account, debit: Debit, cause: Cause, now: datetime) -> Transition:
    """A rated usage event. A zero charge changes nothing and writes no entry."""
    if debit.amount < ZERO:
        raise ValueError("a debit is never negative")
    if debit.amount == ZERO:
        return Transition(account, changed=False)
    b = _Builder(account, cause, now)
    usage = account.usage
    if debit.service is not None:
        usage = count_usage(usage, cause.occurred_at, debit.service, debit)
    lots = _spend(account, debit.amount)
    b.move_balance(EXACT.minus(debit.amount), debit, lots=lots, usage=usage)
    b.request_recharge_if_due()
    return b.done()


def apply_funds(
    account: Account,
    amount: Decimal,
    cause: Cause,
    now: datetime,
    *,
    manual: bool,
    recharge_request_id: str | None,
    expiry: ExpiryPolicy | None = None,
) -> Transition:
    """Funds are always credited; a matching outstanding request is closed.

    With `expiry` set, what is left once a negative balance is paid off becomes a lot
    that expires `expiry.expire_after` after the funds' `occurred_at`.
    """
    if amount <= ZERO:
        raise ValueError("funds are always positive")
    b = _Builder(account, cause, now)
    entry_id = b.move_balance(amount)
    acct = b.account
    if expiry is not None and expiry.expire_after is not None:
        expires_at = _whole_second(cause.occurred_at + expiry.expire_after)
        lots = _add_lot(account, amount, entry_id, expires_at, expiry.max_lots)
        acct = replace(acct, lots=lots)
    closed = acct.pending is not None and recharge_request_id == acct.pending.request_id
    if closed:
        acct = replace(acct, pending=None)
        b.recharge.append("fulfilled")
    if manual and acct.auto_recharge is not None and acct.auto_recharge.suspended:
        acct = replace(acct, auto_recharge=replace(acct.auto_recharge, suspended=False))
    b.account = acct
    if closed:
        assert recharge_request_id is not None
        b.alert(AlertKind.RECHARGE_SUCCEEDED, request_id=recharge_request_id, amount=amount)
    b.request_recharge_if_due()
    return b.done()


def configure_auto_recharge(
    account: Account, settings: AutoRecharge, cause: Cause, now: datetime
) -> Transition:
    """New settings replace the old ones and lift a suspension.

    A request already with billing stays open (billing may still be charging it, and
    its funds still close it), but one waiting to be retried is dropped when the new
    settings disable auto-recharge. If the open one then fails or times out while
    auto-recharge is off, it ends quietly (`_fail_attempt`).
    """
    b = _Builder(account, cause, now)
    pending = account.pending
    if pending is not None and pending.status is RechargeStatus.FAILED and not settings.enabled:
        pending = None
    b.account = replace(
        account, auto_recharge=replace(settings, suspended=False), pending=pending, updated_at=now
    )
    b.request_recharge_if_due()
    return b.done()


def apply_recharge_failed(
    account: Account,
    request_id: str,
    cause: Cause,
    now: datetime,
    policy: RechargePolicy,
    attempt: int | None = None,
    reason: str | None = None,
) -> Transition:
    """Billing could not charge a request's attempt (for `reason`, billing's words).

    An answer naming its `attempt` counts only for the attempt outstanding: a late
    failure of an earlier attempt (one the timer already counted) changes nothing. An
    answer without `attempt` is taken for the attempt outstanding, as it always was.
    """
    pending = account.pending
    if pending is None or pending.request_id != request_id:
        return Transition(account, ignored="unknown_or_closed_request", changed=False)
    if attempt is not None and attempt != pending.attempt:
        note = "earlier_attempt" if attempt < pending.attempt else "unknown_attempt"
        return Transition(account, ignored=note, changed=False)
    if pending.status is RechargeStatus.FAILED:
        return Transition(account, ignored="attempt_already_failed", changed=False)
    return _fail_attempt(account, pending, cause, now, policy, "failed", reason)


def apply_timer(
    account: Account,
    request_id: str,
    attempt: int,
    cause: Cause,
    now: datetime,
    policy: RechargePolicy,
) -> Transition:
    """The timer's tick for one pending request: time out an attempt, or retry it.

    The tick names the request and attempt it was scheduled for, so a late or repeated
    tick for a request that has moved on changes nothing.
    """
    pending = account.pending
    if pending is None or pending.request_id != request_id or pending.attempt != attempt:
        return Transition(account, ignored="stale_timer", changed=False)
    if pending.status is RechargeStatus.OUTSTANDING:
        if now < pending.requested_at + policy.timeout:
            return Transition(account, ignored="not_due", changed=False)
        return _fail_attempt(account, pending, cause, now, policy, "timed_out", "timed_out")
    assert pending.failed_at is not None
    if now < pending.failed_at + policy.retry_after:
        return Transition(account, ignored="not_due", changed=False)
    settings = account.auto_recharge
    b = _Builder(account, cause, now)
    if (
        settings is None
        or not settings.enabled
        or settings.suspended
        or account.balance >= settings.trigger_balance
    ):
        # Nothing left to recharge for: the tenant was topped up or turned it off.
        b.account = replace(account, pending=None, updated_at=now)
        b.recharge.append("dropped")
        return b.done()
    b.retry(pending, settings.trigger_balance)
    return b.done()


def _fail_attempt(
    account: Account,
    pending: PendingRecharge,
    cause: Cause,
    now: datetime,
    policy: RechargePolicy,
    how: str,
    reason: str | None,
) -> Transition:
    b = _Builder(account, cause, now)
    b.recharge.append(how)
    settings = account.auto_recharge
    if settings is None or not settings.enabled:
        # Auto-recharge was turned off while this attempt was with billing: the
        # request ends quietly, with no retry, no suspension and no alert.
        b.recharge.append("dropped")
        b.account = replace(account, pending=None, updated_at=now)
        return b.done()
    if pending.attempt >= policy.max_attempts:
        b.recharge.append("suspended")
        suspended = replace(settings, suspended=True) if settings is not None else None
        b.account = replace(account, pending=None, auto_recharge=suspended, updated_at=now)
        b.alert(
            AlertKind.RECHARGE_FAILED,
            tag=f"{pending.request_id}#{pending.attempt}",
            reason=reason,
            request_id=pending.request_id,
        )
        return b.done()
    failed = replace(pending, status=RechargeStatus.FAILED, failed_at=now)
    b.account = replace(account, pending=failed, updated_at=now)
    return b.done()


def configure_limits(
    account: Account,
    cause: Cause,
    now: datetime,
    *,
    credit_limit: Decimal | None,
    notify_below: Decimal | None,
    set_notify_below: bool,
) -> Transition:
    """New limits: `credit_limit` when given, `notify_below` when `set_notify_below`
    (None clears it). A new credit limit that moves the tenant across exhaustion raises
    the exhausted or restored alert, as a balance change would; no ledger entry."""
    b = _Builder(account, cause, now)
    limits = replace(
        account,
        credit_limit=account.credit_limit if credit_limit is None else credit_limit,
        notify_below=notify_below if set_notify_below else account.notify_below,
        updated_at=now,
    )
    b.account = limits
    b.status_changed(account)
    return b.done()


def configure_notifications(
    account: Account, settings: Notifications, cause: Cause, now: datetime
) -> Transition:
    """New notification settings replace the old ones; the notifiers learn them from
    the output (`credits.notification-settings`). No ledger entry, no alert."""
    b = _Builder(account, cause, now)
    b.account = replace(account, notifications=settings, updated_at=now)
    b.outputs.append(NotificationsOut(account.tenant_id, settings, now))
    return b.done()


def next_due(account: Account, policy: RechargePolicy) -> datetime | None:
    """When the timer must next look at this account, or None if it need not."""
    pending = account.pending
    if pending is None:
        return None
    if pending.status is RechargeStatus.OUTSTANDING:
        return pending.requested_at + policy.timeout
    assert pending.failed_at is not None
    return pending.failed_at + policy.retry_after


# ---- expiring funds --------------------------------------------------------------


def _whole_second(at: datetime) -> datetime:
    """`at` rounded up to a whole second, in UTC (a lot's expiry is stored in seconds)."""
    at = at.astimezone(UTC)
    if at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return at


def lots_total(lots: tuple[Lot, ...]) -> Decimal:
    total = ZERO
    for lot in lots:
        total = EXACT.add(total, lot.amount)
    return total


def _spend(account: Account, amount: Decimal) -> tuple[Lot, ...]:
    """The lots left after a debit of `amount`: funds outside any lot first (they are
    older than every lot), then the oldest lot first."""
    lots = account.lots
    if not lots:
        return lots
    free = EXACT.subtract(account.balance, lots_total(lots))
    left = EXACT.subtract(amount, free) if free > ZERO else amount
    if left <= ZERO:
        return lots
    kept = list(lots)
    while kept and left > ZERO:
        first = kept[0]
        if first.amount > left:
            kept[0] = replace(first, amount=EXACT.subtract(first.amount, left))
            left = ZERO
        else:
            left = EXACT.subtract(left, first.amount)
            del kept[0]
    return tuple(kept)


def _add_lot(
    account: Account, amount: Decimal, lot_id: str, expires_at: datetime, max_lots: int
) -> tuple[Lot, ...]:
    """The lots after a credit of `amount` to `account` (its value before the credit).

    The credit first pays off a negative balance; the rest is a lot. A lot expiring on
    the same UTC day as an existing one is merged into it (the later expiry of the two,
    the first one's id). Past `max_lots` the two lots expiring last are merged (the
    later expiry, the earlier lot's id): money never expires before its own time.
    """
    debt = -account.balance if account.balance < ZERO else ZERO
    rest = EXACT.subtract(amount, debt) if amount > debt else ZERO
    lots = account.lots
    if rest <= ZERO:
        return lots
    kept = list(lots)
    day = expires_at.date()
    for i, lot in enumerate(kept):
        if lot.expires_at.date() == day:
            kept[i] = replace(
                lot,
                amount=EXACT.add(lot.amount, rest),
                expires_at=max(lot.expires_at, expires_at),
            )
            break
    else:
        kept.append(Lot(lot_id, rest, expires_at))
        kept.sort(key=_expiry_of)
    while len(kept) > max(1, max_lots):
        older, last = kept[-2], kept[-1]
        kept[-2:] = [
            replace(
                older,
                amount=EXACT.add(older.amount, last.amount),
                expires_at=max(older.expires_at, last.expires_at),
                noticed=older.noticed and last.noticed,
            )
        ]
    return tuple(kept)


def _expiry_of(lot: Lot) -> datetime:
    return lot.expires_at


def expiry_entry_id(tenant_id: str, lot_id: str) -> str:
    """The `expiry` entry of a lot: one per lot, whatever tick takes it."""
    return derive_id("expiry", tenant_id, lot_id)


def apply_expiry(
    account: Account, ledger_topic: str, at: datetime, policy: ExpiryPolicy
) -> Transition:
    """The timer's clock at `at` over the tenant's lots.

    Each lot with money left that has come within `policy.notice` of its expiry gets
    its funds_expiring alert (once). Each lot whose expiry is at or before `at` is
    taken out of the balance by one `expiry` entry (cause: the lot's credit entry in
    `ledger_topic`), followed by the alerts and the auto-recharge rule any balance
    change gets, and a funds_expired alert. Nothing due: unchanged (`changed` False).
    """
    due = next_expiry_due(account, policy)
    if due is None or due > at:
        return Transition(account, ignored="not_due", changed=False)
    b = _Builder(account, Cause(ledger_topic, "", at), at)
    while b.account.lots and b.account.lots[0].expires_at <= at:
        lot = b.account.lots[0]
        b.account = replace(b.account, lots=b.account.lots[1:])
        b.cause = Cause(ledger_topic, lot.lot_id, lot.expires_at)
        entry_id = b.move_balance(
            EXACT.minus(lot.amount),
            kind="expiry",
            entry_id=expiry_entry_id(account.tenant_id, lot.lot_id),
        )
        b.alert(AlertKind.FUNDS_EXPIRED, amount=lot.amount, entry_id=entry_id)
        b.request_recharge_if_due()
    noticed = list(b.account.lots)
    for i, lot in enumerate(noticed):
        if not lot.noticed and lot.expires_at - policy.notice <= at:
            b.cause = Cause(ledger_topic, lot.lot_id, lot.expires_at)
            noticed[i] = replace(lot, noticed=True)
            # Named after the lot and its expiry: a lot merged past the bound (a later
            # expiry, maybe not noticed) never reuses an id with other content.
            b.alert(
                AlertKind.FUNDS_EXPIRING,
                tag=str(int(lot.expires_at.timestamp())),
                amount=lot.amount,
                expires_at=lot.expires_at,
            )
    b.account = replace(b.account, lots=tuple(noticed), updated_at=at)
    return b.done()


def _next_notice(lots: tuple[Lot, ...], notice: timedelta) -> datetime | None:
    """When the first lot not noticed yet comes within `notice` (lots are in expiry
    order, so the first such lot's notice comes first); None: all noticed."""
    for lot in lots:
        if not lot.noticed:
            return lot.expires_at - notice
    return None


def next_expiry_due(account: Account, policy: ExpiryPolicy) -> datetime | None:
    """When the timer must next look at this account's lots, or None if never."""
    lots = account.lots
    if not lots:
        return None
    notice = _next_notice(lots, policy.notice)
    return lots[0].expires_at if notice is None else min(lots[0].expires_at, notice)


# ---- consumption -----------------------------------------------------------------


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
