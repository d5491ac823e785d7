"""The tenant page's "Limits and notifications" form: who may change it, what it sends
(the notifications PATCH, and the limits PUT only for a new level), and what it says
when the console or the API refuses a field."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.notifications import NOTIFICATION_EVENTS
from tests.support.console import (
    Console,
    FakeApis,
    account,
    console_of,
    csrf_of,
    post_form,
    sign_in,
)

PAGE = "/tenants/acme"
FORM = "/tenants/acme/notifications"
NOTIFICATIONS: dict[str, Any] = {
    "emails": ["ops@acme.example"],
    "webhook_url": "https://hooks.acme.example/credits",
    "events": ["low_balance", "exhausted", "recharge_failed"],
}


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    fakes = FakeApis()
    fakes.accounts["acme"] = {
        **account("acme"),
        "notify_below": "5.00",
        "notifications": NOTIFICATIONS,
    }
    async for pair in console_of(fakes):
        yield pair


def _form(emails: str, events: list[str], level: str) -> list[tuple[str, str]]:
    return [("emails", emails), *(("events", e) for e in events), ("notify_below", level)]


async def test_the_form_shows_to_a_tenant_admin_and_the_facts_to_an_operator(
    console: Console,
) -> None:
    client, _ = console
    await sign_in(client, "tok-acme")
    html = await (await client.get(PAGE)).text()
    assert f'action="{FORM}"' in html
    assert ">ops@acme.example</textarea>" in html
    assert 'value="5.00"' in html
    for event in NOTIFICATION_EVENTS:
        checked = event in NOTIFICATIONS["events"]
        box = html[html.index(f'id="nf-event-{event}"') :].split(">", 1)[0]
        assert ("checked" in box) == checked, event
    assert "https://hooks.acme.example/credits" in html  # read-only: its secret is the API's
    await sign_in(client, "tok-ops")
    html = await (await client.get(PAGE)).text()
    assert f'action="{FORM}"' not in html and "<textarea" not in html
    for fact in ("ops@acme.example", "Low balance, Exhausted, Recharge failed", "€5.00"):
        assert fact in html, fact


async def test_saving_sends_the_patch_and_the_limits_put_only_for_a_new_level(
    console: Console,
) -> None:
    client, fakes = console
    await sign_in(client, "tok-acme")
    # Commas too; an address typed twice is sent once; the level as the account has it.
    emails = "ops@acme.example, billing@acme.example\nOps@acme.example\n"
    html = await post_form(client, FORM, PAGE, _form(emails, ["exhausted", "low_balance"], "5"))
    assert 'id="nf-saved"' in html and "The change applies in a moment." in html
    assert "<html" not in html  # htmx gets the section alone
    (patch,) = fakes.sent
    assert (patch.endpoint, patch.tenant_id) == ("notifications-change", "acme")
    # Only emails and events: the PATCH keeps the webhook and its secret.
    assert patch.body == {
        "emails": ["ops@acme.example", "billing@acme.example"],
        "events": ["low_balance", "exhausted"],
    }
    assert "ops@acme.example\nbilling@acme.example</textarea>" in html
    # A new level, then none: the limits PUT names only `notify_below`.
    fakes.sent.clear()
    await post_form(client, FORM, PAGE, _form("ops@acme.example", ["exhausted"], "7.50"))
    await post_form(client, FORM, PAGE, _form("ops@acme.example", ["exhausted"], " "))
    limits = [s for s in fakes.sent if s.endpoint == "limits"]
    assert [s.body for s in limits] == [{"notify_below": "7.50"}, {"notify_below": None}]
    keys = [s.key for s in fakes.sent]
    assert len(fakes.sent) == 4 and len(set(keys)) == 4
    assert all(uuid.UUID(str(k)).version == 4 for k in keys)


async def test_the_apis_refusals_show_beside_their_fields_in_greek(console: Console) -> None:
    client, fakes = console
    # A tenant with no account yet: no card decimals for the console to check.
    fakes.new_tenants.add("acme")
    client.session.cookie_jar.update_cookies({"meter_lang": "el"})
    await sign_in(client, "tok-acme")
    # Something@something passes here; the API's pattern wants a domain with a dot.
    data = _form("ops@localhost", ["low_balance"], "5,001")
    html = await post_form(client, FORM, PAGE, data)
    assert [s.endpoint for s in fakes.sent] == ["notifications-change", "limits"]
    emails = html[html.index('id="nf-emails-error"') :]
    assert emails.startswith(
        'id="nf-emails-error" class="error" role="alert">Εισαγάγετε διευθύνσεις'
    )
    level = html[html.index('id="nf-notify_below-error"') :]
    assert "Πάρα πολλά δεκαδικά ψηφία." in level.split("</p>")[0]
    assert 'aria-describedby="nf-emails-help nf-emails-error"' in html
    assert 'id="nf-saved"' not in html
    assert "must" not in html and "should" not in html  # no English from the API


@pytest.mark.parametrize(
    ("emails", "events", "level", "field", "message"),
    [
        ("ops@acme.example", [], "5", "events", "Choose at least one event."),
        ("ops@acme.example\nnot-an-address", ["exhausted"], "5", "emails",
         "“not-an-address” is not an email address."),
        ("ops@acme.example", ["exhausted"], "-1", "notify_below", "Must not be negative."),
        ("ops@acme.example", ["exhausted"], "5.001", "notify_below",
         "Too many decimal places (at most 2)."),
        ("\n".join(f"ops{i}@acme.example" for i in range(11)), ["exhausted"], "5", "emails",
         "At most 10 addresses."),
    ],
)  # fmt: skip
async def test_the_console_refuses_what_the_api_would_before_sending(
    console: Console, emails: str, events: list[str], level: str, field: str, message: str
) -> None:
    client, fakes = console
    await sign_in(client, "tok-acme")
    # A plain form post (no script) answers with the whole page.
    html = await post_form(client, FORM, PAGE, _form(emails, events, level), htmx=False)
    assert "<html" in html
    error = html[html.index(f'id="nf-{field}-error"') :].split("</p>")[0]
    assert message in error
    assert f"nf-{field}-error" in html[: html.index(f'id="nf-{field}-error"')]  # described by
    assert fakes.sent == []
    assert 'id="nf-saved"' not in html


async def test_an_operators_post_is_refused_and_not_sent_on(console: Console) -> None:
    client, fakes = console
    await sign_in(client, "tok-ops")
    csrf = await csrf_of(client, PAGE)
    data = [*_form("ops@acme.example", ["exhausted"], "5"), ("csrf", csrf)]
    resp = await client.post(FORM, data=data)
    assert resp.status == 403
    assert fakes.sent == []
