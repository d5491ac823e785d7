"""From an output record to the notification people get, and to whom it goes.

Every event the notifier tells about is a `balance_alert` on `credits.alerts`:

| alert                | notification `type`  | selected by `events` holding           |
|----------------------|----------------------|----------------------------------------|
| low_balance          | low_balance          | low_balance                            |
| exhausted            | exhausted            | exhausted                              |
| restored             | restored             | restored                               |
| recharge_succeeded   | recharge_succeeded   | recharge_succeeded                     |
| recharge_failed      | recharge_failed      | recharge_failed or auto_recharge_suspended |
| funds_expiring       | funds_expiring       | funds_expiring                         |
| funds_expired        | funds_expired        | funds_expired                          |

The `recharge_failed` alert is published once, when the last attempt of an
auto-recharge request failed (billing's `reason`, or `timed_out`) and auto-recharge
became suspended; so it is one notification, saying both (`data.reason`,
`data.request_id`, `data.auto_recharge_suspended: true`), sent once to a tenant that
selected either name.

Alerts are read leniently (any JSON object with the fields the table needs), so
kinds the notifier does not know yet are skipped, not refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from schemas.notifications import NOTIFICATION_EVENTS
from schemas.types import parse_timestamp

__all__ = ["SUBJECTS", "Notification", "Settings", "notification_of", "selected"]

# alert kind -> the names in `events` that select it.
_SELECTED_BY: Final[dict[str, frozenset[str]]] = {
    **{name: frozenset({name}) for name in NOTIFICATION_EVENTS},
    "recharge_failed": frozenset({"recharge_failed", "auto_recharge_suspended"}),
}
_KINDS: Final = frozenset(NOTIFICATION_EVENTS) - {"auto_recharge_suspended"}

SUBJECTS: Final[dict[str, str]] = {
    "low_balance": "Your credits balance is low",
    "exhausted": "Your credits have run out",
    "restored": "Your credits are available again",
    "recharge_succeeded": "Auto-recharge succeeded",
    "recharge_failed": "Auto-recharge failed and is suspended",
    "funds_expiring": "Some of your credits expire soon",
    "funds_expired": "Some of your credits have expired",
}


@dataclass(frozen=True)
class Settings:
    """A tenant's notification settings, as read from credits.notification-settings."""

    tenant_id: str
    emails: tuple[str, ...]
    webhook_url: str | None
    webhook_secret_sealed: str | None
    events: frozenset[str]

    @classmethod
    def from_record(cls, value: bytes) -> Settings:
        data = json.loads(value)
        return cls(
            tenant_id=str(data["tenant_id"]),
            emails=tuple(str(e) for e in data.get("emails") or ()),
            webhook_url=data.get("webhook_url"),
            webhook_secret_sealed=data.get("webhook_secret_sealed"),
            events=frozenset(str(e) for e in data.get("events") or ()),
        )


@dataclass(frozen=True)
class Notification:
    """What one alert tells: its id (the webhook-id and the Message-ID's base), the
    event, and the Standard Webhooks body `{"type", "timestamp", "data"}`."""

    output_id: str
    tenant_id: str
    event: str
    occurred_at: datetime
    data: dict[str, Any]

    def body(self) -> str:
        """The webhook body: compact JSON, the same text on every try."""
        return json.dumps(
            {"type": self.event, "timestamp": self.data["occurred_at"], "data": self.data},
            separators=(",", ":"),
            sort_keys=True,
        )


def notification_of(value: bytes | None) -> Notification | None:
    """The notification an alert record makes, or None (not an alert people are told
    about). ValueError when it is not even an alert."""
    if value is None:
        raise ValueError("a null value")
    data = json.loads(value)
    if not isinstance(data, dict) or data.get("type") != "balance_alert":
        raise ValueError("not a balance_alert")
    kind = data.get("alert")
    if kind not in _KINDS:
        return None
    alert_id, tenant = data.get("alert_id"), data.get("tenant_id")
    if not isinstance(alert_id, str) or not isinstance(tenant, str):
        raise ValueError("an alert without alert_id or tenant_id")
    fields = {k: v for k, v in data.items() if k not in ("type", "alert", "alert_id")}
    if kind == "recharge_failed":
        fields["auto_recharge_suspended"] = True
    fields["alert_id"] = alert_id
    return Notification(
        output_id=alert_id,
        tenant_id=tenant,
        event=kind,
        occurred_at=parse_timestamp(data["occurred_at"]),
        data=fields,
    )


def selected(settings: Settings, event: str) -> bool:
    return bool(_SELECTED_BY.get(event, frozenset()) & settings.events)
