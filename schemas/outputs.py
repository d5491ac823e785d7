"""What the processor emits (CONTRACT.md, "Outputs").

Output models are strict and refuse unknown fields: they are built by our own code,
so a wrong type or a misspelt field is a bug to catch at construction, not a value
to coerce. ``to_json()`` produces the record value: exactly the contract's field
names, money as fixed-point strings, timestamps as RFC 3339 UTC ("...Z").

Fields that the contract lists only for some records (a debit's rate fields, the
base64 markers) are omitted when absent rather than sent as ``null``; fields the
contract always lists (``RejectedRecord.key``) are always present, ``null`` when
there is nothing to say.
"""

from __future__ import annotations

import base64
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from schemas.notifications import (
    Emails,
    Events,
    SealedSecret,
    WebhookUrl,
)
from schemas.types import (
    Actor,
    CommandId,
    Currency,
    DetailText,
    EventId,
    Money,
    NonNegativeMoney,
    OutputId,
    PositiveMoney,
    RatePrefix,
    Reason,
    ReasonCode,
    RequestId,
    TenantId,
    Timestamp,
    TopicName,
    WireText,
    format_money,
)

__all__ = [
    "BalanceAlert",
    "CommandResult",
    "LedgerEntry",
    "NotificationSettings",
    "OutputModel",
    "RechargeRequested",
    "RejectedRecord",
]


# A SHA-256 digest as 64 lowercase hex digits.
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _is_none(value: object) -> bool:
    return value is None


# Attach to optional fields the contract mentions only for some records.
OMIT_WHEN_NONE: Final = _is_none


class OutputModel(BaseModel):
    """Base of every model the processor serialises (topics and the HTTP API)."""

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        extra="forbid",
        # The serialization schema should say which fields are always there.
        json_schema_serialization_defaults_required=True,
    )

    # Names of the fields declared with exclude_if=OMIT_WHEN_NONE, filled per subclass.
    _omit_when_none: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._omit_when_none = frozenset(
            name for name, field in cls.model_fields.items() if field.exclude_if is OMIT_WHEN_NONE
        )

    def to_json(self) -> bytes:
        """The record value as compact UTF-8 JSON.

        orjson over the validated attributes, about 3x faster than pydantic's
        serializer (which calls back into Python for every Decimal and datetime).
        It is byte-for-byte what ``model_dump_json()`` gives, which the tests check:
        validation has already put every datetime in UTC, which orjson writes as "Z"
        with microseconds only when non-zero, and Decimals go through format_money.
        """
        return orjson.dumps(self.wire_dict(), default=_wire_default, option=orjson.OPT_UTC_Z)

    def wire_dict(self) -> dict[str, Any]:
        data = self.__dict__
        omit = self._omit_when_none
        if omit:
            data = {k: v for k, v in data.items() if v is not None or k not in omit}
        return data

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if handler.mode != "serialization":
            return schema
        # An omitted-when-None field is never null on the wire; say so in the
        # published schema instead of pydantic's generic "X or null, default null".
        resolved = handler.resolve_ref_schema(schema)
        # extra="forbid" guards our own construction; consumers must still accept
        # the optional fields the contract lets us add later.
        resolved.pop("additionalProperties", None)
        properties: dict[str, Any] = resolved.get("properties", {})
        for name, field in cls.model_fields.items():
            if field.exclude_if is not OMIT_WHEN_NONE or name not in properties:
                continue
            prop = properties[name]
            prop.pop("default", None)
            branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
            if len(branches) == 1:
                prop.update(branches[0])
            elif branches:
                prop["anyOf"] = branches
        return schema


def _wire_default(value: object) -> object:
    if isinstance(value, Decimal):
        return format_money(value)
    if isinstance(value, OutputModel):
        return value.wire_dict()
    raise TypeError(f"{type(value).__name__} is not part of the wire format")


class RechargeRequested(OutputModel):
    """``credits.recharge-requests``: ask billing to charge the recharge amount."""

    type: Literal["recharge_requested"] = "recharge_requested"
    request_id: RequestId
    tenant_id: TenantId
    amount: PositiveMoney
    currency: Currency
    trigger_balance: NonNegativeMoney
    balance: Money
    attempt: Annotated[int, Field(ge=1)]
    requested_at: Timestamp


class LedgerEntry(OutputModel):
    """``credits.ledger``: one change of one balance."""

    type: Literal["ledger_entry"] = "ledger_entry"
    entry_id: OutputId
    tenant_id: TenantId
    # Added: "expiry", funds of a lot that expired (counted negative, as a debit).
    kind: Literal["debit", "credit", "expiry"]
    amount: PositiveMoney
    currency: Currency
    balance_after: Money
    cause_topic: TopicName
    cause_id: EventId
    occurred_at: Timestamp
    recorded_at: Timestamp
    rate_prefix: RatePrefix | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    rate_per_minute: NonNegativeMoney | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    billed_seconds: Annotated[int, Field(ge=0)] | None = Field(
        default=None, exclude_if=OMIT_WHEN_NONE
    )
    # Added: who sent the command that caused it (its `actor`), when it named one.
    actor: Actor | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)

    _DEBIT_FIELDS: ClassVar = ("rate_prefix", "rate_per_minute", "billed_seconds")

    @model_validator(mode="after")
    def _rate_fields_only_on_debits(self) -> Self:
        present = [name for name in self._DEBIT_FIELDS if getattr(self, name) is not None]
        if self.kind == "debit" and len(present) != len(self._DEBIT_FIELDS):
            raise ValueError("a debit needs rate_prefix, rate_per_minute and billed_seconds")
        if self.kind != "debit" and present:
            raise ValueError(f"a {self.kind} has no rate fields, got {', '.join(present)}")
        return self


class BalanceAlert(OutputModel):
    """``credits.alerts``."""

    type: Literal["balance_alert"] = "balance_alert"
    alert_id: OutputId
    tenant_id: TenantId
    alert: Literal[
        "exhausted",
        "restored",
        "low_balance",
        "recharge_failed",
        "funds_expiring",
        "funds_expired",
        "recharge_succeeded",
    ]
    balance: Money
    currency: Currency
    occurred_at: Timestamp
    # Added, exhausted/restored only: numbers the tenant's status alerts along its
    # account's history; the one with the highest status_seq is the current status.
    status_seq: Annotated[int, Field(ge=1)] | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    # Added, recharge_failed only: billing's reason for the last failed attempt
    # ("timed_out" when billing never answered), and the request that failed.
    reason: Reason | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    # Added, recharge_succeeded too: the request whose funds arrived.
    request_id: RequestId | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    # Added, funds_expiring and funds_expired: the lot's money left (what expires or
    # expired); funds_expiring: when the lot expires; funds_expired: the `expiry`
    # ledger entry that took it; recharge_succeeded: the amount the recharge credited.
    amount: PositiveMoney | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    expires_at: Timestamp | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    entry_id: OutputId | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    # Added, low_balance only: the level the balance fell below, and which setting it
    # is (the auto-recharge trigger, or the tenant's own notify_below): one change can
    # cross both, each with its own alert. Absent on alerts published before them.
    threshold: Money | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    threshold_setting: Literal["trigger_balance", "notify_below"] | None = Field(
        default=None, exclude_if=OMIT_WHEN_NONE
    )

    _LOT_FIELDS: ClassVar = {
        "funds_expiring": ("amount", "expires_at"),
        "funds_expired": ("amount", "entry_id"),
        "recharge_succeeded": ("amount",),
    }

    @model_validator(mode="after")
    def _lot_fields_only_on_funds_alerts(self) -> Self:
        wanted = self._LOT_FIELDS.get(self.alert, ())
        for name in ("amount", "expires_at", "entry_id"):
            present = getattr(self, name) is not None
            if present and name not in wanted:
                raise ValueError(
                    f"{name} is on funds_expiring/funds_expired/recharge_succeeded alerts "
                    "only, as the contract lists them"
                )
            if not present and name in wanted and self.alert != "recharge_succeeded":
                raise ValueError(f"a {self.alert} alert names its {' and '.join(wanted)}")
        return self

    @model_validator(mode="after")
    def _status_seq_only_on_status_alerts(self) -> Self:
        if self.status_seq is not None and self.alert not in ("exhausted", "restored"):
            raise ValueError("status_seq is only on exhausted and restored alerts")
        if self.alert != "recharge_failed" and self.reason is not None:
            raise ValueError("reason is only on recharge_failed alerts")
        if self.alert not in ("recharge_failed", "recharge_succeeded") and (
            self.request_id is not None
        ):
            raise ValueError("request_id is only on recharge_failed and recharge_succeeded alerts")
        if self.alert == "recharge_succeeded" and (self.amount is None or self.request_id is None):
            raise ValueError("a recharge_succeeded alert names its request_id and amount")
        return self

    @model_validator(mode="after")
    def _threshold_only_on_low_balance(self) -> Self:
        named = (self.threshold is not None, self.threshold_setting is not None)
        if any(named) and self.alert != "low_balance":
            raise ValueError("threshold and threshold_setting are only on low_balance alerts")
        if any(named) and not all(named):
            raise ValueError("threshold and threshold_setting come together")
        return self


class CommandResult(OutputModel):
    """Added. ``credits.command-results``: what became of one command.

    Published by the tenant's owner in the same Kafka transaction as the command's
    other outputs (its ledger entry, its rejection), once per command applied,
    rejected or ignored; a duplicate of a command (the same ``command_id`` again)
    publishes none, the first result stands. ``entry_id`` names the ledger entry the
    command wrote (a top-up's credit), null when it wrote none (a settings command).
    ``reason`` and ``detail`` say why a command was rejected (the reason as on
    ``credits.rejected``) or ignored (e.g. ``unknown_or_closed_request``).
    """

    type: Literal["command_result"] = "command_result"
    command_id: CommandId
    tenant_id: TenantId
    command_type: Literal[
        "funds_added",
        "auto_recharge_configured",
        "recharge_failed",
        "tenant_limits_configured",
        "auto_recharge_changed",
        "notifications_configured",
        "notifications_changed",
    ]
    outcome: Literal["applied", "rejected", "ignored"]
    entry_id: OutputId | None
    reason: ReasonCode | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    detail: DetailText | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    recorded_at: Timestamp


class NotificationSettings(OutputModel):
    """Added. ``credits.notification-settings`` (compacted, keyed by tenant): a
    tenant's notification settings as the worker applied them, for the notifiers.

    The webhook secret is only ever here sealed (a Fernet token under
    METER_SECRETS_KEY); only the notifier opens it.
    """

    type: Literal["notification_settings"] = "notification_settings"
    tenant_id: TenantId
    emails: Emails
    webhook_url: WebhookUrl | None
    webhook_secret_sealed: SealedSecret | None
    events: Events
    # The command that set them, and when the worker applied it.
    command_id: CommandId
    updated_at: Timestamp


class RejectedRecord(OutputModel):
    """``credits.rejected``: an input that was not applied, kept for replay.

    ``key`` and ``payload`` are the record's bytes as UTF-8 text, or base64 with
    ``key_encoding`` / ``payload_encoding`` set to ``"base64"`` when they are not
    valid UTF-8; ``null`` when the record had no key / a null value.
    Build it with ``RejectedRecord.for_record`` to get that right.
    """

    type: Literal["rejected"] = "rejected"
    reason: ReasonCode
    detail: DetailText
    source_topic: TopicName
    source_partition: Annotated[int, Field(ge=0)]
    source_offset: Annotated[int, Field(ge=0)]
    key: WireText | None
    key_encoding: Literal["base64"] | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    # A key over 1 KiB keeps its first 1,024 bytes (null in a minimal rejection);
    # key_size and key_sha256 (hex) say which key it was.
    key_truncated: bool | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    key_size: Annotated[int, Field(ge=0)] | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    key_sha256: Sha256Hex | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    payload: WireText | None
    payload_encoding: Literal["base64"] | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    # A payload too large to copy whole (over 256 KiB, or less when its encoding would
    # not fit the topic) keeps a prefix (null in a minimal rejection); the original
    # stays at its source offset, payload_size and payload_sha256 say which it was.
    payload_truncated: bool | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    payload_size: Annotated[int, Field(ge=0)] | None = Field(
        default=None, exclude_if=OMIT_WHEN_NONE
    )
    payload_sha256: Sha256Hex | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)
    rejected_at: Timestamp

    @classmethod
    def for_record(
        cls,
        *,
        reason: str,
        detail: str,
        source_topic: str,
        source_partition: int,
        source_offset: int,
        key: bytes | None,
        value: bytes | None,
        rejected_at: datetime,
    ) -> RejectedRecord:
        """From a raw Kafka record; never fails on the record's own bytes."""
        key_text, key_encoding = _as_text(key)
        payload, payload_encoding = _as_text(value)
        return cls(
            reason=reason,
            detail=detail,
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            key=key_text,
            key_encoding=key_encoding,
            payload=payload,
            payload_encoding=payload_encoding,
            rejected_at=rejected_at,
        )

    def original_value(self) -> bytes | None:
        """The rejected record's value bytes, for replay."""
        return _from_text(self.payload, self.payload_encoding)

    def original_key(self) -> bytes | None:
        """The rejected record's key bytes, for replay."""
        return _from_text(self.key, self.key_encoding)


def _as_text(data: bytes | None) -> tuple[str | None, Literal["base64"] | None]:
    if data is None:
        return None, None
    try:
        # Strict UTF-8 also refuses encoded surrogates, which JSON could not carry.
        return bytes(data).decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _from_text(text: str | None, encoding: Literal["base64"] | None) -> bytes | None:
    if text is None:
        return None
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")
