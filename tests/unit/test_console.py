"""The admin console (processor/console/) against stand-in APIs: sign-in, sessions and
CSRF, per-tenant refusal, languages and formats, the API's validation messages.

The real pipeline, in a real browser, is tests/integration/test_console.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal

import pytest
from babel.messages.extract import extract_from_dir

from processor.console import pages
from processor.console.app import HERE
from processor.console.charts import daily_spend_svg, last_days
from processor.console.i18n import Translator, _messages, catalog_path, column_places
from tests.support.console import (
    ADMIN_TOKEN,
    Console,
    FakeApis,
    console_of,
    csrf_of,
    sign_in,
)


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    async for pair in console_of(FakeApis()):
        yield pair


async def test_sign_in_keeps_the_token_on_the_server_behind_a_strict_cookie(
    console: Console,
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


async def test_a_wrong_token_is_refused(console: Console) -> None:
    client, _ = console
    resp = await sign_in(client, "nonsense")
    assert resp.status == 401
    assert "This token was not accepted." in await resp.text()
    assert (await client.get("/operator", allow_redirects=False)).status == 303


async def test_every_form_post_needs_the_csrf_token(
    console: Console,
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
    console: Console,
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
    console: Console,
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
    console: Console,
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
    ("lang", "trigger", "decimals", "negative"),
    [
        ("en", "5.001", "Too many decimal places (at most 2).", "Must be more than zero."),
        (
            "el",
            "5,001",
            "Πάρα πολλά δεκαδικά ψηφία (έως 2).",
            "Πρέπει να είναι μεγαλύτερο από το μηδέν.",
        ),
    ],
)
async def test_validation_messages_show_beside_their_fields(
    console: Console, lang: str, trigger: str, decimals: str, negative: str
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
            "trigger_balance": trigger,
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
    async for client, _ in console_of(FakeApis(whoami=False)):
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
    # Words Greek writes as English does.
    assert set(missing) <= {"Webhook"}, missing
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
    english, greek = Translator("en"), Translator("el")
    assert english.form_amount("25.0000") == "25.00"
    assert english.form_amount("61.8400") == "61.84"
    assert english.form_amount("5.0001") == "5.0001"
    assert english.form_amount("1050") == "1050.00"  # no grouping sign to read back
    assert english.form_amount(None) == ""
    assert english.form_amount("not money") == "not money"
    # Read back as the page's language reads it (amounts.py): a comma in Greek.
    assert greek.form_amount("1050.5000") == "1050,50"


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
    console: Console,
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
    console: Console,
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
    console: Console,
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
