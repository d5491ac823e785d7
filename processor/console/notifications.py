"""The "Limits and notifications" form: who is emailed, about what, and below which
balance, as a tenant admin types them.

Read from the account view to show, read back from a post, and checked as far as the
console can before the API judges (`read_post`): addresses loosely (the API's own
pattern is the judge), at least one event (the API refuses none), the level as any
amount (amounts.py). `api_message` puts what the API still refuses about the lists in
the user's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from multidict import MultiDictProxy

from processor.console.amounts import check_amount
from processor.console.i18n import N_, Translator
from schemas.notifications import MAX_EMAILS, NOTIFICATION_EVENTS

__all__ = ["NotificationsPost", "api_message", "level_changed", "read_post", "shown"]

# Something@something: a typo caught here; the API's pattern decides the rest.
LOOSE_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+")
# Addresses as typed: one a line, commas between them accepted too.
SEPARATORS: Final = re.compile(r"[,\n\r]+")
EMAILS_EXAMPLE: Final = N_("Enter addresses such as name@example.com.")
TOO_MANY: Final = N_("At most %(max)s addresses.")
NO_EVENT: Final = N_("Choose at least one event.")


@dataclass
class NotificationsPost:
    """A post read: `values` to show back, and what the APIs get when `errors` is
    empty (`patch` for the notifications PATCH, `level` for the limits PUT)."""

    values: dict[str, Any]
    patch: dict[str, list[str]]
    level: str | None
    errors: dict[str, list[str]] = field(default_factory=dict)


def shown(account: dict[str, Any] | None, t: Translator) -> dict[str, Any]:
    """The form's values as the account view holds them. No settings yet are those a
    first PATCH starts from (contract: no emails, every event)."""
    settings = (account or {}).get("notifications") or {}
    return {
        "emails": "\n".join(settings.get("emails") or []),
        "events": list(settings.get("events") or NOTIFICATION_EVENTS),
        "notify_below": t.form_amount((account or {}).get("notify_below")),
    }


def _addresses(typed: str) -> list[str]:
    """The addresses typed, each once (the API refuses one named twice)."""
    seen: dict[str, str] = {}
    for part in SEPARATORS.split(typed):
        address = part.strip()
        if address:
            seen.setdefault(address.lower(), address)
    return list(seen.values())


def _email_errors(emails: list[str], t: Translator) -> list[str]:
    errors = [
        t.gettext("“%(address)s” is not an email address.") % {"address": address}
        for address in emails
        if not LOOSE_EMAIL.fullmatch(address)
    ]
    if len(emails) > MAX_EMAILS:
        errors.append(t.gettext(TOO_MANY) % {"max": MAX_EMAILS})
    return errors


def read_post(form: MultiDictProxy[Any], t: Translator, places: int | None) -> NotificationsPost:
    """The form as posted, in the schema's order of events (a forged name dropped)."""
    emails = _addresses(str(form.get("emails") or ""))
    chosen = {str(e) for e in form.getall("events", [])}
    events: list[str] = [e for e in NOTIFICATION_EVENTS if e in chosen]
    typed = str(form.get("notify_below") or "").strip()
    values = {"emails": "\n".join(emails), "events": events, "notify_below": typed}
    errors: dict[str, list[str]] = {}
    if email_errors := _email_errors(emails, t):
        errors["emails"] = email_errors
    if not events:
        errors["events"] = [t.gettext(NO_EVENT)]
    # Empty is no level: the limits PUT's `notify_below: null` clears it.
    checked = check_amount(typed, t, "non_negative", places) if typed else None
    if checked is not None and checked.error is not None:
        errors["notify_below"] = [checked.error]
    level = checked.value if checked is not None else None
    return NotificationsPost(values, {"emails": emails, "events": events}, level, errors)


def level_changed(account: dict[str, Any] | None, level: str | None) -> bool:
    """Whether the limits PUT is needed: "5.00" typed is the account's "5.0000"."""
    current = (account or {}).get("notify_below")
    before = None if current is None else Decimal(str(current))
    return before != (None if level is None else Decimal(level))


def api_message(name: str, kind: str, t: Translator) -> str | None:
    """The API's refusal of the addresses or of no event in the user's words, else
    None (its loc names `emails` for the list, `emails`, i for one address)."""
    if name == "emails":
        message = TOO_MANY if kind == "too_long" else EMAILS_EXAMPLE
        return t.gettext(message) % {"max": MAX_EMAILS}
    if name == "events" and kind == "too_short":
        return t.gettext(NO_EVENT)
    return None
