"""Who reaches which console page, and what the others are told: an expired token, a
role the console has no pages for, a tenant id that is not one, a bad ledger link,
and a tenant's status the same on its page as in the operator's list."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.console import (
    EXPIRED_TOKEN,
    Console,
    FakeApis,
    account,
    console_of,
    sign_in,
)


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    async for pair in console_of(FakeApis()):
        yield pair


async def test_an_expired_token_ends_the_session_and_asks_to_sign_in_again(
    console: Console,
) -> None:
    client, fakes = console
    await sign_in(client, "tok-acme")
    fakes.expired = True
    resp = await client.get("/tenants/acme", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/signin?expired=1"
    assert any(c.startswith('meter_session=""') for c in resp.headers.getall("Set-Cookie"))
    html = await (await client.get(resp.headers["Location"])).text()
    assert "Your session has expired. Sign in again." in html
    # The session is over: a fresh token is needed, not just the old cookie back.
    fakes.expired = False
    assert (await client.get("/tenants/acme", allow_redirects=False)).status == 303


async def test_htmx_is_sent_to_sign_in_rather_than_given_a_fragment(console: Console) -> None:
    client, fakes = console
    client.session.cookie_jar.update_cookies({"meter_lang": "el"})
    for path in ("/tenants/acme/summary", "/tenants/acme/ledger", "/tenants/acme/recharges"):
        fakes.expired = False
        await sign_in(client, "tok-acme")
        fakes.expired = True
        resp = await client.get(path, headers={"HX-Request": "true"}, allow_redirects=False)
        assert resp.headers.get("HX-Redirect") == "/signin?expired=1", path
        assert "alert" not in await resp.text()
    # A poll after the session ended is sent to sign in too, not given the form.
    resp = await client.get("/tenants/acme/summary", headers={"HX-Request": "true"})
    assert resp.headers.get("HX-Redirect") == "/signin"
    html = await (await client.get("/signin?expired=1")).text()
    assert "Η συνεδρία σας έληξε. Συνδεθείτε ξανά." in html


async def test_signing_in_with_an_expired_token_says_it_has_expired(console: Console) -> None:
    client, _ = console
    resp = await sign_in(client, EXPIRED_TOKEN)
    assert resp.status == 401
    html = await resp.text()
    assert "This token has expired." in html
    assert "This token was not accepted." not in html


async def test_a_billing_token_is_told_its_role_has_no_console_pages(console: Console) -> None:
    client, _ = console
    resp = await sign_in(client, "tok-billing")
    assert resp.status == 403
    html = await resp.text()
    assert "Your role (billing) may not use the console&#39;s pages." in html
    assert "a billing token may not read" not in html
    assert (await client.get("/operator", allow_redirects=False)).status == 303


async def test_an_id_that_is_no_tenants_gets_the_consoles_404_page(console: Console) -> None:
    client, _ = console
    await sign_in(client, "tok-ops")
    resp = await client.get("/tenants/bad%20id")
    assert resp.status == 404
    html = await resp.text()
    assert "<html" in html and "No tenant has the id" in html and "bad id" in html
    resp = await client.get("/no/such/page")
    assert resp.status == 404 and "<html" in await resp.text()


async def test_a_bad_ledger_link_says_so_and_offers_the_newest_entries(console: Console) -> None:
    client, _ = console
    await sign_in(client, "tok-acme")
    html = await (await client.get("/tenants/acme?before=bogus")).text()
    assert "The history service is not reachable." not in html
    assert "This link to older entries is not valid." in html
    assert 'href="/tenants/acme#ledger"' in html


async def test_the_favicon_is_served_and_linked(console: Console) -> None:
    client, _ = console
    html = await (await client.get("/signin")).text()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    for path in ("/static/favicon.svg", "/favicon.ico"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == "image/svg+xml"
        assert (await resp.text()).startswith("<svg")


async def test_a_tenants_page_shows_the_status_facts_of_the_operators_list(
    console: Console,
) -> None:
    client, fakes = console
    fakes.accounts["kramerica"] = {
        **account("kramerica"),
        "balance": "3.00",
        "notify_below": "5.00",
        "auto_recharge": {
            "enabled": True,
            "recharge_amount": "25.00",
            "trigger_balance": "2.00",
            "suspended": True,
            "mode": "fixed",
            "target_balance": None,
        },
    }
    await sign_in(client, "tok-ops")
    html = await (await client.get("/tenants/kramerica")).text()
    status = html[html.index('id="status"') : html.index("</dd>", html.index('id="status"'))]
    for fact in ("Active", "Auto-recharge suspended", "Below low-balance level"):
        assert fact in status, status
