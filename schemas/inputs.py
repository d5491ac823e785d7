"""What the processor accepts: usage events and commands (CONTRACT.md, "Inputs").

Unknown fields are accepted and dropped (``extra="ignore"``): the contract lets the
project, and producers following it, add optional fields, and a billing event must
not bounce because a newer producer sent one more label. Everything the contract
does name is validated strictly: no number-to-string, string-to-number or
float-to-int coercion.

The ``decode_*`` helpers turn record bytes into events, and raise exactly one
exception type, ``DecodeError``, whose ``reason`` is the ``credits.rejected`` reason
code. The worker reads a usage record of the common shape itself
(processor/kafka/usage_wire.py, as strict as these models) and hands every other one
to ``decode_call`` / ``decode_conference``, whose verdict stands.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import ErrorDetails

from schemas.notifications import (
    Emails,
    Events,
    SealedSecret,
    WebhookUrl,
    all_events,
    check_emails,
    check_events,
    check_notifications_named,
    check_webhook_pair,
)
from schemas.types import (
    CURRENCY_PATTERN,
    E164,
    E164_PATTERN,
    ID_PATTERN,
    TENANT_ID_PATTERN,
    Actor,
    CommandId,
    Currency,
    DurationSeconds,
    EventId,
    ExternalId,
    NonNegativeAmount,
    OptionalText,
    PositiveAmount,
    Reason,
    RequestId,
    StrictBool,
    TenantId,
    Timestamp,
    check_limits_named,
    check_recharge_target,
    check_settings_named,
)

__all__ = [
    "COMMAND_ADAPTER",
    "COMMAND_TYPES",
    "AutoRechargeChanged",
    "AutoRechargeConfigured",
    "CallUsage",
    "Command",
    "ConferenceUsage",
    "DecodeError",
    "FundsAdded",
    "NotificationsChanged",
    "NotificationsConfigured",
    "RechargeFailed",
    "TenantLimitsConfigured",
    "decode_call",
    "decode_command",
    "decode_conference",
]


# The attempt of a recharge request an answer refers to (1, 2, ...), as billing was
# told in RechargeRequested.attempt.
RechargeAttempt = Annotated[int, Field(ge=1, le=1_000_000)]


class _Input(BaseModel):
    # frozen: events are values handed to a pure core; hashable and safe to share.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class CallUsage(_Input):
    """One call on ``usage.calls``."""

    event_id: EventId
    tenant_id: TenantId
    occurred_at: Timestamp
    call_id: ExternalId
    user_id: OptionalText | None = None
    call_type: Literal["outbound", "toll_free_inbound"]
    source_number: E164
    destination_number: E164
    duration_seconds: DurationSeconds


class ConferenceUsage(_Input):
    """One conference leg on ``usage.conferencing``."""

    event_id: EventId
    tenant_id: TenantId
    occurred_at: Timestamp
    conference_id: ExternalId
    participant_id: OptionalText | None = None
    leg_type: Literal["dial_out", "toll_free_dial_in"]
    number: E164
    duration_seconds: DurationSeconds


class FundsAdded(_Input):
    """Funds credited by hand or by a completed auto-recharge."""

    type: Literal["funds_added"]
    command_id: CommandId
    tenant_id: TenantId
    occurred_at: Timestamp
    # Added: who sent it (the admin API's caller); carried into its ledger entry.
    actor: Actor | None = None
    amount: PositiveAmount
    currency: Currency
    source: Literal["manual", "auto_recharge"]
    recharge_request_id: RequestId | None = None
    # Added: the attempt of the request this answers (RechargeRequested.attempt).
    attempt: RechargeAttempt | None = None

    @model_validator(mode="after")
    def _auto_recharge_names_its_request(self) -> Self:
        # Without the id the outstanding request could never be closed.
        if self.source == "auto_recharge" and self.recharge_request_id is None:
            raise ValueError("recharge_request_id is required when source is auto_recharge")
        if self.attempt is not None and self.recharge_request_id is None:
            raise ValueError("attempt names an attempt of a request: it needs recharge_request_id")
        return self


class AutoRechargeConfigured(_Input):
    """Replaces the tenant's auto-recharge settings."""

    type: Literal["auto_recharge_configured"]
    command_id: CommandId
    tenant_id: TenantId
    occurred_at: Timestamp
    # Added: who sent it (the admin API's caller); carried into its ledger entry.
    actor: Actor | None = None
    enabled: StrictBool
    recharge_amount: PositiveAmount
    trigger_balance: NonNegativeAmount
    # Optional: the card's currency is implied. Kept rather than dropped as an unknown
    # field, so that settings sent in another currency are rejected (currency_mismatch)
    # instead of being read as amounts in the card's currency.
    currency: Currency | None = None
    # Added: `fixed` (default) asks billing for recharge_amount; `to_target` for
    # target_balance - balance (Twilio's "recharge to"), target_balance > trigger_balance.
    mode: Literal["fixed", "to_target"] = "fixed"
    target_balance: PositiveAmount | None = None

    @model_validator(mode="after")
    def _target_for_to_target(self) -> Self:
        check_recharge_target(self.mode, self.target_balance, self.trigger_balance)
        return self


class AutoRechargeChanged(_Input):
    """Added: a partial change of the tenant's auto-recharge settings.

    An absent field keeps the tenant's current value; ``target_balance: null`` clears
    it. The change is merged with the settings at the tenant's owner, in order with
    every other command, and the merged settings are checked there: a result that is
    not valid (a target not above the trigger; no amount or trigger for a tenant that
    has no settings yet) is rejected as ``invalid_settings``. At least one setting must
    be named. ``{"enabled": false}`` turns auto-recharge off (`DELETE`).
    """

    type: Literal["auto_recharge_changed"]
    command_id: CommandId
    tenant_id: TenantId
    occurred_at: Timestamp
    # Added: who sent it (the admin API's caller), as on every command.
    actor: Actor | None = None
    enabled: StrictBool | None = None
    recharge_amount: PositiveAmount | None = None
    trigger_balance: NonNegativeAmount | None = None
    currency: Currency | None = None
    mode: Literal["fixed", "to_target"] | None = None
    target_balance: PositiveAmount | None = None

    @model_validator(mode="after")
    def _names_a_setting(self) -> Self:
        check_settings_named(self.model_fields_set, self)
        return self


class TenantLimitsConfigured(_Input):
    """Added: the tenant's credit limit and low-balance level.

    An absent field keeps the tenant's current value; ``notify_below: null`` clears
    the level. At least one of the two must be present.
    """

    type: Literal["tenant_limits_configured"]
    command_id: CommandId
    tenant_id: TenantId
    occurred_at: Timestamp
    # Added: who sent it (the admin API's caller); carried into its ledger entry.
    actor: Actor | None = None
    # How far below zero the balance may go: exhausted when balance + credit_limit <= 0.
    credit_limit: NonNegativeAmount | None = None
    # A low_balance alert when the balance falls from >= this level to below it.
    notify_below: NonNegativeAmount | None = None
    currency: Currency | None = None

    @model_validator(mode="after")
    def _names_a_limit(self) -> Self:
        check_limits_named(self.model_fields_set, self.credit_limit)
        return self


class RechargeFailed(_Input):
    """The billing system could not charge the payment method."""

    type: Literal["recharge_failed"]
    command_id: CommandId
    tenant_id: TenantId
    occurred_at: Timestamp
    # Added: who sent it (the admin API's caller); carried into its ledger entry.
    actor: Actor | None = None
    recharge_request_id: RequestId
    reason: Reason
    # Added: the attempt that failed (RechargeRequested.attempt). A failure of an
    # earlier attempt than the one outstanding is a late answer and changes nothing.
    attempt: RechargeAttempt | None = None


class NotificationsConfigured(_Input):
    """Added: who the notifier tells, how, and about what; replaces the tenant's
    notification settings.

    The webhook secret travels only sealed (a Fernet token under METER_SECRETS_KEY,
    as the admin API makes it); the worker stores and republishes it as it came.
    """

    type: Literal["notifications_configured"]
    command_id: CommandId
    tenant_id: TenantId
    occurred_at: Timestamp
    actor: Actor | None = None
    emails: Emails = Field(default_factory=list)
    webhook_url: WebhookUrl | None = None
    webhook_secret_sealed: SealedSecret | None = None
    events: Events = Field(default_factory=all_events)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        check_events(self.events)
        check_emails(self.emails)
        check_webhook_pair(self.webhook_url, self.webhook_secret_sealed, "webhook_secret_sealed")
        return self


class NotificationsChanged(_Input):
    """Added: a partial change of the tenant's notification settings.

    An absent field keeps the tenant's current value (a tenant without settings starts
    from a `notifications_configured`'s defaults: no emails, no webhook, every event).
    `webhook_url` travels with `webhook_secret_sealed`; `webhook_url: null` alone
    removes the webhook and its secret. Merged at the tenant's owner, in order with
    every other command; the merged settings are published whole.
    """

    type: Literal["notifications_changed"]
    command_id: CommandId
    tenant_id: TenantId
    occurred_at: Timestamp
    actor: Actor | None = None
    emails: Emails | None = None
    webhook_url: WebhookUrl | None = None
    webhook_secret_sealed: SealedSecret | None = None
    events: Events | None = None

    @model_validator(mode="after")
    def _names_a_setting(self) -> Self:
        check_notifications_named(
            self.model_fields_set,
            self.emails,
            self.events,
            self.webhook_url,
            self.webhook_secret_sealed,
            "webhook_secret_sealed",
        )
        return self


Command = Annotated[
    FundsAdded
    | AutoRechargeConfigured
    | RechargeFailed
    | TenantLimitsConfigured
    | AutoRechargeChanged
    | NotificationsConfigured
    | NotificationsChanged,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: Final[TypeAdapter[Command]] = TypeAdapter(Command)
COMMAND_TYPES: Final = (
    "funds_added",
    "auto_recharge_configured",
    "recharge_failed",
    "tenant_limits_configured",
    "auto_recharge_changed",
    "notifications_configured",
    "notifications_changed",
)


# -------------------------------------------------------------------------- decode


class DecodeError(ValueError):
    """A record value that cannot become an event.

    ``reason`` is ``"invalid_json"`` (not UTF-8 JSON object text) or
    ``"invalid_event"`` (valid JSON that breaks the contract); ``detail`` is a short
    human-readable explanation naming the failing fields, safe to publish.
    """

    __slots__ = ("detail", "reason")

    def __init__(self, reason: Literal["invalid_json", "invalid_event"], detail: str) -> None:
        # Both in args, so the exception pickles and copies like any other.
        super().__init__(reason, detail)
        self.reason: Literal["invalid_json", "invalid_event"] = reason
        self.detail: str = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


_MAX_DETAIL: Final = 500
# Root-level error types meaning "the JSON value is not an object".
_NOT_AN_OBJECT: Final = frozenset({"model_type", "model_attributes_type", "dict_type"})
_PATTERN_MESSAGES: Final = {
    TENANT_ID_PATTERN: "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
    ID_PATTERN: "must be 1 to 128 printable ASCII characters",
    E164_PATTERN: "must be an E.164 number: '+' then 2 to 15 digits, the first not 0",
    CURRENCY_PATTERN: "must be an ISO 4217 code: 3 uppercase letters",
}


def _clip(text: str) -> str:
    # Error messages can quote input (e.g. an unknown tag), which may hold lone
    # surrogates that no UTF-8 encoder, and so no output record, would accept.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        friendly = _PATTERN_MESSAGES.get(str(ctx.get("pattern")))
        if friendly is not None:
            return friendly
    if kind == "union_tag_invalid":
        return f"unknown command type; expected one of: {', '.join(COMMAND_TYPES)}"
    if kind == "union_tag_not_found":
        return f"missing command type; expected one of: {', '.join(COMMAND_TYPES)}"
    msg = error["msg"]
    return msg.removeprefix("Value error, ")


def _to_decode_error(exc: ValidationError) -> DecodeError:
    errors = exc.errors(include_url=False, include_input=False)
    for error in errors:
        if error["type"] == "json_invalid":
            return DecodeError("invalid_json", _clip(error["msg"]))
        if not error["loc"] and error["type"] in _NOT_AN_OBJECT:
            return DecodeError("invalid_json", "the JSON value is not an object")
    parts = []
    for error in errors:
        loc = ".".join(str(part) for part in error["loc"])
        message = _message(error)
        parts.append(f"{loc}: {message}" if loc else message)
    return DecodeError("invalid_event", _clip("; ".join(parts)))


def _unexpected(exc: Exception) -> DecodeError:
    # Belt and braces: a validator bug must reject one record, not stop the stream.
    return DecodeError("invalid_event", _clip(f"internal decoder error: {exc!r}"))


def _require_bytes(raw: Any) -> bytes | bytearray:
    # Kafka hands a tombstone over as None; anything else non-bytes is a caller bug,
    # still reported as a rejection rather than a crash.
    if isinstance(raw, bytes | bytearray):
        return raw
    if raw is None:
        raise DecodeError("invalid_json", "the record value is null")
    raise DecodeError("invalid_json", f"the record value is {type(raw).__name__}, not bytes")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateKey(name)
            seen.add(name)
    return obj


# JSON whitespace right after a string's closing quote: a key may be spaced from its
# colon, so `":` would not count it.
_SPACED: Final = re.compile(rb'"[ \t\n\r]')

_M = TypeVar("_M", bound=BaseModel)


def _unique_keys(data: bytes | bytearray, event: _M) -> _M:
    """`event` when no object in `data` names a key twice; else DecodeError.

    orjson and pydantic's parser keep the last of repeated keys, so a record saying
    `"amount": "1.00", "amount": "999999.00"` would be read as the larger amount.
    Every key in compact JSON ends in `":`, so there are at least as many of those
    as keys at any depth, and at least as many keys as the distinct fields the model
    got. When the two counts are equal (the common case: no unknown or nested field,
    no spacing) no key can repeat, at the cost of one `bytes.count`; otherwise the
    record is parsed again, keeping every key, to tell.
    """
    if data.count(b'":') == len(event.__pydantic_fields_set__) and not _SPACED.search(data):
        return event
    try:
        name = first_duplicate_key(data)
    except (ValueError, RecursionError) as exc:
        # pydantic read it; the standard parser should too. Refuse rather than guess.
        raise DecodeError("invalid_json", _clip(f"not readable as JSON: {exc}")) from None
    if name is not None:
        raise DecodeError(
            "invalid_event", _clip(f"{name}: the key appears more than once in one JSON object")
        )
    return event


def first_duplicate_key(data: bytes | bytearray | str) -> str | None:
    """The first key some object in the JSON text `data` names twice, at any depth.

    ValueError when `data` is not JSON. For the paths that are not hot (the admin
    API's bodies); decoders ask `_unique_keys`, which rarely needs this.
    """
    try:
        # Numbers as text: only the keys matter, and a long one must not fail here.
        json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_int=str,
            parse_float=str,
            parse_constant=str,
        )
    except _DuplicateKey as dup:
        return str(dup.args[0])
    return None


def decode_call(raw: object) -> CallUsage:
    """Bytes from ``usage.calls`` to a CallUsage, or DecodeError."""
    data = _require_bytes(raw)
    try:
        event = CallUsage.model_validate_json(data)
    except ValidationError as exc:
        raise _to_decode_error(exc) from None
    except Exception as exc:
        raise _unexpected(exc) from None
    return _unique_keys(data, event)


def decode_conference(raw: object) -> ConferenceUsage:
    """Bytes from ``usage.conferencing`` to a ConferenceUsage, or DecodeError."""
    data = _require_bytes(raw)
    try:
        event = ConferenceUsage.model_validate_json(data)
    except ValidationError as exc:
        raise _to_decode_error(exc) from None
    except Exception as exc:
        raise _unexpected(exc) from None
    return _unique_keys(data, event)


_validate_command_json: Final = COMMAND_ADAPTER.validate_json


def decode_command(raw: object) -> Command:
    """Bytes from ``credits.commands`` to one of the Command models, or DecodeError."""
    data = _require_bytes(raw)
    try:
        command = _validate_command_json(data)
    except ValidationError as exc:
        raise _to_decode_error(exc) from None
    except Exception as exc:
        raise _unexpected(exc) from None
    return _unique_keys(data, command)
