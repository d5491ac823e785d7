"""What the live view knows: the tenants, recharges, alerts and rejections read so far."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from processor.core.status import STATUS_AFTER, STATUS_ALERTS, status_rank, supersedes
from processor.dev.simulator import (
    SimulatorStats,
)

TopicKind = Literal["ledger", "recharge", "alerts", "rejected", "commands"]

# Unprefixed names from CONTRACT.md, and what each one feeds in the view.
TOPICS: Final[Mapping[str, TopicKind]] = {
    "credits.ledger": "ledger",
    "credits.recharge-requests": "recharge",
    "credits.alerts": "alerts",
    "credits.rejected": "rejected",
    "credits.commands": "commands",
}


@dataclass(slots=True)
class TenantView:
    tenant_id: str
    balance: Decimal | None = None
    currency: str = ""
    debits: int = 0
    credits: int = 0
    # From the exhausted/restored alert ranked highest (processor/core/status.py), and
    # that alert's rank.
    status: str | None = None
    status_rank: int | None = None
    last_alert: str | None = None
    last_alert_at: str | None = None


@dataclass(slots=True)
class RechargeView:
    request_id: str
    tenant_id: str
    amount: Decimal
    currency: str
    attempt: int
    requested_at: str
    outcome: str = "pending"


@dataclass(slots=True)
class AlertView:
    tenant_id: str
    alert: str
    balance: Decimal | None
    occurred_at: str


@dataclass(slots=True)
class RejectionView:
    reason: str
    detail: str
    source_topic: str
    key: str | None
    rejected_at: str


def _decimal(value: Any) -> Decimal | None:
    # Money arrives as JSON strings; anything else is a contract violation we
    # show as "?" rather than coerce through float.
    if not isinstance(value, str):
        return None
    try:
        d = Decimal(value)
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


@dataclass
class ViewState:
    bootstrap: str = ""
    topic_prefix: str = ""
    tenants: dict[str, TenantView] = field(default_factory=dict)
    recharges: OrderedDict[str, RechargeView] = field(default_factory=OrderedDict)
    alerts: deque[AlertView] = field(default_factory=lambda: deque(maxlen=50))
    rejections_by_reason: Counter[str] = field(default_factory=Counter)
    recent_rejections: deque[RejectionView] = field(default_factory=lambda: deque(maxlen=20))
    ledger_entries: int = 0
    ledger_debits: int = 0
    ledger_credits: int = 0
    recharge_requests: int = 0
    decode_errors: int = 0
    ledger_rate: float = 0.0  # entries/s over the last refresh (a display figure)
    simulator: SimulatorStats | None = None
    waiting_for: tuple[str, ...] = ()  # topics that do not exist yet
    error: str | None = None  # last broker error, shown until the next success
    # Billing may answer before the view has read the request (topics are read
    # independently), so outcomes wait here for their request.
    _early_outcomes: OrderedDict[str, str] = field(default_factory=OrderedDict)
    max_recharges: int = 500
    # Added: what `meter notifier` delivered, as the demo's local receivers saw it
    # (a summary line, then the latest deliveries); None: no section.
    notifications: Callable[[], list[str]] | None = None

    def tenant(self, tenant_id: str) -> TenantView:
        view = self.tenants.get(tenant_id)
        if view is None:
            view = self.tenants[tenant_id] = TenantView(tenant_id)
        return view

    def apply(self, kind: TopicKind, payload: Any) -> bool:
        """Fold one decoded record into the view; False if it was not understood."""
        if not isinstance(payload, dict):
            if kind != "commands":  # garbage on an input topic is expected
                self.decode_errors += 1
            return False
        handler = {
            "ledger": self._ledger,
            "recharge": self._recharge,
            "alerts": self._alert,
            "rejected": self._rejected,
            "commands": self._command,
        }[kind]
        ok = handler(payload)
        if not ok and kind != "commands":
            self.decode_errors += 1
        return ok

    def _ledger(self, p: dict[str, Any]) -> bool:
        tenant_id = p.get("tenant_id")
        balance = _decimal(p.get("balance_after"))
        if not isinstance(tenant_id, str) or balance is None:
            return False
        view = self.tenant(tenant_id)
        # Per tenant the ledger is one ordered partition, so the last entry read
        # carries the current balance.
        view.balance = balance
        view.currency = _str(p.get("currency"), view.currency)
        self.ledger_entries += 1
        if p.get("kind") == "debit":
            view.debits += 1
            self.ledger_debits += 1
        elif p.get("kind") == "credit":
            view.credits += 1
            self.ledger_credits += 1
        return True

    def _recharge(self, p: dict[str, Any]) -> bool:
        request_id = p.get("request_id")
        tenant_id = p.get("tenant_id")
        amount = _decimal(p.get("amount"))
        attempt = p.get("attempt")
        if not (isinstance(request_id, str) and isinstance(tenant_id, str) and amount is not None):
            return False
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            return False
        self.recharge_requests += 1
        self.tenant(tenant_id)
        outcome = self._early_outcomes.pop(request_id, "pending")
        existing = self.recharges.pop(request_id, None)
        if existing is not None and existing.attempt >= attempt:
            # A re-delivery of an attempt we know: keep what billing answered.
            outcome = existing.outcome
        self.recharges[request_id] = RechargeView(
            request_id=request_id,
            tenant_id=tenant_id,
            amount=amount,
            currency=_str(p.get("currency")),
            attempt=max(attempt, existing.attempt if existing else 0),
            requested_at=_str(p.get("requested_at")),
            outcome=outcome,
        )
        while len(self.recharges) > self.max_recharges:
            self.recharges.popitem(last=False)
        return True

    def _alert(self, p: dict[str, Any]) -> bool:
        tenant_id = p.get("tenant_id")
        alert = p.get("alert")
        if not (isinstance(tenant_id, str) and isinstance(alert, str)):
            return False
        at = _str(p.get("occurred_at"))
        view = self.tenant(tenant_id)
        view.last_alert = alert
        view.last_alert_at = at
        if alert in STATUS_ALERTS:
            rank = status_rank(p.get("status_seq"))
            if supersedes(rank, view.status_rank):
                view.status = STATUS_AFTER[alert]
                view.status_rank = rank
        self.alerts.append(AlertView(tenant_id, alert, _decimal(p.get("balance")), at))
        return True

    def _rejected(self, p: dict[str, Any]) -> bool:
        reason = _str(p.get("reason"), "?")
        self.rejections_by_reason[reason] += 1
        key = p.get("key")
        self.recent_rejections.append(
            RejectionView(
                reason=reason,
                detail=_str(p.get("detail")),
                source_topic=_str(p.get("source_topic")),
                key=key if isinstance(key, str) else None,
                rejected_at=_str(p.get("rejected_at")),
            )
        )
        return True

    def _command(self, p: dict[str, Any]) -> bool:
        request_id = p.get("recharge_request_id")
        if not isinstance(request_id, str):
            return False
        if p.get("type") == "funds_added":
            outcome = "paid"
        elif p.get("type") == "recharge_failed":
            outcome = "failed: " + _str(p.get("reason"), "?")
        else:
            return False
        view = self.recharges.get(request_id)
        if view is None:
            self._early_outcomes[request_id] = outcome
            while len(self._early_outcomes) > self.max_recharges:
                self._early_outcomes.popitem(last=False)
        elif view.outcome != "paid":  # once paid, a late failure cannot undo it
            view.outcome = outcome
        return True

    @property
    def exhausted(self) -> int:
        return sum(1 for t in self.tenants.values() if t.status == "exhausted")
