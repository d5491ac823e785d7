"""Auto-recharge: new settings, billing's failures and the timer's timeouts and
retries of a pending request.

Pure: no Kafka, Faust or metrics. A request is issued by any balance change that
crosses the trigger (`Builder.request_recharge_if_due`); its funds close it
(`account.apply_funds`).
"""

from __future__ import annotations

from datetime import datetime

from processor.core.outputs import AlertKind
from processor.core.state import (
    Account,
    AutoRecharge,
    PendingRecharge,
    RechargePolicy,
    RechargeStatus,
)
from processor.core.transition import Builder, Cause, Transition
from processor.core.values import replace


def configure_auto_recharge(
    account: Account, settings: AutoRecharge, cause: Cause, now: datetime
) -> Transition:
    """New settings replace the old ones and lift a suspension.

    A request already with billing stays open (billing may still be charging it, and
    its funds still close it), but one waiting to be retried is dropped when the new
    settings disable auto-recharge. If the open one then fails or times out while
    auto-recharge is off, it ends quietly (`_fail_attempt`).
    """
    b = Builder(account, cause, now)
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
    b = Builder(account, cause, now)
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
    b = Builder(account, cause, now)
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


def next_due(account: Account, policy: RechargePolicy) -> datetime | None:
    """When the timer must next look at this account, or None if it need not."""
    pending = account.pending
    if pending is None:
        return None
    if pending.status is RechargeStatus.OUTSTANDING:
        return pending.requested_at + policy.timeout
    assert pending.failed_at is not None
    return pending.failed_at + policy.retry_after
