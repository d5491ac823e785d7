"""How a delivery leaves: an email over SMTP, or a Standard Webhooks POST.

Both are idempotent for the receiver: a delivery sent again carries the same
`Message-ID` (from the alert's own id) or the same `webhook-id` (the alert's id) and
the same body; only `webhook-timestamp` and the signature over it are of the try.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
import aiosmtplib
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from processor.config.sealing import Sealer, SealError
from processor.notifier.events import SUBJECTS
from processor.notifier.store import Delivery

__all__ = [
    "EmailChannel",
    "Failure",
    "SmtpConfig",
    "WebhookChannel",
    "message_id",
    "readable_time",
    "tenant_page",
    "webhook_headers",
]

USER_AGENT: Final = "credits-meter-notifier/1"
_ID_SAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


class Failure(Exception):
    """A try that did not deliver; the text is safe to log and store (no secret)."""


def message_id(output_id: str) -> str:
    """The email's Message-ID: the same for every copy sent of one alert."""
    return f"<{_ID_SAFE.sub('_', output_id)}@credits-meter.notifier>"


# ---------------------------------------------------------------------------- email


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    starttls: bool
    username: str | None
    password: SecretStr | None
    sender: str
    timeout: float
    # The console's address as the tenant's admins reach it (METER_CONSOLE_URL): each
    # email then links to the tenant's page, where the balance and these settings are.
    console_url: str | None = None


_templates: Final = Environment(
    loader=PackageLoader("processor.notifier", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def readable_time(value: Any) -> str:
    """An alert's RFC 3339 time as a reader takes it in: `7 Dec 2026, 21:28 UTC`.
    Anything else (blank, not a time) as it is."""
    try:
        at = datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return str(value)
    return f"{at.day} {at:%b %Y, %H:%M} UTC"


def readable_money(value: Any, currency: Any) -> str:
    """An alert's amount as a reader takes it in: `1,050.00 USD`, `2.266 USD`.

    The contract keeps the rate card's places ("95.0000"); a reader wants a currency's
    two, and more only where they hold something. A debt's minus is U+2212, as the
    console's. Anything that is no number, as it is.
    """
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return f"{value} {currency}".strip()
    if not amount.is_finite():
        return f"{value} {currency}".strip()
    places = max(2, -min(0, int(amount.normalize().as_tuple().exponent)))
    sign = "\u2212" if amount < 0 else ""
    return f"{sign}{abs(amount):,.{places}f} {currency}".strip()


def readable_reason(value: Any) -> str:
    """A failure's reason code in words: `processor_unavailable` → `processor unavailable`."""
    return str(value).replace("_", " ")


def tenant_page(console_url: str | None, tenant_id: str) -> str | None:
    """The console's page of the tenant, or None without a console address."""
    if not console_url:
        return None
    return f"{console_url.rstrip('/')}/tenants/{quote(tenant_id, safe='')}"


_templates.filters["readable_time"] = readable_time
_templates.filters["money"] = readable_money
_templates.filters["readable_reason"] = readable_reason


class _Data(dict[str, Any]):
    """A notification's data for the templates: a field the alert lacks is blank."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name, "")


class EmailChannel:
    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def message(self, delivery: Delivery) -> EmailMessage:
        data = _Data(json.loads(delivery.payload)["data"])
        context = {
            "subject": SUBJECTS.get(delivery.event, delivery.event),
            "event": delivery.event,
            "tenant_id": delivery.tenant_id,
            "output_id": delivery.output_id,
            "data": data,
            "page": tenant_page(self.config.console_url, delivery.tenant_id),
        }
        msg = EmailMessage()
        msg["Subject"] = f"[{delivery.tenant_id}] {context['subject']}"
        msg["From"] = self.config.sender
        msg["To"] = ", ".join(delivery.target.split(","))
        msg["Message-ID"] = message_id(delivery.output_id)
        msg["Date"] = format_datetime(delivery.occurred_at.astimezone(UTC))
        msg["X-Credits-Event"] = delivery.event
        msg.set_content(_templates.get_template("email.txt.j2").render(context))
        msg.add_alternative(
            _templates.get_template("email.html.j2").render(context), subtype="html"
        )
        return msg

    async def send(self, delivery: Delivery) -> None:
        cfg = self.config
        try:
            await aiosmtplib.send(
                self.message(delivery),
                hostname=cfg.host,
                port=cfg.port,
                start_tls=cfg.starttls,
                username=cfg.username,
                password=None if cfg.password is None else cfg.password.get_secret_value(),
                timeout=cfg.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise Failure(f"smtp: {type(exc).__name__}: {str(exc)[:300]}") from None


# -------------------------------------------------------------------------- webhook


def webhook_headers(secret: str, webhook_id: str, at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for one try (`standardwebhooks` signs)."""
    signature = Webhook(secret).sign(webhook_id, at.astimezone(UTC), body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def is_public(address: str) -> bool:
    """A globally routable address: not loopback, private, link-local, CGNAT, ..."""
    try:
        return ipaddress.ip_address(address.partition("%")[0]).is_global
    except ValueError:
        return False


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


class PrivateAddress(OSError):
    """A webhook host that resolves to loopback or private addresses only."""


class PublicOnlyResolver(aiohttp.abc.AbstractResolver):
    """Resolves a webhook's host to its public addresses only.

    A tenant admin chooses the URL: without this, a webhook could make the notifier
    POST to the deployment's own services (a worker's admin API, a database, a cloud
    metadata endpoint). Filtering what the name resolves to, at connection time, also
    holds against a name that resolves to a public address when set and a private one
    later.
    """

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        public = [answer for answer in found if is_public(str(answer["host"]))]
        if not public:
            raise PrivateAddress(f"{host} is not a public address (refused)")
        return public

    async def close(self) -> None:
        await self._inner.close()


class WebhookChannel:
    def __init__(self, sealer: Sealer | None, timeout: float, allow_private: bool = False) -> None:
        """`allow_private`: deliver to loopback and private addresses too
        (METER_NOTIFY_ALLOW_PRIVATE_WEBHOOKS; for local demos and tests)."""
        self.sealer = sealer
        self.timeout = timeout
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Never follow a redirect: the signed request goes where it was set.
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=None
                if self.allow_private
                else aiohttp.TCPConnector(resolver=PublicOnlyResolver()),
            )
        return self._session

    def secret(self, delivery: Delivery) -> str:
        if delivery.sealed_secret is None:
            raise Failure("webhook: no secret configured")
        if self.sealer is None:
            raise Failure("webhook: METER_SECRETS_KEY is not set on the notifier")
        try:
            return self.sealer.open(delivery.sealed_secret)
        except SealError as exc:
            raise Failure(f"webhook: {exc}") from None

    async def send(self, delivery: Delivery, now: datetime) -> int:
        """POST the delivery; its status when 2xx, else Failure."""
        headers = webhook_headers(self.secret(delivery), delivery.output_id, now, delivery.payload)
        host = urlsplit(delivery.target).hostname or ""
        if not self.allow_private and _is_ip_literal(host) and not is_public(host):
            # An address in the URL is never resolved, so the resolver cannot refuse it.
            raise Failure(f"webhook: {host} is not a public address (refused)")
        try:
            async with self._client().post(
                delivery.target,
                data=delivery.payload.encode("utf-8"),
                headers=headers,
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            raise Failure(f"webhook: no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            refused = getattr(exc, "os_error", None)  # how aiohttp wraps the resolver's
            if isinstance(refused, PrivateAddress):
                raise Failure(f"webhook: {refused}") from None
            raise Failure(f"webhook: {type(exc).__name__}: {str(exc)[:300]}") from None
        if not 200 <= status < 300:
            raise Failure(f"webhook: HTTP {status}")
        return status
