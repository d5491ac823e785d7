"""What a transition publishes: ledger entries, alerts, recharge requests and
notification settings, and the deterministic ids they carry.

Pure: no Kafka, Faust or metrics. Ids derive from the cause, never from a clock or a
random source, so a replay from the same state produces the same outputs with the
same ids.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final

from processor.core.state import Notifications

# Fixed namespace so ids are the same on every worker and across restarts.
ID_NAMESPACE = uuid.UUID("6f1c8a52-3d4e-4b7a-9c2e-5a0d9e8b7f31")
_NAMESPACE_BYTES = ID_NAMESPACE.bytes


def derive_id(*parts: str) -> str:
    """A deterministic id from the parts of a cause (uuid5, so consumers can dedupe).

    uuid.uuid5 spelled out (SHA-1 of namespace and name, version 5, RFC 4122 variant):
    the same ids, without building a UUID object on every ledger entry. Written on
    the hex digest: the version is the 13th digit, '5'; the variant the top two bits
    of the 17th, '10', which _VARIANT sets on a digit.
    """
    h = _sha1(_NAMESPACE_BYTES + "\x1f".join(parts).encode(), usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_sha1 = hashlib.sha1
# A hex digit with its top two bits set to 10 (the RFC 4122 variant): 0-3 -> 8-b, ...
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


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


@dataclass(init=False, unsafe_hash=True, slots=True)
class LedgerOut:
    entry_id: Final[str]
    tenant_id: Final[str]
    kind: Final[str]
    amount: Final[Decimal]
    balance_after: Final[Decimal]
    cause_topic: Final[str]
    cause_id: Final[str]
    occurred_at: Final[datetime]
    recorded_at: Final[datetime]
    rate_prefix: Final[str | None]
    rate_per_minute: Final[Decimal | None]
    billed_seconds: Final[int | None]
    actor: Final[str | None]

    def __init__(
        self,
        entry_id: str,
        tenant_id: str,
        kind: str,
        amount: Decimal,
        balance_after: Decimal,
        cause_topic: str,
        cause_id: str,
        occurred_at: datetime,
        recorded_at: datetime,
        rate_prefix: str | None = None,
        rate_per_minute: Decimal | None = None,
        billed_seconds: int | None = None,
        actor: str | None = None,
    ) -> None:
        self.entry_id = entry_id
        self.tenant_id = tenant_id
        self.kind = kind
        self.amount = amount
        self.balance_after = balance_after
        self.cause_topic = cause_topic
        self.cause_id = cause_id
        self.occurred_at = occurred_at
        self.recorded_at = recorded_at
        self.rate_prefix = rate_prefix
        self.rate_per_minute = rate_per_minute
        self.billed_seconds = billed_seconds
        self.actor = actor


@dataclass(init=False, unsafe_hash=True, slots=True)
class AlertOut:
    alert_id: Final[str]
    tenant_id: Final[str]
    alert: Final[AlertKind]
    balance: Final[Decimal]
    occurred_at: Final[datetime]
    # exhausted/restored only: the account's status_seq after this alert.
    status_seq: Final[int | None]
    # recharge_failed only: billing's reason for the last failure, and the request.
    reason: Final[str | None]
    request_id: Final[str | None]
    # funds_expiring and funds_expired: the lot's amount left (recharge_succeeded: what
    # the recharge credited); funds_expiring: when it expires; funds_expired: the
    # expiry entry that took it.
    amount: Final[Decimal | None]
    expires_at: Final[datetime | None]
    entry_id: Final[str | None]
    # low_balance only: the level the balance fell below, and the setting it is
    # ("trigger_balance" or "notify_below"): one change can cross both, and each alert
    # says which, so that the two are not read as one alert sent twice.
    threshold: Final[Decimal | None]
    threshold_setting: Final[str | None]

    def __init__(
        self,
        alert_id: str,
        tenant_id: str,
        alert: AlertKind,
        balance: Decimal,
        occurred_at: datetime,
        status_seq: int | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        amount: Decimal | None = None,
        expires_at: datetime | None = None,
        entry_id: str | None = None,
        threshold: Decimal | None = None,
        threshold_setting: str | None = None,
    ) -> None:
        self.alert_id = alert_id
        self.tenant_id = tenant_id
        self.alert = alert
        self.balance = balance
        self.occurred_at = occurred_at
        self.status_seq = status_seq
        self.reason = reason
        self.request_id = request_id
        self.amount = amount
        self.expires_at = expires_at
        self.entry_id = entry_id
        self.threshold = threshold
        self.threshold_setting = threshold_setting


@dataclass(init=False, unsafe_hash=True, slots=True)
class NotificationsOut:
    """The tenant's notification settings, for `credits.notification-settings`."""

    tenant_id: Final[str]
    settings: Final[Notifications]
    updated_at: Final[datetime]

    def __init__(self, tenant_id: str, settings: Notifications, updated_at: datetime) -> None:
        self.tenant_id = tenant_id
        self.settings = settings
        self.updated_at = updated_at


@dataclass(init=False, unsafe_hash=True, slots=True)
class RechargeOut:
    request_id: Final[str]
    tenant_id: Final[str]
    amount: Final[Decimal]
    trigger_balance: Final[Decimal]
    balance: Final[Decimal]
    attempt: Final[int]
    requested_at: Final[datetime]

    def __init__(
        self,
        request_id: str,
        tenant_id: str,
        amount: Decimal,
        trigger_balance: Decimal,
        balance: Decimal,
        attempt: int,
        requested_at: datetime,
    ) -> None:
        self.request_id = request_id
        self.tenant_id = tenant_id
        self.amount = amount
        self.trigger_balance = trigger_balance
        self.balance = balance
        self.attempt = attempt
        self.requested_at = requested_at


Output = LedgerOut | AlertOut | RechargeOut | NotificationsOut
