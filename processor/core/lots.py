"""Expiring funds: the lots a credit opens, how debits spend them, and the timer's
expiry of their funds.

Pure: no Kafka, Faust or metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from processor.core.money import EXACT, ZERO
from processor.core.outputs import AlertKind, derive_id
from processor.core.state import Account, ExpiryPolicy, Lot
from processor.core.transition import Builder, Cause, Transition
from processor.core.values import replace


def whole_second(at: datetime) -> datetime:
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


def spend(account: Account, amount: Decimal) -> tuple[Lot, ...]:
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
            # Built, not `replace`d: every debit of a tenant with lots comes here.
            kept[0] = Lot(
                first.lot_id, EXACT.subtract(first.amount, left), first.expires_at, first.noticed
            )
            left = ZERO
        else:
            left = EXACT.subtract(left, first.amount)
            del kept[0]
    return tuple(kept)


def add_lot(
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
    b = Builder(account, Cause(ledger_topic, "", at), at)
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
