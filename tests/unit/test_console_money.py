"""A tenant page's amounts at one number of decimals, and its times labelled UTC."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from processor.console.i18n import Translator
from tests.support.console import Console, FakeApis, account, console_of, ledger_entry, sign_in

USD = {"currency": "USD"}


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    """acme on a four-decimal card: a balance that needs three, a debit that needs four."""
    fakes = FakeApis()
    fakes.accounts["acme"] = {**account("acme"), **USD, "balance": "52.9620"}
    fakes.entries["acme"] = [
        ledger_entry("acme", "call", **USD, kind="debit", amount="0.0245", balance_after="52.9620"),
        ledger_entry("acme", "top-up", **USD, amount="50.0000", balance_after="52.9865"),
    ]
    fakes.recharges["acme"] = [
        {"requested_at": "2026-12-01T10:00:00Z", "amount": "50.0000", "currency": "USD",
         "attempt": 1, "outcome": "succeeded", "reason": None},
    ]  # fmt: skip
    # globex: whole dollars only, on the same card: the currency's two decimals.
    fakes.accounts["globex"] = {**account("globex"), **USD, "balance": "50.0000"}
    fakes.entries["globex"] = [
        ledger_entry("globex", "top-up", **USD, amount="50.0000", balance_after="50.0000")
    ]
    async for pair in console_of(fakes):
        yield pair


def _amounts(html: str) -> list[str]:
    return re.findall(r"[−+]?\$[\d,]+(?:\.\d+)?", html)


async def test_every_amount_of_a_tenants_page_has_the_same_decimals(console: Console) -> None:
    client, _ = console
    await sign_in(client, "tok-ops")
    html = await (await client.get("/tenants/acme")).text()
    balance = re.search(r'id="balance">([^<]+)<', html)
    assert balance is not None and balance[1] == "$52.9620"
    assert "−$0.0245" in html and "+$50.0000" in html
    recharges = html[html.index('id="recharge-table"') :]
    assert "$50.0000" in recharges[: recharges.index("</table>")]
    shown = _amounts(html)
    assert len(shown) > 6 and all(re.search(r"\.\d{4}$", a) for a in shown), shown
    # The chart's axis too (its labels, not only its bars' titles).
    assert re.search(r'class="tick">\$0\.0000<', html)
    # The balance alone, as htmx polls it, keeps the page's decimals.
    part = await (await client.get("/tenants/acme/summary")).text()
    assert 'id="balance">$52.9620<' in part


async def test_whole_amounts_show_the_currencys_decimals(console: Console) -> None:
    client, _ = console
    await sign_in(client, "tok-ops")
    html = await (await client.get("/tenants/globex")).text()
    assert 'id="balance">$50.00<' in html and "+$50.00<" in html
    assert all(re.search(r"\.\d{2}$", a) for a in _amounts(html)), _amounts(html)


def test_money_at_a_pages_decimals_never_drops_a_digit() -> None:
    english = Translator("en")
    assert english.money("52.962", "USD", 4) == "$52.9620"
    assert english.money("-2.2", "USD", 4) == "\u2212$2.2000"
    assert english.money("12.3456", "USD", 2) == "$12.3456"
    assert english.money("50.0000", "USD") == "$50.00"  # the currency's two
    assert english.money("500", "JPY") == "¥500"


@pytest.mark.parametrize(
    ("lang", "shown"),
    [("en", "Dec 8, 2026, 12:10:25\u202fAM UTC"), ("el", "8 Δεκ 2026, 12:10:25\u202fπ.μ. UTC")],
)
def test_every_time_says_it_is_utc(lang: str, shown: str) -> None:
    t = Translator(lang)
    assert t.when("2026-12-08T00:10:25Z") == shown
    assert t.when("2026-12-08T02:10:25+02:00") == shown


async def test_the_ledgers_times_say_utc(console: Console) -> None:
    client, _ = console
    await sign_in(client, "tok-ops")
    html = await (await client.get("/tenants/acme")).text()
    ledger = html[html.index('id="ledger-table"') :]
    assert "10:00:00" in ledger and "UTC</td>" in ledger
