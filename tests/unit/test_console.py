"""The admin console (processor/console/) against stand-in APIs: sign-in, sessions and
CSRF, per-tenant refusal, languages and formats, the API's validation messages.

The real pipeline, in a real browser, is tests/integration/test_console.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from babel.messages.extract import extract_from_dir

from processor.console import pages
from processor.console.api import ApiClient
from processor.console.app import HERE, build_app
from processor.console.charts import daily_spend_svg, last_days
from processor.console.i18n import Translator, _messages, catalog_path, column_places, form_amount

ADMIN_TOKEN = "static-admin-token"
TOKENS: dict[str, dict[str, Any]] = {
    "tok-acme": {"subject": "alice", "role": "tenant_admin", "tenant_id": "acme"},
    "tok-ops": {"subject": "olga", "role": "operator", "tenant_id": None},
}


def account(tenant: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "currency": "EUR",
        "balance": "12.34",
        "status": "active",
        "auto_recharge": None,
        "pending_recharge": None,
        "updated_at": None,
        "credit_limit": "0.00",
        "notify_below": None,
    }


class FakeApis:
    """The worker API and the ledger sink, as far as the console uses them."""

    def __init__(self, whoami: bool = True) -> None:
        self.whoami = whoami
        self.calls: list[tuple[str, str, str | None]] = []

    def principal(self, request: web.Request) -> dict[str, Any] | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return TOKENS.get(token)

    def app(self) -> web.Application:
        async def whoami(request: web.Request) -> web.Response:
            who = self.principal(request)
            return web.json_response(who) if who else web.json_response({}, status=401)

        async def account_view(request: web.Request) -> web.Response:
            tenant = request.match_info["tenant_id"]
            who = self.principal(request)
            self.calls.append(("account", tenant, request.headers.get("Authorization")))
            if who and who["role"] == "tenant_admin" and who["tenant_id"] != tenant:
                return web.json_response({"error": "forbidden"}, status=403)
            return web.json_response(account(tenant))

        async def auto_recharge(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(("auto-recharge", request.match_info["tenant_id"], str(body)))
            errors = []
            if "." in body["trigger_balance"] and len(body["trigger_balance"].split(".")[1]) > 2:
                errors.append(
                    {
                        "loc": ["body", "trigger_balance"],
                        "msg": "has more than 2 decimal places",
                        "type": "too_many_decimals",
                    }
                )
            if body["recharge_amount"].startswith("-"):
                errors.append(
                    {
                        "loc": ["body", "recharge_amount"],
                        "msg": "Input should be greater than 0",
                        "type": "greater_than",
                    }
                )
            if errors:
                return web.json_response(
                    {"error": "invalid_request", "detail": "...", "errors": errors}, status=422
                )
            return web.json_response({"status": "accepted"}, status=202)

        async def empty(request: web.Request) -> web.Response:
            return web.json_response({"entries": [], "buckets": [], "recharges": []})

        async def ledger(request: web.Request) -> web.Response:
            self.calls.append(("ledger", request.match_info["tenant_id"], request.query_string))
            before = request.query.get("before")
            entry = {
                "entry_id": f"e-{before or 'newest'}",
                "tenant_id": request.match_info["tenant_id"],
                "kind": "credit",
                "amount": "1.00",
                "currency": "EUR",
                "balance_after": "12.34",
                "cause_topic": "credits.commands",
                "cause_id": f"cause-{before or 'newest'}",
                "occurred_at": "2026-12-01T10:00:00Z",
                "recorded_at": "2026-12-01T10:00:01Z",
            }
            following = None if before else "page-2"
            return web.json_response({"entries": [entry], "next_cursor": following})

        async def funds(request: web.Request) -> web.Response:
            return web.json_response(
                {"error": "forbidden", "detail": "a tenant_admin token may not funds"}, status=403
            )

        async def tenants(request: web.Request) -> web.Response:
            listed = [
                {
                    "tenant_id": "acme",
                    "currency": "EUR",
                    "balance": "12.34",
                    "status": "active",
                    "auto_recharge_suspended": False,
                    "below_low_balance": False,
                    "recharge_failures": 0,
                    "last_failure_reason": None,
                },
                {
                    "tenant_id": "globex",
                    "currency": "EUR",
                    "balance": "-1.00",
                    "status": "exhausted",
                    "auto_recharge_suspended": False,
                    "below_low_balance": True,
                    "recharge_failures": 0,
                    "last_failure_reason": None,
                },
            ]
            if request.query.get("status") == "exhausted":
                listed = [t for t in listed if t["status"] == "exhausted"]
            return web.json_response({"tenants": listed, "next_cursor": None})

        app = web.Application()
        if self.whoami:
            app.router.add_get("/auth/whoami", whoami)
        app.router.add_get("/tenants/{tenant_id}/account", account_view)
        app.router.add_put("/tenants/{tenant_id}/auto-recharge", auto_recharge)
        app.router.add_get("/tenants/{tenant_id}/ledger", ledger)
        app.router.add_post("/tenants/{tenant_id}/funds", funds)
        app.router.add_get("/tenants/{tenant_id}/usage", empty)
        app.router.add_get("/tenants/{tenant_id}/recharges", empty)
        app.router.add_get("/tenants", tenants)
        return app


async def _console(fakes: FakeApis) -> AsyncIterator[tuple[TestClient[Any, Any], FakeApis]]:
    async with TestClient(TestServer(fakes.app())) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        app = build_app(ApiClient(url, url), ADMIN_TOKEN)
        async with TestClient(TestServer(app)) as client:
            yield client, fakes


@pytest.fixture
async def console() -> AsyncIterator[tuple[TestClient[Any, Any], FakeApis]]:
    async for pair in _console(FakeApis()):
        yield pair


async def csrf_of(client: TestClient[Any, Any], path: str = "/signin") -> str:
    html = await (await client.get(path)).text()
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found[1]


async def sign_in(client: TestClient[Any, Any], token: str) -> ClientResponse:
    csrf = await csrf_of(client)
    return await client.post("/signin", data={"token": token, "csrf": csrf}, allow_redirects=False)


async def test_sign_in_keeps_the_token_on_the_server_behind_a_strict_cookie(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, fakes = console
    resp = await sign_in(client, "tok-acme")
    assert resp.status == 303
    assert resp.headers["Location"] == "/"
    set_cookie = resp.headers.getall("Set-Cookie")
    (session,) = [c for c in set_cookie if c.startswith("meter_session=")]
    assert "HttpOnly" in session
    assert "SameSite=Strict" in session
    assert "tok-acme" not in session
    # The tenant admin lands on their tenant's page; the API got their token.
    page = await client.get("/")
    assert page.url.path == "/tenants/acme"
    assert "Communication Credits" in await page.text()
    assert ("account", "acme", "Bearer tok-acme") in fakes.calls
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


async def test_a_wrong_token_is_refused(console: tuple[TestClient[Any, Any], FakeApis]) -> None:
    client, _ = console
    resp = await sign_in(client, "nonsense")
    assert resp.status == 401
    assert "This token was not accepted." in await resp.text()
    assert (await client.get("/operator", allow_redirects=False)).status == 303


async def test_every_form_post_needs_the_csrf_token(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, fakes = console
    await csrf_of(client)  # the browser has its CSRF cookie, but the form lacks it
    resp = await client.post("/signin", data={"token": "tok-acme"})
    assert resp.status == 403
    await sign_in(client, "tok-acme")
    settings = {
        "enabled": "on",
        "recharge_amount": "25.00",
        "trigger_balance": "5.00",
        "csrf": "forged",
    }
    resp = await client.post("/tenants/acme/auto-recharge", data=settings)
    assert resp.status == 403
    good = await csrf_of(client, "/tenants/acme")
    resp = await client.post(
        "/tenants/acme/auto-recharge",
        data={**settings, "csrf": good},
        headers={"Origin": "http://evil.example"},
    )
    assert resp.status == 403
    assert not [c for c in fakes.calls if c[0] == "auto-recharge"]
    resp = await client.post("/tenants/acme/auto-recharge", data={**settings, "csrf": good})
    assert resp.status == 200
    assert [c[0] for c in fakes.calls].count("auto-recharge") == 1


async def test_a_tenant_admin_is_refused_another_tenants_page(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, fakes = console
    await sign_in(client, "tok-acme")
    for path in ("/tenants/globex", "/tenants/globex/summary", "/tenants/globex/ledger.csv"):
        resp = await client.get(path)
        assert resp.status == 403, path
        assert "A tenant admin sees only their own tenant." in await resp.text()
    assert (await client.get("/operator")).status == 403
    # Refused before asking: the other tenant's account was never requested.
    assert not [c for c in fakes.calls if c[1] == "globex"]


async def test_the_operator_lists_and_filters_tenants(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, _ = console
    await sign_in(client, "tok-ops")
    page = await client.get("/")
    assert page.url.path == "/operator"
    html = await page.text()
    assert 'href="/tenants/acme"' in html and 'href="/tenants/globex"' in html
    html = await (await client.get("/operator?status=exhausted")).text()
    assert 'href="/tenants/globex"' in html and 'href="/tenants/acme"' not in html
    assert (await client.get("/tenants/globex")).status == 200


async def test_greek_is_chosen_remembered_and_formats_money_the_greek_way(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, _ = console
    await sign_in(client, "tok-acme")
    csrf = await csrf_of(client, "/tenants/acme")
    resp = await client.post(
        "/language",
        data={"lang": "el", "next": "/tenants/acme", "csrf": csrf},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert any(
        c.startswith("meter_lang=el") and "Max-Age" in c for c in resp.headers.getall("Set-Cookie")
    )
    html = await (await client.get("/tenants/acme")).text()
    assert '<html lang="el">' in html
    assert "Πιστώσεις επικοινωνίας" in html
    assert "12,34\xa0€" in html
    # An open redirect is not: only paths of this site.
    resp = await client.post(
        "/language",
        data={"lang": "en", "next": "//evil.example/", "csrf": csrf},
        allow_redirects=False,
    )
    assert resp.headers["Location"] == "/"


@pytest.mark.parametrize(
    ("lang", "decimals", "negative"),
    [
        ("en", "Too many decimal places.", "Must be more than zero."),
        ("el", "Πάρα πολλά δεκαδικά ψηφία.", "Πρέπει να είναι μεγαλύτερο από το μηδέν."),
    ],
)
async def test_the_apis_validation_messages_show_beside_their_fields(
    console: tuple[TestClient[Any, Any], FakeApis], lang: str, decimals: str, negative: str
) -> None:
    client, _ = console
    client.session.cookie_jar.update_cookies({"meter_lang": lang})
    await sign_in(client, "tok-acme")
    csrf = await csrf_of(client, "/tenants/acme")
    resp = await client.post(
        "/tenants/acme/auto-recharge",
        data={
            "enabled": "on",
            "recharge_amount": "-5",
            "trigger_balance": "5.001",
            "csrf": csrf,
        },
        headers={"HX-Request": "true"},
    )
    html = await resp.text()
    assert 'id="ar-trigger_balance-error"' in html and decimals in html
    assert 'id="ar-recharge_amount-error"' in html and negative in html
    assert 'aria-invalid="true"' in html
    assert "<html" not in html  # htmx gets the section alone


async def test_without_whoami_only_the_static_admin_token_signs_in() -> None:
    async for client, _ in _console(FakeApis(whoami=False)):
        assert (await sign_in(client, "tok-acme")).status == 401
        resp = await sign_in(client, ADMIN_TOKEN)
        assert resp.status == 303
        assert (await client.get("/")).url.path == "/operator"


def test_every_message_has_a_greek_translation() -> None:
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    found: set[str] = {
        found[2]
        for found in extract_from_dir(
            str(HERE), method_map, keywords={"_": None, "gettext": None, "N_": None}
        )
        if isinstance(found[2], str)
    }
    assert len(found) > 80
    greek = Translator("el")
    missing = sorted(m for m in found | set(pages.LABELS) if greek.gettext(m) == m)
    assert missing == [] or missing == ["Email", "Webhook"], missing
    # API values get a label in English too, never the raw value.
    assert set(pages.LABELS) <= set(_messages("en"))
    assert catalog_path("el").is_file()


def test_money_and_dates_per_locale() -> None:
    greek, english = Translator("el"), Translator("en")
    assert greek.money("12.34", "EUR") == "12,34\xa0€"
    assert english.money("12.34", "EUR") == "€12.34"
    assert greek.money("1234.5", "EUR") == "1.234,50\xa0€"
    # A balance keeps every decimal it has (the card's four).
    assert english.money("0.0245", "USD") == "$0.0245"
    # A negative balance takes the ledger's minus sign, before the currency.
    assert english.money("-2.2368", "USD") == "\u2212$2.2368"
    assert greek.money("-1234.5", "EUR") == "\u22121.234,50\xa0€"
    assert english.money("-0.00", "USD") == "$0.00"
    assert greek.day("2026-12-03") == "3 Δεκ 2026"


def test_a_column_of_amounts_shows_one_number_of_decimals() -> None:
    english = Translator("en")
    column = ["83.688", "69.96", None, "200.6654", "-2.2"]
    places = column_places(column)
    assert places == 4
    shown = [english.money(a, "USD", places) for a in column]
    assert shown == ["$83.6880", "$69.9600", "—", "$200.6654", "\u2212$2.2000"]
    # Never fewer decimals than an amount has, and two when the column is whole.
    assert english.money("1.2345", "USD", 2) == "$1.2345"
    assert column_places(["5", "7.10"]) == 2
    assert column_places([]) == 2


def test_a_form_shows_an_amount_at_the_decimals_it_needs() -> None:
    assert form_amount("25.0000") == "25.00"
    assert form_amount("61.8400") == "61.84"
    assert form_amount("5.0001") == "5.0001"
    assert form_amount("100") == "100.00"
    assert form_amount(None) == ""
    assert form_amount("not money") == "not money"


def test_the_daily_chart_is_svg_with_a_bar_and_a_title_per_day() -> None:
    today = date(2026, 12, 3)
    series = last_days(
        [{"key": "2026-12-01", "amount": "3.50"}, {"key": "2026-11-04", "amount": "1.25"}], today
    )
    assert len(series) == 30 and series[0].day == date(2026, 11, 4)
    assert series[-3].amount == Decimal("3.50")
    svg = str(daily_spend_svg(series, "EUR", Translator("el")))
    assert svg.startswith("<svg") and 'role="img"' in svg
    assert svg.count('<rect class="bar"') == 30
    assert "1 Δεκ 2026: 3,50\xa0€" in svg
    assert "4,75\xa0€" in svg  # the total, in the chart's title


def test_every_asset_is_local_and_htmx_keeps_its_licence() -> None:
    static = HERE / "static"
    assert (static / "htmx.min.js").stat().st_size > 10_000
    assert "Zero-Clause BSD" in (static / "htmx.LICENSE").read_text()
    for template in (HERE / "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"""(src|href)=["'](https?:)?//""", text), template
    css = (static / "console.css").read_text()
    assert "url(" not in css and "@import" not in css


def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_contrast() -> None:
    css = (HERE / "static" / "console.css").read_text()
    colours = dict(re.findall(r"--([a-z]+): (#[0-9a-f]{6})", css))
    for text in ("ink", "muted", "accent", "ok", "bad", "warn"):
        for background in ("bg", "card"):
            ratio = _contrast(colours[text], colours[background])
            assert ratio >= 4.5, (text, background, ratio)
    assert _contrast("#ffffff", colours["accent"]) >= 4.5  # a primary button's text
    assert _contrast("#ffffff", "#102a43") >= 4.5  # the header's


async def test_every_field_of_the_tenant_page_has_a_label(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, _ = console
    await sign_in(client, "tok-acme")
    html = await (await client.get("/tenants/acme")).text()
    fields = re.findall(r"<(?:input|select|textarea)\b[^>]*>", html)
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    visible = [f for f in fields if 'type="hidden"' not in f]
    assert len(visible) >= 8
    for field in visible:
        found = re.search(r'\bid="([^"]+)"', field)
        assert found is not None and found[1] in labelled, field
    assert 'class="skip" href="#main"' in html
    assert '<html lang="en">' in html


async def test_the_ledger_pages_with_the_sinks_cursor(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, fakes = console
    await sign_in(client, "tok-acme")
    html = await (await client.get("/tenants/acme")).text()
    assert "cause-newest" in html
    assert 'href="/tenants/acme?before=page-2#ledger"' in html
    html = await (await client.get("/tenants/acme?before=page-2")).text()
    assert "cause-page-2" in html and "cause-newest" not in html
    assert 'id="older"' not in html  # the last page
    assert ("ledger", "acme", "limit=20&before=page-2") in fakes.calls


async def test_a_refused_top_up_says_so_in_the_form(
    console: tuple[TestClient[Any, Any], FakeApis],
) -> None:
    client, _ = console
    await sign_in(client, "tok-acme")
    csrf = await csrf_of(client, "/tenants/acme")
    resp = await client.post(
        "/tenants/acme/funds",
        data={"amount": "5.00", "key": "k-1", "csrf": csrf},
        headers={"HX-Request": "true"},
    )
    html = await resp.text()
    assert "Your role may not do this." in html
    assert "a tenant_admin token may not funds" in html
    assert 'role="alert"' in html
