"""Added: the contract's types for telling people (`meter notifier`, docs/contract.md).

Shared by the `notifications_configured` command, the admin request that makes it,
the account view and the `credits.notification-settings` topic, so each accepts
exactly what the others do; and (added) by the partial `notifications_changed`
command and its PATCH.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Final, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, Strict, StringConstraints

__all__ = [
    "MAX_EMAILS",
    "NOTIFICATION_EVENTS",
    "EmailAddress",
    "Emails",
    "Events",
    "NotificationEvent",
    "SealedSecret",
    "WebhookSecret",
    "WebhookUrl",
    "all_events",
    "check_emails",
    "check_events",
    "check_notifications_named",
    "check_webhook_pair",
]

# What the notifier tells people about. `recharge_failed` and `auto_recharge_suspended`
# name one notification (the `recharge_failed` alert: the last attempt failed and
# auto-recharge is suspended); selecting either selects it, and it is sent once.
NotificationEvent = Literal[
    "low_balance",
    "exhausted",
    "restored",
    "recharge_succeeded",
    "recharge_failed",
    "auto_recharge_suspended",
    "funds_expiring",
    "funds_expired",
]
NOTIFICATION_EVENTS: Final[tuple[NotificationEvent, ...]] = get_args(NotificationEvent)
MAX_EMAILS: Final = 10

# A mailbox as an admin types it: no display name, no comments, no quoting, nothing
# (CR, LF, <, >, comma) that could add a header or a recipient.
EMAIL_PATTERN: Final = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
EmailAddress = Annotated[str, Strict(), StringConstraints(max_length=254, pattern=EMAIL_PATTERN)]


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    return value


WebhookUrl = Annotated[
    str,
    Strict(),
    StringConstraints(max_length=2048, pattern=r"^[!-~]+$"),
    AfterValidator(_webhook_url),
]

# A Standard Webhooks secret: "whsec_" and the base64 of 24 to 64 random bytes.
WHSEC_PREFIX: Final = "whsec_"


def _whsec(value: str) -> str:
    body = value.removeprefix(WHSEC_PREFIX)
    if body == value:
        raise ValueError("must start with whsec_ (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ and base64 after it") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("must hold 24 to 64 bytes of key after whsec_ (base64)")
    return value


WebhookSecret = Annotated[str, Strict(), StringConstraints(max_length=100), AfterValidator(_whsec)]

# The webhook secret as the admin API sealed it (a Fernet token, METER_SECRETS_KEY):
# the only form a command, an account value or a topic ever carries.
SealedSecret = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9_=-]+$")
]

Events = Annotated[list[NotificationEvent], Field(min_length=1, max_length=16)]
Emails = Annotated[list[EmailAddress], Field(max_length=MAX_EMAILS)]


def all_events() -> list[NotificationEvent]:
    return list(NOTIFICATION_EVENTS)


def check_events(events: Sequence[str]) -> None:
    if len(set(events)) != len(events):
        raise ValueError("events names an event more than once")


def check_emails(emails: Sequence[str]) -> None:
    if len({e.lower() for e in emails}) != len(emails):
        raise ValueError("emails names an address more than once")


def check_webhook_pair(url: str | None, secret: str | None, secret_name: str) -> None:
    if (url is None) != (secret is None):
        raise _apart(secret_name)


def _apart(secret_name: str) -> ValueError:
    return ValueError(f"webhook_url and {secret_name} go together: give both or neither")


def check_notifications_named(
    given: set[str],
    emails: Sequence[str] | None,
    events: Sequence[str] | None,
    url: str | None,
    secret: str | None,
    secret_name: str,
) -> None:
    """A partial notifications change (a command and the admin PATCH alike) names at
    least one of emails, events, webhook_url; never a null list; and the webhook URL
    with its secret (`webhook_url: null` alone removes both). Raises ValueError."""
    if secret_name in given and "webhook_url" not in given:
        raise _apart(secret_name)
    if not given & {"emails", "events", "webhook_url"}:
        raise ValueError("name at least one of emails, events, webhook_url")
    for name, value in (("emails", emails), ("events", events)):
        if name in given and value is None:
            raise ValueError(f"{name} may not be null (only webhook_url may be, to remove it)")
    check_webhook_pair(url, secret, secret_name)
    if emails is not None:
        check_emails(emails)
    if events is not None:
        check_events(events)
