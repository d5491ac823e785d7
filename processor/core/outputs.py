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

from processor.core.state import Notifications
from processor.core.values import fast_init

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
