"""The account state machine: debits, funds, limits and notification settings.

Pure: no Kafka, Faust or metrics. Every transition takes an `Account` and returns a
new one plus the events to publish, so a replay from the same state produces the same
outputs with the same ids (the ids derive from the cause, never from a clock or a
random source). Auto-recharge's transitions are in processor/core/recharge.py, the
expiry of funds in lots.py.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from processor.core.lots import add_lot, spend, whole_second
from processor.core.money import EXACT, ZERO
from processor.core.outputs import AlertKind, NotificationsOut
from processor.core.state import Account, ExpiryPolicy, Notifications
from processor.core.transition import Builder, Cause, Transition
from processor.core.usage import Debit, count_usage
from processor.core.values import replace


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
    b = Builder(account, cause, now)
    usage = account.usage
    if debit.service is not None:
        usage = count_usage(usage, cause.occurred_at, debit.service, debit)
    lots = spend(account, debit.amount)
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
    b = Builder(account, cause, now)
    entry_id = b.move_balance(amount)
    acct = b.account
    if expiry is not None and expiry.expire_after is not None:
        expires_at = whole_second(cause.occurred_at + expiry.expire_after)
        lots = add_lot(account, amount, entry_id, expires_at, expiry.max_lots)
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
    b = Builder(account, cause, now)
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
    b = Builder(account, cause, now)
    b.account = replace(account, notifications=settings, updated_at=now)
    b.outputs.append(NotificationsOut(account.tenant_id, settings, now))
    return b.done()
