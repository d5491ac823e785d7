"""From a decoded input to an account transition: rating, validation against the card,
de-duplication, and dispatch to the state machine.

Pure like the rest of the core: the stores are plain mappings (in the worker, staged
views of the accounts table's store and of the compact marks store; dicts in tests),
the clock is an argument.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

from processor.core import account as acc
from processor.core.dedupe import DedupeWindow, dedupe_key
from processor.core.lots import apply_expiry
from processor.core.outcome import Outcome, Rejection, Status
from processor.core.rating import RateCard, RateTable
from processor.core.recharge import apply_recharge_failed, apply_timer, configure_auto_recharge
from processor.core.state import (
    Account,
    AutoRecharge,
    ExpiryPolicy,
    Notifications,
    RechargeMode,
    RechargePolicy,
)
from processor.core.stored import (
    Mark,
    OutboxEntry,
    Position,
    StoredAccount,
    mark_holds,
    never_delivered,
)
from processor.core.transition import Cause, Transition
from processor.core.usage import Debit, UsageEvent
from schemas import (
    AutoRechargeChanged,
    AutoRechargeConfigured,
    Command,
    FundsAdded,
    NotificationsChanged,
    NotificationsConfigured,
    RechargeFailed,
    TenantLimitsConfigured,
)
from schemas.notifications import NOTIFICATION_EVENTS
from schemas.types import check_recharge_target


@dataclass(init=False, unsafe_hash=True, slots=True)
class TimerTick:
    """The worker's timer asking the owner of `tenant_id` to look at one request.

    `at` is the timer's clock when it fired, so the decision does not depend on when
    the tick happens to be processed.
    """

    tick_id: Final[str]
    tenant_id: Final[str]
    request_id: Final[str]
    attempt: Final[int]
    at: Final[datetime]
    # "recharge" (a pending request's timeout or retry) or "expiry" (the tenant's lots:
    # expiry and expiring notices; request_id "" and attempt 0).
    kind: Final[str]

    def __init__(
        self,
        tick_id: str,
        tenant_id: str,
        request_id: str,
        attempt: int,
        at: datetime,
        kind: str = "recharge",
    ) -> None:
        self.tick_id = tick_id
        self.tenant_id = tenant_id
        self.request_id = request_id
        self.attempt = attempt
        self.at = at
        self.kind = kind


EXPIRY_TICK = "expiry"


_USAGE_TABLES = {
    "outbound": RateTable.OUTBOUND,
    "toll_free_inbound": RateTable.TOLL_FREE_INBOUND,
    "dial_out": RateTable.CONFERENCING_DIAL_OUT,
    "toll_free_dial_in": RateTable.TOLL_FREE_INBOUND,
}
# The service each kind of usage is counted under in the account's consumption.
_USAGE_SERVICES = {
    "outbound": "outbound",
    "toll_free_inbound": "toll_free_inbound",
    "dial_out": "conferencing_dial_out",
    "toll_free_dial_in": "conferencing_toll_free_dial_in",
}


# The services a call may be authorized for (GET /tenants/{id}/authorize), rated in
# the tables their usage events are rated in above.
SERVICE_TABLES = {
    "outbound": _USAGE_TABLES["outbound"],
    "toll_free_inbound": _USAGE_TABLES["toll_free_inbound"],
    "conferencing_dial_out": _USAGE_TABLES["dial_out"],
    "conferencing_toll_free_dial_in": _USAGE_TABLES["toll_free_dial_in"],
}


class Engine:
    def __init__(
        self,
        card: RateCard,
        policy: RechargePolicy,
        dedupe: DedupeWindow,
        accounts: MutableMapping[str, StoredAccount],
        seen: MutableMapping[str, Mark],
        delivered: Callable[[str, OutboxEntry], bool] = never_delivered,
        expiry: ExpiryPolicy | None = None,
        ledger_topic: str = "credits.ledger",
    ) -> None:
        self.card = card
        # Funds expiry (METER_FUNDS_EXPIRE_DAYS); the default: funds never expire.
        self.expiry = expiry or ExpiryPolicy()
        # An expiry entry's cause_topic: where its lot's credit entry is.
        self.ledger_topic = ledger_topic
        self.policy = policy
        self.dedupe = dedupe
        self.accounts = accounts
        self.seen = seen
        # Whether an outbox entry's outputs are safely in Kafka, so it can be dropped.
        self.delivered = delivered

    # ---- usage ---------------------------------------------------------------

    def usage(
        self,
        event: UsageEvent,
        cause_topic: str,
        now: datetime,
        position: Position,
        force_too_old: bool = False,
        generation: int = 0,
    ) -> Outcome:
        """Apply a usage event. `generation`: the consumer group generation the event
        was fetched in, what the account value is stamped with (core/stored.py)."""
        tenant = event.tenant_id
        table_key, number = event.usage_type, event.number
        key = dedupe_key(tenant, event.kind, event.event_id)
        stored = self.accounts.get(tenant)
        if stored is not None and stored.has_applied(position):
            return self._replayed(stored, key, event.occurred_at, now, position, generation)
        if mark_holds(self.seen.get(key), stored):
            return Outcome(Status.DUPLICATE, tenant)
        at, window = event.occurred_at, self.dedupe
        # Inline: every usage event asks (`_too_far` says why).
        if at - now > window.ahead or (at < now - window.span and not force_too_old):
            rejection = self._too_far(at, now, force_too_old)
            return Outcome(Status.REJECTED, tenant, rejection=rejection)
        table = _USAGE_TABLES[table_key]
        charge = self.card.rate(table, number, event.duration_seconds)
        if charge is None:
            return Outcome(
                Status.REJECTED,
                tenant,
                rejection=Rejection(
                    "no_rate",
                    f"no rate in table {table.value!r} of rate card {self.card.version!r} "
                    f"matches {number}",
                ),
            )
        debit = Debit(
            amount=charge.amount,
            rate_prefix=charge.rate.prefix,
            rate_per_minute=charge.rate.per_minute,
            billed_seconds=charge.billed_seconds,
            service=_USAGE_SERVICES[table_key],
        )
        cause = Cause(cause_topic, event.event_id, event.occurred_at)
        transition = acc.apply_debit(self._account(stored, tenant), debit, cause, now)
        return self._commit(stored, key, event.occurred_at, now, position, transition, generation)

    # ---- commands ------------------------------------------------------------

    def command(
        self,
        cmd: Command,
        cause_topic: str,
        now: datetime,
        position: Position,
        force_too_old: bool = False,
        generation: int = 0,
    ) -> Outcome:
        tenant = cmd.tenant_id
        key = dedupe_key(tenant, "command", cmd.command_id)
        stored = self.accounts.get(tenant)
        if stored is not None and stored.has_applied(position):
            return self._replayed(stored, key, cmd.occurred_at, now, position, generation)
        if mark_holds(self.seen.get(key), stored):
            return Outcome(Status.DUPLICATE, tenant)
        rejection = self._too_far(cmd.occurred_at, now, force_too_old) or self._check_money(cmd)
        if rejection is not None:
            return Outcome(Status.REJECTED, tenant, rejection=rejection)
        cause = Cause(cause_topic, cmd.command_id, cmd.occurred_at, cmd.actor)
        account = self._account(stored, tenant)
        if isinstance(cmd, FundsAdded):
            transition = acc.apply_funds(
                account,
                self.card.quantize(cmd.amount),
                cause,
                now,
                manual=cmd.source == "manual",
                recharge_request_id=cmd.recharge_request_id,
                expiry=self.expiry,
            )
        elif isinstance(cmd, AutoRechargeConfigured):
            target = cmd.target_balance if cmd.mode == "to_target" else None
            settings = AutoRecharge(
                enabled=cmd.enabled,
                recharge_amount=self.card.quantize(cmd.recharge_amount),
                trigger_balance=self.card.quantize(cmd.trigger_balance),
                mode=RechargeMode(cmd.mode),
                target_balance=None if target is None else self.card.quantize(target),
            )
            transition = configure_auto_recharge(account, settings, cause, now)
        elif isinstance(cmd, AutoRechargeChanged):
            merged = self._merge_auto_recharge(account.auto_recharge, cmd)
            if isinstance(merged, Rejection):
                return Outcome(Status.REJECTED, tenant, rejection=merged)
            if merged is None:
                # Turning off settings that do not exist: nothing to change.
                return Outcome(Status.APPLIED, tenant, account=account)
            transition = configure_auto_recharge(account, merged, cause, now)
        elif isinstance(cmd, TenantLimitsConfigured):
            given = cmd.model_fields_set
            transition = acc.configure_limits(
                account,
                cause,
                now,
                credit_limit=None
                if cmd.credit_limit is None
                else self.card.quantize(cmd.credit_limit),
                notify_below=None
                if cmd.notify_below is None
                else self.card.quantize(cmd.notify_below),
                set_notify_below="notify_below" in given,
            )
        elif isinstance(cmd, NotificationsConfigured):
            settings_ = Notifications(
                emails=tuple(cmd.emails),
                webhook_url=cmd.webhook_url,
                webhook_secret_sealed=cmd.webhook_secret_sealed,
                events=tuple(cmd.events),
                command_id=cmd.command_id,
            )
            transition = acc.configure_notifications(account, settings_, cause, now)
        elif isinstance(cmd, NotificationsChanged):
            merged_ = _merge_notifications(account.notifications, cmd)
            transition = acc.configure_notifications(account, merged_, cause, now)
        else:
            transition = apply_recharge_failed(
                account,
                cmd.recharge_request_id,
                cause,
                now,
                self.policy,
                cmd.attempt,
                reason=cmd.reason,
            )
        return self._commit(stored, key, cmd.occurred_at, now, position, transition, generation)

    def _merge_auto_recharge(
        self, current: AutoRecharge | None, cmd: AutoRechargeChanged
    ) -> AutoRecharge | Rejection | None:
        """The tenant's settings with the change applied, checked as a whole.

        None: a change that only turns off a tenant without settings (nothing to do).
        """
        given = cmd.model_fields_set
        if current is None:
            if cmd.enabled is False and not given & {
                "recharge_amount",
                "trigger_balance",
                "mode",
                "target_balance",
            }:
                return None
            missing = [
                name
                for name in ("enabled", "recharge_amount", "trigger_balance")
                if getattr(cmd, name) is None
            ]
            if missing:
                return Rejection(
                    "invalid_settings",
                    f"the tenant has no auto-recharge settings to change: name "
                    f"{', '.join(missing)} (or PUT the settings whole)",
                )
        q = self.card.quantize

        def pick(name: str, now_value: Decimal | None) -> Decimal | None:
            value: Decimal | None = getattr(cmd, name)
            if name in given:
                return None if value is None else q(value)
            return now_value

        enabled = (
            cmd.enabled if cmd.enabled is not None else current is not None and current.enabled
        )
        amount = pick("recharge_amount", None if current is None else current.recharge_amount)
        trigger = pick("trigger_balance", None if current is None else current.trigger_balance)
        target = pick("target_balance", None if current is None else current.target_balance)
        mode = (
            RechargeMode(cmd.mode)
            if cmd.mode is not None
            else (RechargeMode.FIXED if current is None else current.mode)
        )
        assert amount is not None and trigger is not None  # checked above, or kept
        try:
            check_recharge_target(mode.value, target, trigger)
        except ValueError as exc:
            return Rejection("invalid_settings", f"the settings after this change: {exc}")
        return AutoRecharge(
            enabled=enabled,
            recharge_amount=amount,
            trigger_balance=trigger,
            mode=mode,
            # A fixed recharge keeps no target (as a replacing command sets none).
            target_balance=target if mode is RechargeMode.TO_TARGET else None,
        )

    def _too_far(
        self, occurred_at: datetime, now: datetime, force_too_old: bool
    ) -> Rejection | None:
        """An event time this engine cannot vouch for: too far ahead of the clock, or
        older than the dedupe window (unless an operator forces it, see the contract)."""
        if self.dedupe.too_new(occurred_at, now):
            ahead = int((occurred_at - now).total_seconds())
            return Rejection(
                "invalid_event",
                f"occurred_at is {ahead} s ahead of the processor's clock, more than the "
                f"{self.dedupe.max_future_seconds:g} s METER_MAX_FUTURE_SECONDS allows; "
                "replay it once that time has come, or have the producer fix its clock",
            )
        if not force_too_old and self.dedupe.too_old(occurred_at, now):
            return Rejection(
                "too_old",
                f"occurred_at is more than the {self.dedupe.days:g} days of "
                "METER_DEDUPE_DAYS ago: a repeat of it may be forgotten already, so it "
                "cannot be told from a duplicate; `meter replay-rejected --reason too_old "
                "--force-too-old` applies it on an operator's word",
            )
        return None

    def _check_money(self, cmd: Command) -> Rejection | None:
        if isinstance(cmd, RechargeFailed | NotificationsConfigured | NotificationsChanged):
            return None
        # auto_recharge_configured may omit its currency (the card's is implied); when a
        # command names one, it must be the card's.
        currency = getattr(cmd, "currency", None)
        if currency is not None and currency != self.card.currency:
            return Rejection(
                "currency_mismatch",
                f"command is in {currency}, the rate card and every balance are in "
                f"{self.card.currency}",
            )
        named: list[tuple[str, Decimal | None]]
        if isinstance(cmd, FundsAdded):
            named = [("amount", cmd.amount)]
        elif isinstance(cmd, TenantLimitsConfigured):
            named = [("credit_limit", cmd.credit_limit), ("notify_below", cmd.notify_below)]
        else:
            named = [
                ("recharge_amount", cmd.recharge_amount),
                ("trigger_balance", cmd.trigger_balance),
                ("target_balance", cmd.target_balance),
            ]
        amounts = [(name, value) for name, value in named if value is not None]
        for name, value in amounts:
            # Balances are kept at the card's precision; rounding a top-up silently would
            # credit a different sum than the one billing charged.
            if self.card.quantize(value) != value:
                return Rejection(
                    "invalid_event",
                    f"{name} {value} has more than the {self.card.decimals} decimal places "
                    f"that balances are kept at",
                )
        return None

    # ---- timer ---------------------------------------------------------------

    def timer(
        self, tick: TimerTick, cause_topic: str, position: Position, generation: int = 0
    ) -> Outcome:
        stored = self.accounts.get(tick.tenant_id)
        if stored is None:
            return Outcome(Status.IGNORED, tick.tenant_id, note="unknown_tenant")
        if stored.has_applied(position):
            return self._replayed(stored, None, tick.at, tick.at, position, generation)
        if tick.kind == EXPIRY_TICK:
            expired = apply_expiry(stored.account, self.ledger_topic, tick.at, self.expiry)
            if not expired.changed:
                # With the account, so the timer's index learns its next due time.
                return Outcome(
                    Status.IGNORED, tick.tenant_id, note=expired.ignored, account=stored.account
                )
            return self._write(stored, position, expired, generation)
        cause = Cause(cause_topic, f"{tick.request_id}#{tick.attempt}", tick.at)
        transition = apply_timer(
            stored.account, tick.request_id, tick.attempt, cause, tick.at, self.policy
        )
        if not transition.changed:
            return Outcome(Status.IGNORED, tick.tenant_id, note=transition.ignored)
        return self._write(stored, position, transition, generation)

    # ---- shared --------------------------------------------------------------

    def _account(self, stored: StoredAccount | None, tenant_id: str) -> Account:
        return stored.account if stored is not None else acc.new_account(tenant_id, self.card.zero)

    def _replayed(
        self,
        stored: StoredAccount,
        key: str | None,
        occurred_at: datetime,
        now: datetime,
        position: Position,
        generation: int,
    ) -> Outcome:
        """A record already in this account value, read again after a crash.

        Its outputs are published again from the outbox (those the broker had not
        acknowledged), and the account value and mark are written again: either may
        have been lost with the crash, while the local store kept them.
        """
        refreshed = stored.rewritten(self.delivered, generation)
        self.accounts[stored.account.tenant_id] = refreshed
        if key is not None and not mark_holds(self.seen.get(key), refreshed):
            self.seen[key] = Mark(self.dedupe.expires(occurred_at, now), position)
        return Outcome(
            Status.REPLAYED,
            stored.account.tenant_id,
            stored.outputs_at(position),
            account=refreshed.account,
            seq=refreshed.seq,
        )

    def _write(
        self,
        stored: StoredAccount | None,
        position: Position,
        transition: Transition,
        generation: int,
    ) -> Outcome:
        base = stored if stored is not None else StoredAccount(transition.account)
        updated = base.advance(
            transition.account, position, self.delivered, generation, self.card.unit
        )
        self.accounts[transition.account.tenant_id] = updated
        return Outcome(
            Status.APPLIED,
            transition.account.tenant_id,
            transition.outputs,
            account=transition.account,
            seq=updated.seq,
            recharge=transition.recharge,
        )

    def _commit(
        self,
        stored: StoredAccount | None,
        key: str,
        occurred_at: datetime,
        now: datetime,
        position: Position,
        transition: Transition,
        generation: int,
    ) -> Outcome:
        tenant = transition.account.tenant_id
        if not transition.changed and (transition.ignored is None or stored is None):
            # Nothing was written, so a mark could never hold: a repeat is simply
            # evaluated again and changes nothing again (a zero charge; an answer
            # for a tenant that never had a request).
            if transition.ignored is not None:
                return Outcome(Status.IGNORED, tenant, note=transition.ignored)
            return Outcome(Status.APPLIED, tenant, account=transition.account)
        # An ignored command of a known tenant is written (unchanged) and marked too:
        # re-evaluated later it need not stay moot (a stale recharge_failed re-sent
        # during the next attempt would fail that attempt), and a repeat is a duplicate.
        outcome = self._write(stored, position, transition, generation)
        self.seen[key] = Mark(self.dedupe.expires(occurred_at, now), position)
        if transition.ignored is not None:
            return Outcome(Status.IGNORED, tenant, note=transition.ignored, seq=outcome.seq)
        return outcome


def _merge_notifications(current: Notifications | None, cmd: NotificationsChanged) -> Notifications:
    """The tenant's notification settings with the change applied, whole.

    Always valid: each part was checked in the command, and the webhook URL and its
    secret are named (or removed) together. A tenant without settings starts from a
    `notifications_configured`'s defaults: no emails, no webhook, every event.
    """
    given = cmd.model_fields_set
    base = current or Notifications((), None, None, NOTIFICATION_EVENTS, cmd.command_id)
    url, secret = base.webhook_url, base.webhook_secret_sealed
    if "webhook_url" in given:
        url, secret = cmd.webhook_url, cmd.webhook_secret_sealed
    return Notifications(
        emails=base.emails if cmd.emails is None else tuple(cmd.emails),
        webhook_url=url,
        webhook_secret_sealed=secret,
        events=base.events if cmd.events is None else tuple(cmd.events),
        command_id=cmd.command_id,
    )
