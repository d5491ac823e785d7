"""Local receivers for the notifier's deliveries: `make run` shows them, tests check them.

`MailCatcher` is a real SMTP server (aiosmtpd) that keeps every message it is given.
`WebhookReceiver` is a real HTTP server (aiohttp) that verifies each request's
Standard Webhooks signature with the tenant's secret and answers as told: fail the
first tries of each webhook-id, hang once past the sender's timeout, then 204.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from processor.dev.kafka_local import free_port

__all__ = ["Hook", "MailCatcher", "WebhookReceiver"]


class MailCatcher:
    """An SMTP server on 127.0.0.1 (a free port) keeping what it receives."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def start(self) -> MailCatcher:
        from aiosmtpd.controller import Controller

        # aiosmtpd logs every SMTP command at INFO; the live view and tests do not.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[EmailMessage]:
        with self._lock:
            return list(self.messages)


@dataclass(frozen=True)
class Hook:
    """One request the receiver got."""

    tenant_id: str
    webhook_id: str
    timestamp: str
    body: bytes
    verified: bool
    answered: int  # the status it answered (0: it hung)


@dataclass
class WebhookReceiver:
    """POST /hooks/{tenant_id}, verified with that tenant's secret (`secrets`)."""

    secrets: dict[str, str]
    fail_first: int = 0
    hang_once_seconds: float = 0.0
    port: int = field(default_factory=free_port)
    hooks: list[Hook] = field(default_factory=list)
    tries: Counter[str] = field(default_factory=Counter)
    hung: bool = False
    _runner: web.AppRunner | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, tenant_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{tenant_id}"

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hooks/{tenant_id}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._released.set()  # a hanging answer ends now
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def delivered(self) -> list[Hook]:
        """The requests answered 2xx."""
        return [h for h in self.hooks if 200 <= h.answered < 300]

    async def _handle(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant_id"]
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        secret = self.secrets.get(tenant)
        verified = False
        if secret is not None:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False

        def hook(status: int) -> Hook:
            return Hook(
                tenant, webhook_id, headers.get("webhook-timestamp", ""), body, verified, status
            )

        if not verified:
            self.hooks.append(hook(401))
            return web.Response(status=401)
        self.tries[webhook_id] += 1
        if self.tries[webhook_id] <= self.fail_first:
            self.hooks.append(hook(500))
            return web.Response(status=500, text="try again")
        if self.hang_once_seconds and not self.hung:
            self.hung = True
            self.hooks.append(hook(0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.hang_once_seconds)
            return web.Response(status=204)
        self.hooks.append(hook(204))
        return web.Response(status=204)
