"""The admin endpoints and GET /openapi.json on a worker's web server (Faust, aiohttp).

Thin: each view reads the body (bounded by MAX_BODY_BYTES) and the principal, and
answers what `AdminAPI` (processor/http/admin.py) replies.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol, cast

from aiohttp import web
from faust.web import Request, Response, View

from processor.config.sealing import Sealer
from processor.http import auth, openapi, problems
from processor.http.admin import AdminAPI
from processor.http.admin_requests import MAX_BODY_BYTES, Reply
from processor.http.auth import Access

__all__ = ["FaustCommandPublisher", "install"]

log = logging.getLogger(__name__)

JSON: Final = "application/json"


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

        async def patch(self, request: Request, tenant_id: str) -> Response:
            body = await _body(request)
            principal = auth.principal_of(request)
            reply = await api.change_notifications(tenant_id, request.headers, body, principal)
            return respond(self, reply)

    @meter.app.page("/openapi.json")
    class OpenAPIPage(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(document, content_type=JSON)

    return api
