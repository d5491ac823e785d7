"""What an admin request is, how it is read and refused, and the reply it gets.

The endpoints' names, routes and command kinds; the Idempotency-Key and the command id
made of it (`command_id_for`, `key_errors`: `meter`'s commands make theirs the same way);
`validate`, which refuses with 400/413/422 what the processor would reject later; the
problem-details replies (processor/http/problems.py). Plain code: no web framework, no
Kafka (processor/http/admin.py uses it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from processor.http import problems
from schemas.admin import (
    AutoRechargePatch,
    AutoRechargeRequest,
    FieldError,
    FundsRequest,
    LimitsRequest,
    NotificationsPatch,
    NotificationsRequest,
    RechargeOutcomeRequest,
)
from schemas.inputs import (
    AutoRechargeChanged,
    AutoRechargeConfigured,
    FundsAdded,
    NotificationsChanged,
    NotificationsConfigured,
    RechargeFailed,
    TenantLimitsConfigured,
    first_duplicate_key,
)
from schemas.notifications import EMAIL_PATTERN
from schemas.types import (
    CURRENCY_PATTERN,
    ID_PATTERN,
    TENANT_ID_PATTERN,
    CommandId,
)

__all__ = [
    "AUTO_RECHARGE_CHANGE_ID_PREFIX",
    "AUTO_RECHARGE_ID_PREFIX",
    "AUTO_RECHARGE_OFF_ID_PREFIX",
    "COMMAND_ID",
    "ENDPOINT_ROUTES",
    "IDEMPOTENCY_HEADER",
    "ID_PREFIXES",
    "LIMITS_ID_PREFIX",
    "MAX_BODY_BYTES",
    "MAX_COMMAND_ID_LENGTH",
    "NOTIFICATIONS_CHANGE_ID_PREFIX",
    "NOTIFICATIONS_ID_PREFIX",
    "OUTCOME_ID_PREFIX",
    "AdminRequest",
    "Command",
    "Endpoint",
    "Fingerprint",
    "NoBody",
    "Refused",
    "Reply",
    "command_id_for",
    "command_location",
    "decimal_places",
    "error_reply",
    "field_message",
    "fingerprint",
    "header_value",
    "key_errors",
    "key_reused",
    "validate",
]

# The PATCH and DELETE of auto-recharge, and the PATCH of notifications, are endpoints
# of their own for keys and ids.
Endpoint = Literal[
    "funds",
    "auto-recharge",
    "limits",
    "auto-recharge-change",
    "auto-recharge-off",
    "recharge-outcome",
    "notifications",
    "notifications-change",
]
Command = (
    FundsAdded
    | AutoRechargeConfigured
    | TenantLimitsConfigured
    | AutoRechargeChanged
    | RechargeFailed
    | NotificationsConfigured
    | NotificationsChanged
)


class NoBody(BaseModel):
    """DELETE /tenants/{tenant_id}/auto-recharge takes no body (or `{}`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    currency: None = None


AdminRequest = (
    FundsRequest
    | AutoRechargeRequest
    | LimitsRequest
    | AutoRechargePatch
    | NoBody
    | RechargeOutcomeRequest
    | NotificationsRequest
    | NotificationsPatch
)
# Each endpoint's route: its permission is auth.ROUTES's.
ENDPOINT_ROUTES: Final[dict[Endpoint, tuple[str, str]]] = {
    "funds": ("POST", "/tenants/{tenant_id}/funds"),
    "auto-recharge": ("PUT", "/tenants/{tenant_id}/auto-recharge"),
    "limits": ("PUT", "/tenants/{tenant_id}/limits"),
    "auto-recharge-change": ("PATCH", "/tenants/{tenant_id}/auto-recharge"),
    "auto-recharge-off": ("DELETE", "/tenants/{tenant_id}/auto-recharge"),
    "recharge-outcome": ("POST", "/tenants/{tenant_id}/recharges/{request_id}/outcome"),
    "notifications": ("PUT", "/tenants/{tenant_id}/notifications"),
    "notifications-change": ("PATCH", "/tenants/{tenant_id}/notifications"),
}
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
# Far above any real body ({"amount": ..., "currency": ...}); refuse before reading.
MAX_BODY_BYTES: Final = 16 * 1024
# A settings request's command_id is this prefix and its key (a top-up's is its key):
# keys are scoped per endpoint, and a top-up key may not start with it.
AUTO_RECHARGE_ID_PREFIX: Final = "auto-recharge:"
# A limits request's command_id: this prefix and its key (added with the endpoint).
LIMITS_ID_PREFIX: Final = "limits:"
# Added with PATCH and DELETE of auto-recharge.
AUTO_RECHARGE_CHANGE_ID_PREFIX: Final = "auto-recharge-change:"
AUTO_RECHARGE_OFF_ID_PREFIX: Final = "auto-recharge-off:"
# A notifications request's command_id: this prefix and its key (added with it).
NOTIFICATIONS_ID_PREFIX: Final = "notifications:"
# Added with PATCH of notifications.
NOTIFICATIONS_CHANGE_ID_PREFIX: Final = "notifications-change:"
# A recharge outcome's command_id: this prefix and its key (added with the endpoint).
OUTCOME_ID_PREFIX: Final = "outcome:"
ID_PREFIXES: Final[dict[Endpoint, str]] = {
    "auto-recharge": AUTO_RECHARGE_ID_PREFIX,
    "limits": LIMITS_ID_PREFIX,
    "auto-recharge-change": AUTO_RECHARGE_CHANGE_ID_PREFIX,
    "auto-recharge-off": AUTO_RECHARGE_OFF_ID_PREFIX,
    "recharge-outcome": OUTCOME_ID_PREFIX,
    "notifications": NOTIFICATIONS_ID_PREFIX,
    "notifications-change": NOTIFICATIONS_CHANGE_ID_PREFIX,
}
MAX_COMMAND_ID_LENGTH: Final = 128

COMMAND_ID: Final[TypeAdapter[str]] = TypeAdapter(CommandId)
# What a value must look like, in words: the model's own message quotes the pattern.
_PATTERN_MESSAGES: Final = {
    TENANT_ID_PATTERN: "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
    ID_PATTERN: "must be 1 to 128 printable ASCII characters",
    CURRENCY_PATTERN: "must be an ISO 4217 code: 3 uppercase letters",
    EMAIL_PATTERN: "must be an email address such as ops@example.com (no name, no <>)",
}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    """Ends a request early with this reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def error_reply(
    status: int,
    code: str,
    detail: str,
    tenant_id: str | None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    # RFC 9457 problem details (processor/http/problems.py); `error`, `tenant_id` and
    # `errors` as the contract promised before.
    body = problems.problem_body(status, code, detail, tenant_id=tenant_id, errors=errors)
    return Reply(status, body, problems.problem_headers(status, headers))


def field_message(error: ErrorDetails) -> str:
    """One validation error of a request's field, said plainly (`meter` says the same)."""
    if error["type"] == "string_pattern_mismatch":
        friendly = _PATTERN_MESSAGES.get(str((error.get("ctx") or {}).get("pattern")))
        if friendly is not None:
            return friendly
    if error["type"] == "extra_forbidden":
        return "is not a field of this request"
    return error["msg"].removeprefix("Value error, ")


def _field_errors(exc: ValidationError, prefix: tuple[str, ...]) -> list[FieldError]:
    return [
        FieldError(loc=[*prefix, *error["loc"]], msg=field_message(error), type=error["type"])
        for error in exc.errors(include_url=False, include_input=False)
    ]


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive already; a plain dict (tests) is not.
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def command_id_for(endpoint: Endpoint, key: str) -> str:
    """The command_id of a request with this Idempotency-Key, unique per endpoint.

    A top-up's is the key itself (as it always was, so ledger entries name it); any
    other endpoint's is its prefix (`ID_PREFIXES`: `auto-recharge:`, `limits:`, ...) +
    key, or + `sha256:` and the key's hash when that would pass the contract's 128
    characters.
    """
    if endpoint == "funds":
        return key
    prefix = ID_PREFIXES[endpoint]
    derived = prefix + key
    if len(derived) <= MAX_COMMAND_ID_LENGTH:
        return derived
    return f"{prefix}sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def key_errors(endpoint: Endpoint, key: str) -> list[FieldError]:
    """What is wrong with this Idempotency-Key for this endpoint (nothing: []).

    A key is a command id's characters; a top-up's may not start with another
    endpoint's prefix, or its command_id would be that endpoint's (`command_id_for`).
    """
    errors: list[FieldError] = []
    try:
        COMMAND_ID.validate_python(key)
    except ValidationError as exc:
        errors += _field_errors(exc, ("header", IDEMPOTENCY_HEADER))
    for other, prefix in ID_PREFIXES.items():
        if endpoint == "funds" and key.startswith(prefix):
            errors.append(
                FieldError(
                    loc=["header", IDEMPOTENCY_HEADER],
                    msg=f"must not start with {prefix!r} (the {other} endpoint's command ids do)",
                    type="reserved_prefix",
                )
            )
    return errors


def command_location(command_id: str, tenant_id: str) -> str:
    """Added: where a command's status is (`GET /commands/{command_id}`).

    The id is percent-encoded (it may hold any printable character); the tenant rides
    along, as command ids are unique per tenant only.
    """
    return f"/commands/{quote(command_id, safe='')}?tenant_id={quote(tenant_id, safe='')}"


def decimal_places(value: Decimal) -> int:
    """Places after the point that are not trailing zeros: "1.2300" has 2, "5" has 0."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN, infinity: never a valid amount anyway
        return 0
    significant = len(digits)
    while significant and digits[significant - 1] == 0:
        significant -= 1
    if significant == 0:  # zero
        return 0
    return max(0, -(exponent + len(digits) - significant))


Fingerprint = tuple[tuple[str, str], ...]


def _canonical(value: Any) -> str:
    # Equal amounts are the same request however they are written ("50.0", "50.00").
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def _twice(body: bytes) -> str | None:
    try:
        return first_duplicate_key(body)
    except (ValueError, RecursionError):  # orjson read it; nothing more to tell
        return None


def validate(
    endpoint: Endpoint,
    tenant_id: str,
    headers: Mapping[str, str],
    body: bytes | None,
    model: type[AdminRequest],
    card_currency: str,
    decimals: int | None,
) -> tuple[AdminRequest, str | None]:
    """The request and its key, or 400/413/422 listing every problem at once.

    Refuses here what the processor would reject later (to credits.rejected, after
    a 202): another currency than the card's, more decimal places than it keeps.
    """
    if body is None:
        raise Refused(
            error_reply(
                413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes", tenant_id
            )
        )
    key = header_value(headers, IDEMPOTENCY_HEADER)
    errors: list[FieldError] = [] if key is None else key_errors(endpoint, key)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(
            error_reply(400, "invalid_json", f"the body is not JSON: {exc}", tenant_id)
        ) from None
    request: AdminRequest | None = None
    twice = _twice(body) if isinstance(parsed, dict) else None
    if twice is not None:
        # orjson keeps the last value; the processor refuses such a record too.
        errors.append(
            FieldError(
                loc=["body", twice[:100]],
                msg="named more than once in one JSON object",
                type="duplicate_key",
            )
        )
    if not isinstance(parsed, dict):
        errors.append(FieldError(loc=["body"], msg="must be a JSON object", type="dict_type"))
    else:
        try:
            request = model.model_validate(parsed)
        except ValidationError as exc:
            errors += _field_errors(exc, ("body",))
    currency = getattr(request, "currency", None)
    if request is not None and currency not in (None, card_currency):
        # The processor would reject it to credits.rejected; say so now instead.
        errors.append(
            FieldError(
                loc=["body", "currency"],
                msg=f"must be {card_currency}, the rate card's currency",
                type="currency_mismatch",
            )
        )
    if request is not None and decimals is not None:
        for name, value in request:
            if isinstance(value, Decimal) and decimal_places(value) > decimals:
                errors.append(
                    FieldError(
                        loc=["body", name],
                        msg=f"has more than {decimals} decimal places; balances "
                        f"are kept at the rate card's {decimals}",
                        type="too_many_decimals",
                    )
                )
    if errors or request is None:
        detail = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors)
        raise Refused(error_reply(422, "invalid_request", detail, tenant_id, errors))
    return request, key


def fingerprint(request: AdminRequest, currency: str) -> Fingerprint:
    # A partial request's absent field (kept) differs from its null (cleared).
    fields = request.model_dump(
        exclude_unset=isinstance(request, LimitsRequest | AutoRechargePatch | NotificationsPatch)
    )
    if isinstance(request, NotificationsRequest | NotificationsPatch):
        _digest_secret(fields)
    elif fields.get("currency") is None:
        fields["currency"] = currency  # implied by the rate card
    return tuple(sorted((name, _canonical(value)) for name, value in fields.items()))


def _digest_secret(fields: dict[str, Any]) -> None:
    # Held for a day: the secret's digest tells a changed body, never the secret.
    if "webhook_secret" in fields:
        secret = fields["webhook_secret"]
        fields["webhook_secret"] = (
            None if secret is None else hashlib.sha256(secret.encode()).hexdigest()
        )


def key_reused(tenant_id: str, endpoint: Endpoint) -> Reply:
    message = (
        f"was used for a different request to this endpoint ({endpoint}) for this "
        "tenant; a retry must repeat the same body, a new request needs a new key"
    )
    error = FieldError(loc=["header", IDEMPOTENCY_HEADER], msg=message, type="key_reused")
    return error_reply(
        422,
        "idempotency_key_reused",
        f"header.{IDEMPOTENCY_HEADER}: {message}",
        tenant_id,
        [error],
    )
