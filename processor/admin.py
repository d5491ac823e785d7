"""The admin HTTP API: manual top-ups and auto-recharge settings, as contract commands.

    POST /tenants/{tenant_id}/funds          {"amount": "50.00", "currency": "USD"}
    PUT  /tenants/{tenant_id}/auto-recharge  {"enabled": true, "recharge_amount": "25.00",
                                              "trigger_balance": "5.00"}

Every worker serves both. A request never touches an account directly: it becomes a
`funds_added` (source `manual`) or `auto_recharge_configured` command on
`credits.commands`, keyed by tenant, exactly what any other admin tool would send,
so the worker that owns the tenant applies it through the same exactly-once path as
everything else. The `Idempotency-Key` header becomes the `command_id`; the processor
drops a command id it has seen, so a client that retries after a timeout, with the
same key, tops up once.

Authentication is one bearer token (`METER_ADMIN_TOKEN`), compared in constant time.
Without it configured the endpoints answer 503: an admin API that is open because
someone forgot a variable would let anyone mint credit.

`AdminAPI` is plain code over a `CommandPublisher`, tested without Faust; `install`
puts it on a worker's web server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, cast

import orjson
from aiohttp import web
from faust.web import Request, Response, View
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from processor import openapi
from schemas.admin import (
    AutoRechargeRequest,
    CommandAccepted,
    ErrorBody,
    FieldError,
    FundsRequest,
)
from schemas.inputs import AutoRechargeConfigured, FundsAdded, first_duplicate_key
from schemas.types import (
    CURRENCY_PATTERN,
    ID_PATTERN,
    TENANT_ID_PATTERN,
    CommandId,
    TenantId,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "AdminAPI",
    "CommandPublisher",
    "FaustCommandPublisher",
    "Reply",
    "install",
]

log = logging.getLogger(__name__)

CommandKind = Literal["funds_added", "auto_recharge_configured"]

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
JSON: Final = "application/json"
# Far above any real body ({"amount": ..., "currency": ...}); refuse before reading.
MAX_BODY_BYTES: Final = 16 * 1024
# How long a request waits for the broker to acknowledge the command. Past it the
# client is told to retry with the same key, which is safe either way.
PUBLISH_TIMEOUT_SECONDS: Final = 15.0

_TENANT: Final[TypeAdapter[str]] = TypeAdapter(TenantId)
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
    body = ErrorBody(error=code, detail=detail, tenant_id=tenant_id, errors=errors)
    return Reply(status, body.to_json(), headers or {})


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


class AdminAPI:
    """The admin endpoints' logic, independent of the web framework."""

    def __init__(
        self,
        token: SecretStr | None,
        currency: str,
        commands_topic: str,
        publisher: CommandPublisher,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_command_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        publish_timeout: float = PUBLISH_TIMEOUT_SECONDS,
    ) -> None:
        # Bytes once, here: compare_digest refuses non-ASCII str, and an operator's
        # token may well contain some.
        self._token = None if token is None else token.get_secret_value().encode()
        self.currency = currency
        self.commands_topic = commands_topic
        self._publisher = publisher
        self._clock = clock
        self._new_command_id = new_command_id
        self._publish_timeout = publish_timeout

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    # ---- endpoints ---------------------------------------------------------------

    async def add_funds(
        self, tenant_id: str, headers: Mapping[str, str], body: bytes | None
    ) -> Reply:
        """POST /tenants/{tenant_id}/funds -> a manual `funds_added` command.

        `body` is None when it was too large to read.
        """
        try:
            self._authorize(tenant_id, headers)
            request, command_id = self._validate(tenant_id, headers, body, FundsRequest)
            assert isinstance(request, FundsRequest)
            command: BaseModel = FundsAdded(
                type="funds_added",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                amount=request.amount,
                currency=request.currency,
                source="manual",
            )
            return await self._publish(command, "funds_added", tenant_id, command_id)
        except _Refused as refused:
            return refused.reply

    async def configure_auto_recharge(
        self, tenant_id: str, headers: Mapping[str, str], body: bytes | None
    ) -> Reply:
        """PUT /tenants/{tenant_id}/auto-recharge -> an `auto_recharge_configured` command."""
        try:
            self._authorize(tenant_id, headers)
            request, command_id = self._validate(tenant_id, headers, body, AutoRechargeRequest)
            assert isinstance(request, AutoRechargeRequest)
            command: BaseModel = AutoRechargeConfigured(
                type="auto_recharge_configured",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                enabled=request.enabled,
                recharge_amount=request.recharge_amount,
                trigger_balance=request.trigger_balance,
                currency=request.currency,
            )
            return await self._publish(command, "auto_recharge_configured", tenant_id, command_id)
        except _Refused as refused:
            return refused.reply

    # ---- steps -------------------------------------------------------------------

    def _authorize(self, tenant_id: str, headers: Mapping[str, str]) -> None:
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

    def _validate(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        model: type[FundsRequest] | type[AutoRechargeRequest],
    ) -> tuple[FundsRequest | AutoRechargeRequest, str]:
        """The request, or 400/413/422 listing every problem at once (path, header, body)."""
        if body is None:
            raise _Refused(
                _error_reply(
                    413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes", tenant_id
                )
            )
        errors: list[FieldError] = []
        try:
            _TENANT.validate_python(tenant_id)
        except ValidationError as exc:
            errors += _field_errors(exc, ("path", "tenant_id"))
        key = _header(headers, IDEMPOTENCY_HEADER)
        command_id = self._new_command_id() if key is None else key
        if key is not None:
            try:
                _COMMAND_ID.validate_python(key)
            except ValidationError as exc:
                errors += _field_errors(exc, ("header", IDEMPOTENCY_HEADER))
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Refused(
                _error_reply(400, "invalid_json", f"the body is not JSON: {exc}", tenant_id)
            ) from None
        request: FundsRequest | AutoRechargeRequest | None = None
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
        if request is not None and request.currency not in (None, self.currency):
            # The processor would reject it to credits.rejected; say so now instead.
            errors.append(
                FieldError(
                    loc=["body", "currency"],
                    msg=f"must be {self.currency}, the rate card's currency",
                    type="currency_mismatch",
                )
            )
        if errors or request is None:
            detail = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors)
            raise _Refused(_error_reply(422, "invalid_request", detail, tenant_id, errors))
        return request, command_id

    async def _publish(
        self, command: BaseModel, kind: CommandKind, tenant_id: str, command_id: str
    ) -> Reply:
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
                f"retry with the same {IDEMPOTENCY_HEADER} ({command_id})",
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
            {"Location": f"/tenants/{tenant_id}/account", IDEMPOTENCY_HEADER: command_id},
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
    """What `install` reads from `processor.app.Meter`."""

    @property
    def app(self) -> Any: ...
    @property
    def cfg(self) -> Any: ...
    @property
    def card(self) -> Any: ...
    @property
    def names(self) -> Any: ...


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
    )
    if not api.enabled:
        log.info("admin API disabled (METER_ADMIN_TOKEN is not set)")
    document = openapi.render().encode()

    def respond(view: View, reply: Reply) -> Response:
        return view.bytes(reply.body, content_type=JSON, status=reply.status, headers=reply.headers)

    @meter.app.page("/tenants/{tenant_id}/funds")
    class FundsPage(View):
        async def post(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            return respond(self, await api.add_funds(tenant_id, request.headers, body))

    @meter.app.page("/tenants/{tenant_id}/auto-recharge")
    class AutoRechargePage(View):
        async def put(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            reply = await api.configure_auto_recharge(tenant_id, request.headers, body)
            return respond(self, reply)

    @meter.app.page("/openapi.json")
    class OpenAPIPage(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(document, content_type=JSON)

    return api
