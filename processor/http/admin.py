"""The admin HTTP API: manual top-ups and auto-recharge settings, as contract commands.

    POST /tenants/{tenant_id}/funds          {"amount": "50.00", "currency": "USD"}
    POST /tenants/{tenant_id}/recharges/{request_id}/outcome
                                             {"outcome": "succeeded", "amount": "25.00"}
    PUT  /tenants/{tenant_id}/auto-recharge  {"enabled": true, "recharge_amount": "25.00",
                                              "trigger_balance": "5.00"}
    PUT  /tenants/{tenant_id}/notifications  {"emails": [...], "webhook_url": "https://...",
                                              "webhook_secret": "whsec_...", "events": [...]}

Every worker serves both. A request never touches an account directly: it becomes a
`funds_added` (source `manual`) or `auto_recharge_configured` command on
`credits.commands`, keyed by tenant, exactly what any other admin tool would send,
so the worker that owns the tenant applies it through the same exactly-once path as
everything else.

An `Idempotency-Key` is scoped per tenant and endpoint. It becomes the `command_id`
(`command_id_for`): a top-up's key as it is, a settings request's prefixed with
`auto-recharge:`, so the same key on both endpoints makes two commands. The processor
drops a command id it has seen, so a client that retries after a timeout, with the
same key, tops up once. Each worker also remembers the first answer to each key for a
day (`IdempotencyCache`, bounded by count and bytes): the same key with the same body
gets that answer again without publishing again; with a different body, a 422 (as
Stripe does), rather than a 202 for a command the processor would drop as a duplicate.

A request the processor would reject is refused here, with a 422 naming the field:
a currency other than the rate card's, an amount with more decimal places than the
card keeps balances at, a zero or negative amount.

Authentication is one bearer token (`METER_ADMIN_TOKEN`), compared in constant time.
Without it configured the endpoints answer 503: an admin API that is open because
someone forgot a variable would let anyone mint credit.

`AdminAPI` is plain code over a `CommandPublisher`, tested without Faust; `install`
puts it on a worker's web server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal, Protocol, cast
from urllib.parse import quote

import orjson
from aiohttp import web
from faust.web import Request, Response, View
from pydantic import BaseModel, ConfigDict, SecretStr, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from processor.config.sealing import Sealer
from processor.http import auth, openapi, problems
from processor.http.auth import Access, AuthError, Principal
from processor.http.views import tenant_id_problem
from schemas.admin import (
    AutoRechargePatch,
    AutoRechargeRequest,
    CommandAccepted,
    FieldError,
    FundsRequest,
    LimitsRequest,
    NotificationsRequest,
    RechargeOutcomeRequest,
)
from schemas.inputs import (
    AutoRechargeChanged,
    AutoRechargeConfigured,
    FundsAdded,
    NotificationsConfigured,
    RechargeFailed,
    TenantLimitsConfigured,
    first_duplicate_key,
)
from schemas.types import (
    CURRENCY_PATTERN,
    ID_PATTERN,
    TENANT_ID_PATTERN,
    CommandId,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "AdminAPI",
    "CommandPublisher",
    "FaustCommandPublisher",
    "IdempotencyCache",
    "Reply",
    "command_id_for",
    "install",
]

log = logging.getLogger(__name__)

CommandKind = Literal[
    "funds_added",
    "auto_recharge_configured",
    "tenant_limits_configured",
    "auto_recharge_changed",
    "recharge_failed",
    "notifications_configured",
]
# The PATCH and DELETE of auto-recharge are endpoints of their own for keys and ids.
Endpoint = Literal[
    "funds",
    "auto-recharge",
    "limits",
    "auto-recharge-change",
    "auto-recharge-off",
    "recharge-outcome",
    "notifications",
]
Command = (
    FundsAdded
    | AutoRechargeConfigured
    | TenantLimitsConfigured
    | AutoRechargeChanged
    | RechargeFailed
    | NotificationsConfigured
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
)
# Each endpoint's route: its permission is auth.ROUTES's.
_ROUTES: Final[dict[Endpoint, tuple[str, str]]] = {
    "funds": ("POST", "/tenants/{tenant_id}/funds"),
    "auto-recharge": ("PUT", "/tenants/{tenant_id}/auto-recharge"),
    "limits": ("PUT", "/tenants/{tenant_id}/limits"),
    "auto-recharge-change": ("PATCH", "/tenants/{tenant_id}/auto-recharge"),
    "auto-recharge-off": ("DELETE", "/tenants/{tenant_id}/auto-recharge"),
    "recharge-outcome": ("POST", "/tenants/{tenant_id}/recharges/{request_id}/outcome"),
    "notifications": ("PUT", "/tenants/{tenant_id}/notifications"),
}
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
JSON: Final = "application/json"
# Far above any real body ({"amount": ..., "currency": ...}); refuse before reading.
MAX_BODY_BYTES: Final = 16 * 1024
# How long a request waits for the broker to acknowledge the command. Past it the
# client is told to retry with the same key, which is safe either way.
PUBLISH_TIMEOUT_SECONDS: Final = 15.0
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
# A recharge outcome's command_id: this prefix and its key (added with the endpoint).
OUTCOME_ID_PREFIX: Final = "outcome:"
_ID_PREFIXES: Final[dict[Endpoint, str]] = {
    "auto-recharge": AUTO_RECHARGE_ID_PREFIX,
    "limits": LIMITS_ID_PREFIX,
    "auto-recharge-change": AUTO_RECHARGE_CHANGE_ID_PREFIX,
    "auto-recharge-off": AUTO_RECHARGE_OFF_ID_PREFIX,
    "recharge-outcome": OUTCOME_ID_PREFIX,
    "notifications": NOTIFICATIONS_ID_PREFIX,
}
MAX_COMMAND_ID_LENGTH: Final = 128
# The first answer to each (tenant, endpoint, key) is kept this long (Stripe keeps
# 24 hours), for at most this many keys and this many bytes (keys, bodies, answers).
IDEMPOTENCY_TTL_SECONDS: Final = 24 * 3600.0
IDEMPOTENCY_MAX_ENTRIES: Final = 10_000
IDEMPOTENCY_MAX_BYTES: Final = 16 * 1024 * 1024

_COMMAND_ID: Final[TypeAdapter[str]] = TypeAdapter(CommandId)
_PATTERN_MESSAGES: Final = {
    TENANT_ID_PATTERN: "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
    ID_PATTERN: "must be 1 to 128 printable ASCII characters",
    CURRENCY_PATTERN: "must be an ISO 4217 code: 3 uppercase letters",
}


class CommandPublisher(Protocol):
    """Puts one record on a topic and returns once the broker has acknowledged it."""

    async def publish(self, topic: str, key: bytes, value: bytes) -> None: ...


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _Refused(Exception):
    """Ends a request early with this reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _error_reply(
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


def _message(error: ErrorDetails) -> str:
    if error["type"] == "string_pattern_mismatch":
        friendly = _PATTERN_MESSAGES.get(str((error.get("ctx") or {}).get("pattern")))
        if friendly is not None:
            return friendly
    if error["type"] == "extra_forbidden":
        return "is not a field of this request"
    return error["msg"].removeprefix("Value error, ")


def _field_errors(exc: ValidationError, prefix: tuple[str, ...]) -> list[FieldError]:
    return [
        FieldError(loc=[*prefix, *error["loc"]], msg=_message(error), type=error["type"])
        for error in exc.errors(include_url=False, include_input=False)
    ]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive already; a plain dict (tests) is not.
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def command_id_for(endpoint: Endpoint, key: str) -> str:
    """The command_id of a request with this Idempotency-Key, unique per endpoint.

    A top-up's is the key itself (as it always was, so ledger entries name it); a
    settings request's is `auto-recharge:` + key, or + `sha256:` and the key's hash
    when that would pass the contract's 128 characters.
    """
    if endpoint == "funds":
        return key
    prefix = _ID_PREFIXES[endpoint]
    derived = prefix + key
    if len(derived) <= MAX_COMMAND_ID_LENGTH:
        return derived
    return f"{prefix}sha256:{hashlib.sha256(key.encode()).hexdigest()}"


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


Scope = tuple[str, str, str]  # tenant, endpoint, key
Fingerprint = tuple[tuple[str, str], ...]


@dataclass
class _Remembered:
    fingerprint: Fingerprint
    answer: asyncio.Future[Reply]
    size: int
    expires: float


class IdempotencyCache:
    """The first answer to each (tenant, endpoint, key), for `ttl` seconds.

    Bounded by count and by bytes (its strings' and a measured overhead for its
    answer and objects): the oldest entries go first. Held in memory by each
    worker: a retry that reaches another worker, or this one after a restart, is
    published again, and the processor drops its command id as a duplicate.
    """

    # The answer and the objects holding an entry, beyond its strings: an entry
    # costs ~1.5-1.7 KB of memory in all (measured 2026-12-03, 10,000 entries).
    ENTRY_OVERHEAD_BYTES: Final = 1_280

    def __init__(
        self,
        max_entries: int = IDEMPOTENCY_MAX_ENTRIES,
        max_bytes: int = IDEMPOTENCY_MAX_BYTES,
        ttl: float = IDEMPOTENCY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[Scope, _Remembered] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, scope: Scope) -> _Remembered | None:
        self._expire()
        return self._entries.get(scope)

    def remember(self, scope: Scope, fingerprint: Fingerprint) -> _Remembered:
        size = (
            sum(len(part) for part in scope)
            + sum(len(name) + len(value) for name, value in fingerprint)
            + self.ENTRY_OVERHEAD_BYTES
        )
        entry = _Remembered(
            fingerprint,
            asyncio.get_running_loop().create_future(),
            size,
            self._clock() + self.ttl,
        )
        self.forget(scope)
        self._entries[scope] = entry
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._pop_oldest()
        return entry

    def forget(self, scope: Scope, entry: _Remembered | None = None) -> None:
        """Drop the scope's entry (only if it is still `entry`, when given)."""
        held = self._entries.get(scope)
        if held is not None and (entry is None or held is entry):
            del self._entries[scope]
            self.bytes -= held.size

    def _expire(self) -> None:
        now = self._clock()
        # Insertion order is age order: the oldest expire first.
        while self._entries and next(iter(self._entries.values())).expires <= now:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self.bytes -= entry.size


def _compact(reply: Reply) -> Reply:
    return Reply(reply.status, bytes(memoryview(reply.body)), dict(reply.headers))


def _failed(entry: _Remembered) -> bool:
    """The entry's request has been answered, and not with a 202: it may be retried."""
    return entry.answer.done() and entry.answer.result().status != 202


def _canonical(value: Any) -> str:
    # Equal amounts are the same request however they are written ("50.0", "50.00").
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


class AdminAPI:
    """The admin endpoints' logic, independent of the web framework."""

    def __init__(
        self,
        token: SecretStr | None,
        currency: str,
        commands_topic: str,
        publisher: CommandPublisher,
        *,
        decimals: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_command_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        publish_timeout: float = PUBLISH_TIMEOUT_SECONDS,
        idempotency: IdempotencyCache | None = None,
        access: Access | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        # Bytes once, here: compare_digest refuses non-ASCII str, and an operator's
        # token may well contain some.
        self._token = None if token is None else token.get_secret_value().encode()
        # METER_AUTH=jwt: tokens per tenant and role (processor/http/auth.py); otherwise
        # the static token alone, as before.
        self.access = Access("token", token) if access is None else access
        self.currency = currency
        self.commands_topic = commands_topic
        self._publisher = publisher
        self._clock = clock
        self._new_command_id = new_command_id
        self._publish_timeout = publish_timeout
        # The rate card's decimal places: balances are kept at them, and the processor
        # rejects an amount with more (None: not checked).
        self.decimals = decimals
        self.idempotency = IdempotencyCache() if idempotency is None else idempotency
        # Seals webhook secrets (METER_SECRETS_KEY); None: a webhook cannot be set.
        self.sealer = sealer

    @property
    def enabled(self) -> bool:
        return bool(self._token) or self.access.jwt

    # ---- endpoints ---------------------------------------------------------------

    async def add_funds(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """POST /tenants/{tenant_id}/funds -> a manual `funds_added` command.

        `body` is None when it was too large to read.
        """

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, FundsRequest)
            return FundsAdded(
                type="funds_added",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                amount=request.amount,
                currency=request.currency,
                source="manual",
            )

        return await self._handle(
            "funds", tenant_id, headers, body, FundsRequest, command, principal
        )

    async def configure_auto_recharge(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PUT /tenants/{tenant_id}/auto-recharge -> an `auto_recharge_configured` command."""

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, AutoRechargeRequest)
            return AutoRechargeConfigured(
                type="auto_recharge_configured",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                enabled=request.enabled,
                recharge_amount=request.recharge_amount,
                trigger_balance=request.trigger_balance,
                currency=request.currency,
                mode=request.mode,
                target_balance=request.target_balance,
            )

        return await self._handle(
            "auto-recharge", tenant_id, headers, body, AutoRechargeRequest, command, principal
        )

    async def change_auto_recharge(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PATCH /tenants/{tenant_id}/auto-recharge -> an `auto_recharge_changed` command.

        Only the fields the request named: the owner merges them with the tenant's
        settings in order with every other command (not here, read-modify-write).
        """

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, AutoRechargePatch)
            given = {name: getattr(request, name) for name in request.model_fields_set}
            return AutoRechargeChanged(
                type="auto_recharge_changed",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                **given,
            )

        return await self._handle(
            "auto-recharge-change", tenant_id, headers, body, AutoRechargePatch, command, principal
        )

    async def disable_auto_recharge(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """DELETE /tenants/{tenant_id}/auto-recharge -> `auto_recharge_changed` with
        `enabled: false` (the settings are kept, off, as a PUT with enabled false)."""

        def command(request: BaseModel, command_id: str) -> Command:
            return AutoRechargeChanged(
                type="auto_recharge_changed",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                enabled=False,
            )

        if body is not None and not body.strip():
            body = b"{}"
        return await self._handle(
            "auto-recharge-off", tenant_id, headers, body, NoBody, command, principal
        )

    async def configure_limits(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PUT /tenants/{tenant_id}/limits -> a `tenant_limits_configured` command."""

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, LimitsRequest)
            # Only the fields the request named: an absent one keeps the tenant's value,
            # `notify_below: null` clears it (published with exclude_unset).
            given = {name: getattr(request, name) for name in request.model_fields_set}
            return TenantLimitsConfigured(
                type="tenant_limits_configured",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                **given,
            )

        return await self._handle(
            "limits", tenant_id, headers, body, LimitsRequest, command, principal
        )

    async def record_recharge_outcome(
        self,
        tenant_id: str,
        request_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """POST /tenants/{tenant_id}/recharges/{request_id}/outcome -> billing's answer:
        `funds_added` (source auto_recharge) or `recharge_failed`.

        Without an Idempotency-Key the key is the request, attempt and outcome, so a
        retried answer is one command (a second top-up would be credited).
        """
        try:
            _COMMAND_ID.validate_python(request_id)
        except ValidationError:
            return _error_reply(
                400,
                "invalid_request_id",
                "the path's request id must be 1 to 128 printable ASCII characters",
                None if tenant_id_problem(tenant_id) else tenant_id,
            )

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, RechargeOutcomeRequest)
            if request.outcome == "succeeded":
                assert request.amount is not None
                return FundsAdded(
                    type="funds_added",
                    command_id=command_id,
                    tenant_id=tenant_id,
                    occurred_at=self._clock(),
                    amount=request.amount,
                    currency=request.currency or self.currency,
                    source="auto_recharge",
                    recharge_request_id=request_id,
                    attempt=request.attempt,
                )
            assert request.reason is not None
            return RechargeFailed(
                type="recharge_failed",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                recharge_request_id=request_id,
                reason=request.reason,
                attempt=request.attempt,
            )

        def default_key(request: AdminRequest) -> str:
            assert isinstance(request, RechargeOutcomeRequest)
            return f"{request_id}#{request.attempt or 0}:{request.outcome}"

        return await self._handle(
            "recharge-outcome",
            tenant_id,
            headers,
            body,
            RechargeOutcomeRequest,
            command,
            principal,
            context=(("request_id", request_id),),
            default_key=default_key,
        )

    async def configure_notifications(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PUT /tenants/{tenant_id}/notifications -> a `notifications_configured` command.

        The webhook secret is sealed here (METER_SECRETS_KEY) and published only sealed.
        """
        sealer = self.sealer

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, NotificationsRequest)
            sealed = None
            if request.webhook_secret is not None:
                assert sealer is not None  # _check_sealable refused it otherwise
                sealed = sealer.seal(request.webhook_secret)
            return NotificationsConfigured(
                type="notifications_configured",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                emails=list(request.emails),
                webhook_url=request.webhook_url,
                webhook_secret_sealed=sealed,
                events=list(request.events),
            )

        return await self._handle(
            "notifications", tenant_id, headers, body, NotificationsRequest, command, principal
        )

    async def _handle(
        self,
        endpoint: Endpoint,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        model: type[AdminRequest],
        build: Callable[[BaseModel, str], Command],
        principal: Principal | None = None,
        *,
        context: Fingerprint = (),
        default_key: Callable[[AdminRequest], str] | None = None,
    ) -> Reply:
        """`context`: what else makes two requests differ (a path's ids); `default_key`:
        the key of a request sent without one (None: a fresh key, a new command)."""
        try:
            self._check_tenant(tenant_id)
            actor = self._authorize(endpoint, tenant_id, headers, principal).subject
            request, key = self._validate(endpoint, tenant_id, headers, body, model)
            self._check_sealable(request, tenant_id)
        except _Refused as refused:
            return refused.reply

        def command(request: BaseModel, command_id: str) -> Command:
            # Who asked, into the command and so into its ledger entry.
            return build(request, command_id).model_copy(update={"actor": actor})

        if key is None and default_key is not None:
            key = default_key(request)
        if key is None:
            # No key: a new command each time; the answer names a key to retry with.
            key = self._new_command_id()
            built = command(request, command_id_for(endpoint, key))
            return await self._publish(built, built.type, tenant_id, key)
        scope = (tenant_id, endpoint, key)
        fingerprint = self._fingerprint(request) + context
        seen = self.idempotency.get(scope)
        if seen is not None and seen.fingerprint != fingerprint:
            # Even after a 503: that command may have landed all the same.
            return self._key_reused(tenant_id, endpoint)
        if seen is not None and not _failed(seen):
            # The same request again: the first one's answer, once it has one.
            return await asyncio.shield(seen.answer)
        # New, or the same request after a failure (503): publish (again).
        entry = self.idempotency.remember(scope, fingerprint)
        built = command(request, command_id_for(endpoint, key))
        publishing = self._publish(built, built.type, tenant_id, key)
        return await self._settle(tenant_id, entry, publishing)

    async def _settle(
        self, tenant_id: str, entry: _Remembered, publishing: Awaitable[Reply]
    ) -> Reply:
        """The request's answer, which its retries (and requests waiting) get too."""
        try:
            # A copy at its own size: orjson's output keeps a 4 KiB buffer, and the
            # answer is held for a day.
            reply = _compact(await publishing)
        except BaseException:
            entry.answer.set_result(
                _error_reply(503, "interrupted", "the request was interrupted; retry", tenant_id)
            )
            raise
        entry.answer.set_result(reply)
        return reply

    def _check_sealable(self, request: AdminRequest, tenant_id: str) -> None:
        if isinstance(request, NotificationsRequest) and (
            request.webhook_secret is not None and self.sealer is None
        ):
            raise _Refused(
                _error_reply(
                    503,
                    "secrets_disabled",
                    "webhook secrets cannot be stored: set METER_SECRETS_KEY on the workers "
                    "(and the same key on `meter notifier`)",
                    tenant_id,
                )
            )

    def _fingerprint(self, request: AdminRequest) -> Fingerprint:
        # A limits request's absent field (kept) differs from its null (cleared).
        fields = request.model_dump(
            exclude_unset=isinstance(request, LimitsRequest | AutoRechargePatch)
        )
        if isinstance(request, NotificationsRequest):
            # Held for a day: the secret's digest tells a changed body, never the secret.
            secret = fields.pop("webhook_secret")
            fields["webhook_secret"] = (
                None if secret is None else hashlib.sha256(secret.encode()).hexdigest()
            )
            return tuple(sorted((name, _canonical(value)) for name, value in fields.items()))
        if fields.get("currency") is None:
            fields["currency"] = self.currency  # implied by the rate card
        return tuple(sorted((name, _canonical(value)) for name, value in fields.items()))

    def _key_reused(self, tenant_id: str, endpoint: Endpoint) -> Reply:
        message = (
            f"was used for a different request to this endpoint ({endpoint}) for this "
            "tenant; a retry must repeat the same body, a new request needs a new key"
        )
        error = FieldError(loc=["header", IDEMPOTENCY_HEADER], msg=message, type="key_reused")
        return _error_reply(
            422,
            "idempotency_key_reused",
            f"header.{IDEMPOTENCY_HEADER}: {message}",
            tenant_id,
            [error],
        )

    # ---- steps -------------------------------------------------------------------

    def _check_tenant(self, tenant_id: str) -> None:
        """A path that is no tenant id is a 400 before anything else (as on the read API)."""
        problem = tenant_id_problem(tenant_id)
        if problem is not None:
            raise _Refused(_error_reply(400, "invalid_tenant_id", problem, None))

    def _authorize(
        self,
        endpoint: Endpoint,
        tenant_id: str,
        headers: Mapping[str, str],
        principal: Principal | None,
    ) -> Principal:
        """Who is asking: 401/403 (or 503 when disabled) unless they may."""
        if self.access.jwt:
            if principal is not None:  # checked by auth.middleware already
                return principal
            try:
                return self.access.check(headers, auth.ROUTES[_ROUTES[endpoint]], tenant_id)
            except AuthError as refused:
                raise _Refused(
                    _error_reply(
                        refused.status,
                        refused.code,
                        refused.detail,
                        tenant_id,
                        headers=refused.challenge(),
                    )
                ) from None
        if not self._token:
            raise _Refused(
                _error_reply(
                    503,
                    "admin_disabled",
                    "admin API disabled: set METER_ADMIN_TOKEN on the workers to enable it",
                    tenant_id,
                )
            )
        challenge = {"WWW-Authenticate": 'Bearer realm="credits-meter admin"'}
        scheme, _, given = (_header(headers, "Authorization") or "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise _Refused(
                _error_reply(
                    401,
                    "unauthorized",
                    "missing bearer token: send 'Authorization: Bearer <METER_ADMIN_TOKEN>'",
                    tenant_id,
                    headers=challenge,
                )
            )
        if not hmac.compare_digest(given.encode(), self._token):
            # Who tried is worth a log line; what they tried is not.
            log.warning("admin API: wrong bearer token for tenant %r", tenant_id)
            raise _Refused(_error_reply(403, "forbidden", "wrong bearer token", tenant_id))
        return auth.ADMIN_PRINCIPAL

    def _validate(
        self,
        endpoint: Endpoint,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        model: type[AdminRequest],
    ) -> tuple[AdminRequest, str | None]:
        """The request and its key, or 400/413/422 listing every problem at once.

        Refuses here what the processor would reject later (to credits.rejected, after
        a 202): another currency than the card's, more decimal places than it keeps.
        """
        if body is None:
            raise _Refused(
                _error_reply(
                    413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes", tenant_id
                )
            )
        errors: list[FieldError] = []
        key = _header(headers, IDEMPOTENCY_HEADER)
        if key is not None:
            try:
                _COMMAND_ID.validate_python(key)
            except ValidationError as exc:
                errors += _field_errors(exc, ("header", IDEMPOTENCY_HEADER))
            for other, prefix in _ID_PREFIXES.items():
                if endpoint == "funds" and key.startswith(prefix):
                    errors.append(
                        FieldError(
                            loc=["header", IDEMPOTENCY_HEADER],
                            msg=f"must not start with {prefix!r} (the {other} endpoint's "
                            "command ids do)",
                            type="reserved_prefix",
                        )
                    )
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Refused(
                _error_reply(400, "invalid_json", f"the body is not JSON: {exc}", tenant_id)
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
        if request is not None and currency not in (None, self.currency):
            # The processor would reject it to credits.rejected; say so now instead.
            errors.append(
                FieldError(
                    loc=["body", "currency"],
                    msg=f"must be {self.currency}, the rate card's currency",
                    type="currency_mismatch",
                )
            )
        if request is not None and self.decimals is not None:
            for name, value in request:
                if isinstance(value, Decimal) and decimal_places(value) > self.decimals:
                    errors.append(
                        FieldError(
                            loc=["body", name],
                            msg=f"has more than {self.decimals} decimal places; balances "
                            f"are kept at the rate card's {self.decimals}",
                            type="too_many_decimals",
                        )
                    )
        if errors or request is None:
            detail = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors)
            raise _Refused(_error_reply(422, "invalid_request", detail, tenant_id, errors))
        return request, key

    async def _publish(
        self, command: Command, kind: CommandKind, tenant_id: str, key: str
    ) -> Reply:
        command_id = command.command_id
        if isinstance(command, TenantLimitsConfigured | AutoRechargeChanged):
            # What the request named and no more: an absent limit is kept, a null cleared.
            value = command.model_dump_json(exclude_unset=True).encode()
        else:
            value = command.model_dump_json(exclude_none=True).encode()
        publishing = asyncio.ensure_future(
            self._publisher.publish(self.commands_topic, tenant_id.encode(), value)
        )
        # asyncio.wait, not wait_for: a slow send is not cancelled half-way, it may
        # still land, and the same key makes the client's retry harmless either way.
        done, _ = await asyncio.wait({publishing}, timeout=self._publish_timeout)
        failure: BaseException | None = None
        if not done:
            failure = TimeoutError(f"no acknowledgement within {self._publish_timeout:g}s")
        else:
            failure = publishing.exception()
        if failure is not None:
            log.error("admin API: %s for tenant %r not published: %r", kind, tenant_id, failure)
            return _error_reply(
                503,
                "publish_failed",
                f"could not publish the command to Kafka ({failure!r}); "
                f"retry with the same {IDEMPOTENCY_HEADER} ({key})",
                tenant_id,
            )
        log.info("admin API: %s for tenant %r published as %r", kind, tenant_id, command_id)
        accepted = CommandAccepted(
            status="accepted",
            type=kind,
            command_id=command_id,
            tenant_id=tenant_id,
        )
        return Reply(
            202,
            accepted.to_json(),
            {"Location": command_location(command_id, tenant_id), IDEMPOTENCY_HEADER: key},
        )


# ---------------------------------------------------------------------- on a worker


class FaustCommandPublisher:
    """Sends through the worker's own producer and waits for the broker's ack."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = self._app.topic(
                topic, key_serializer="raw", value_serializer="raw"
            )
        sent: Any = await t.send(key=key, value=value)
        await sent  # a FutureMessage: resolves with the record's metadata once acked


class MeterLike(Protocol):
    """What `install` reads from `processor.worker.app.Meter`."""

    @property
    def app(self) -> Any: ...
    @property
    def cfg(self) -> Any: ...
    @property
    def card(self) -> Any: ...
    @property
    def names(self) -> Any: ...
    @property
    def access(self) -> Access: ...


def _twice(body: bytes) -> str | None:
    try:
        return first_duplicate_key(body)
    except (ValueError, RecursionError):  # orjson read it; nothing more to tell
        return None


async def _body(request: Request) -> bytes | None:
    """The body, or None when it is larger than any admin request can be."""
    # Faust's web driver here is aiohttp; its Request type does not say so.
    aio = cast(web.Request, request)
    length = aio.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return None
    raw = await aio.content.read(MAX_BODY_BYTES + 1)
    # StreamReader.read(n) may stop short of n; read to the end (bounded) to be sure.
    while len(raw) <= MAX_BODY_BYTES:
        more = await aio.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not more:
            break
        raw += more
    return raw if len(raw) <= MAX_BODY_BYTES else None


def install(meter: MeterLike) -> AdminAPI:
    """Add the admin endpoints and GET /openapi.json to the worker's web server."""
    api = AdminAPI(
        token=meter.cfg.admin_token,
        currency=meter.card.currency,
        commands_topic=meter.names.commands,
        publisher=FaustCommandPublisher(meter.app),
        decimals=meter.card.decimals,
        access=meter.access,
        sealer=None if meter.cfg.secrets_key is None else Sealer(meter.cfg.secrets_key),
    )
    if not api.enabled:
        log.info("admin API disabled (METER_ADMIN_TOKEN is not set)")
    document = openapi.render().encode()

    def respond(view: View, reply: Reply) -> Response:
        content_type = problems.PROBLEM_JSON if reply.status >= 400 else JSON
        return view.bytes(
            reply.body, content_type=content_type, status=reply.status, headers=reply.headers
        )

    @meter.app.page("/tenants/{tenant_id}/funds")
    class FundsPage(View):
        async def post(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            return respond(self, await api.add_funds(tenant_id, request.headers, body, principal))

    @meter.app.page("/tenants/{tenant_id}/auto-recharge")
    class AutoRechargePage(View):
        async def put(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            reply = await api.configure_auto_recharge(tenant_id, request.headers, body, principal)
            return respond(self, reply)

        async def patch(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            reply = await api.change_auto_recharge(tenant_id, request.headers, body, principal)
            return respond(self, reply)

        async def delete(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            reply = await api.disable_auto_recharge(tenant_id, request.headers, body, principal)
            return respond(self, reply)

    @meter.app.page("/tenants/{tenant_id}/limits")
    class LimitsPage(View):
        async def put(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            reply = await api.configure_limits(tenant_id, request.headers, body, principal)
            return respond(self, reply)

    @meter.app.page("/tenants/{tenant_id}/recharges/{request_id}/outcome")
    class RechargeOutcomePage(View):
        async def post(self, request: Request, tenant_id: str, request_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            reply = await api.record_recharge_outcome(
                tenant_id, request_id, request.headers, body, principal
            )
            return respond(self, reply)

    @meter.app.page("/tenants/{tenant_id}/notifications")
    class NotificationsPage(View):
        async def put(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            reply = await api.configure_notifications(tenant_id, request.headers, body, principal)
            return respond(self, reply)

    @meter.app.page("/openapi.json")
    class OpenAPIPage(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(document, content_type=JSON)

    return api
