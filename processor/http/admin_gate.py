"""The way every admin request takes to become a contract command on credits.commands.

Tenant id, then who is asking (`_authorize`), then the body (admin_requests.validate),
then the Idempotency-Key (idempotency.py), then the publish, acknowledged by the broker
within PUBLISH_TIMEOUT_SECONDS. `AdminAPI` (processor/http/admin.py) adds the endpoints.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Protocol

from pydantic import BaseModel, SecretStr

from processor.config.sealing import Sealer
from processor.http import auth
from processor.http.admin_requests import (
    ENDPOINT_ROUTES,
    IDEMPOTENCY_HEADER,
    AdminRequest,
    Command,
    Endpoint,
    Fingerprint,
    Refused,
    Reply,
    command_id_for,
    command_location,
    error_reply,
    fingerprint,
    header_value,
    key_reused,
    validate,
)
from processor.http.auth import Access, AuthError, Principal
from processor.http.idempotency import IdempotencyCache, Remembered, compact, failed
from processor.http.views import tenant_id_problem
from schemas.admin import (
    AdminCommandType,
    CommandAccepted,
    NotificationsPatch,
    NotificationsRequest,
)
from schemas.inputs import AutoRechargeChanged, NotificationsChanged, TenantLimitsConfigured

__all__ = [
    "PUBLISH_TIMEOUT_SECONDS",
    "CommandGate",
    "CommandPublisher",
]

log = logging.getLogger(__name__)

# How long a request waits for the broker to acknowledge the command. Past it the
# client is told to retry with the same key, which is safe either way.
PUBLISH_TIMEOUT_SECONDS: Final = 15.0


class CommandPublisher(Protocol):
    """Puts one record on a topic and returns once the broker has acknowledged it."""

    async def publish(self, topic: str, key: bytes, value: bytes) -> None: ...


class CommandGate:
    """Checks, remembers and publishes admin requests, independent of the web framework."""

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
            request, key = validate(
                endpoint, tenant_id, headers, body, model, self.currency, self.decimals
            )
            self._check_sealable(request, tenant_id)
        except Refused as refused:
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
        given = fingerprint(request, self.currency) + context
        seen = self.idempotency.get(scope)
        if seen is not None and seen.fingerprint != given:
            # Even after a 503: that command may have landed all the same.
            return key_reused(tenant_id, endpoint)
        if seen is not None and not failed(seen):
            # The same request again: the first one's answer, once it has one.
            return await asyncio.shield(seen.answer)
        # New, or the same request after a failure (503): publish (again).
        entry = self.idempotency.remember(scope, given)
        built = command(request, command_id_for(endpoint, key))
        publishing = self._publish(built, built.type, tenant_id, key)
        return await self._settle(tenant_id, entry, publishing)

    async def _settle(
        self, tenant_id: str, entry: Remembered, publishing: Awaitable[Reply]
    ) -> Reply:
        """The request's answer, which its retries (and requests waiting) get too."""
        try:
            # A copy at its own size: orjson's output keeps a 4 KiB buffer, and the
            # answer is held for a day.
            reply = compact(await publishing)
        except BaseException:
            entry.answer.set_result(
                error_reply(503, "interrupted", "the request was interrupted; retry", tenant_id)
            )
            raise
        entry.answer.set_result(reply)
        return reply

    def _sealed(self, secret: str | None) -> str | None:
        """The webhook secret as commands carry it: sealed (METER_SECRETS_KEY)."""
        if secret is None:
            return None
        assert self.sealer is not None  # _check_sealable refused the request otherwise
        return self.sealer.seal(secret)

    def _check_sealable(self, request: AdminRequest, tenant_id: str) -> None:
        if isinstance(request, NotificationsRequest | NotificationsPatch) and (
            request.webhook_secret is not None and self.sealer is None
        ):
            raise Refused(
                error_reply(
                    503,
                    "secrets_disabled",
                    "webhook secrets cannot be stored: set METER_SECRETS_KEY on the workers "
                    "(and the same key on `meter notifier`)",
                    tenant_id,
                )
            )

    def _check_tenant(self, tenant_id: str) -> None:
        """A path that is no tenant id is a 400 before anything else (as on the read API)."""
        problem = tenant_id_problem(tenant_id)
        if problem is not None:
            raise Refused(error_reply(400, "invalid_tenant_id", problem, None))

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
                return self.access.check(headers, auth.ROUTES[ENDPOINT_ROUTES[endpoint]], tenant_id)
            except AuthError as refused:
                raise Refused(
                    error_reply(
                        refused.status,
                        refused.code,
                        refused.detail,
                        tenant_id,
                        headers=refused.challenge(),
                    )
                ) from None
        if not self._token:
            raise Refused(
                error_reply(
                    503,
                    "admin_disabled",
                    "admin API disabled: set METER_ADMIN_TOKEN on the workers to enable it",
                    tenant_id,
                )
            )
        challenge = {"WWW-Authenticate": 'Bearer realm="credits-meter admin"'}
        scheme, _, given = (header_value(headers, "Authorization") or "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise Refused(
                error_reply(
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
            raise Refused(error_reply(403, "forbidden", "wrong bearer token", tenant_id))
        return auth.ADMIN_PRINCIPAL

    async def _publish(
        self, command: Command, kind: AdminCommandType, tenant_id: str, key: str
    ) -> Reply:
        command_id = command.command_id
        if isinstance(command, TenantLimitsConfigured | AutoRechargeChanged | NotificationsChanged):
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
            return error_reply(
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
