"""Amounts typed in the console: read in the page's language, checked before a review
step asks to confirm, and the API's refusals in the user's words."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
import pytest

from processor.console.amounts import api_message, check_amount
from processor.console.api import Answer
from processor.console.i18n import Translator
from processor.http.admin_requests import Refused, validate
from schemas.admin import AutoRechargeRequest
from tests.support.console import Console, FakeApis, account, console_of, post_form, sign_in

EN, EL = Translator("en"), Translator("el")


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    fakes = FakeApis()
    fakes.accounts["acme"] = {**account("acme"), "balance": "12.3400"}  # a 4-decimal card
    async for pair in console_of(fakes):
        yield pair


@pytest.mark.parametrize(
    ("typed", "t", "sent"),
    [("1,050", EN, "1050"), ("1,050.5", EN, "1050.5"), ("1,05", EL, "1.05"),
     ("1.050,5", EL, "1050.5"), (" 50.00 ", EN, "50.00")],
)  # fmt: skip
def test_an_amount_is_read_in_the_pages_language(typed: str, t: Translator, sent: str) -> None:
    checked = check_amount(typed, t, "positive", 4)
    assert (checked.value, checked.error) == (sent, None)


@pytest.mark.parametrize("typed", ["1,05", "1.050,5", "abc", "1e5", "NaN", ""])
def test_an_ambiguous_or_wrong_amount_asks_for_one_like_the_example(typed: str) -> None:
    assert check_amount(typed, EN, "positive", 4).error == "Enter an amount such as 50.00."
    assert check_amount("1.05", EL, "positive", 4).error == "Εισαγάγετε ένα ποσό, π.χ. 50,00."


def test_the_apis_bounds_are_checked_in_the_users_words() -> None:
    assert check_amount("1.23456", EN, "positive", 4).error == (
        "Too many decimal places (at most 4)."
    )
    for typed in ("1000001", "99999999999999999999"):
        assert check_amount(typed, EN, "positive", 4).error == "Must be at most 1,000,000."
    assert check_amount("1000000", EN, "positive", 4).value == "1000000"
    assert check_amount("0", EN, "positive", 4).error == "Must be more than zero."
    assert check_amount("0", EN, "non_negative", 4).value == "0"
    assert check_amount("-1", EL, "non_negative", 4).error == "Δεν μπορεί να είναι αρνητικό."
    # Without the card's decimals (no account yet) the API's check is the one.
    assert check_amount("1.23456", EN, "positive", None).value == "1.23456"


def test_the_apis_own_refusals_are_put_in_the_users_words() -> None:
    body = {"enabled": True, "recharge_amount": "abc", "trigger_balance": "-1"}
    for fields in (body, {**body, "recharge_amount": "1000001", "trigger_balance": "0"}):
        with pytest.raises(Refused) as refused:
            validate("auto-recharge", "acme", {}, orjson.dumps(fields), AutoRechargeRequest,
                     "USD", 2)  # fmt: skip
        answer = Answer(422, orjson.loads(refused.value.reply.body), {})
        words = [api_message(e["type"], e["msg"], EL) for e in answer.field_errors()]
        assert words and all(not re.search("[a-z]{3}", w) for w in words), words
    assert api_message("value_error", "must be at most 1000000", EN) == (
        "Must be at most 1,000,000."
    )


async def test_review_asks_to_confirm_the_plain_amount_the_api_gets(console: Console) -> None:
    client, fakes = console
    fakes.funds_status = 202
    await sign_in(client, "tok-acme")
    html = await post_form(
        client, "/tenants/acme/funds/review", "/tenants/acme", {"amount": "1,050"}
    )
    assert 'id="confirm-text"' in html
    assert re.search(r'name="amount" value="1050"', html)
    await post_form(client, "/tenants/acme/funds", "/tenants/acme", {"amount": "1050", "key": "k"})
    assert ("funds", "acme", "1050") in fakes.calls


@pytest.mark.parametrize(
    ("typed", "message"),
    [("1.23456", "Too many decimal places (at most 4)."),
     ("1000001", "Must be at most 1,000,000."),
     ("99999999999999999999", "Must be at most 1,000,000.")],
)  # fmt: skip
async def test_review_refuses_what_confirm_would(
    console: Console, typed: str, message: str
) -> None:
    client, _ = console
    await sign_in(client, "tok-acme")
    html = await post_form(client, "/tenants/acme/funds/review", "/tenants/acme", {"amount": typed})
    assert 'id="confirm-text"' not in html
    assert message in html and 'aria-invalid="true"' in html


async def test_auto_recharge_says_whats_wrong_in_greek(console: Console) -> None:
    client, fakes = console
    client.session.cookie_jar.update_cookies({"meter_lang": "el"})
    await sign_in(client, "tok-acme")
    data = {"enabled": "on", "recharge_amount": "abc", "trigger_balance": "-1"}
    html = await post_form(client, "/tenants/acme/auto-recharge", "/tenants/acme", data)
    assert "Εισαγάγετε ένα ποσό, π.χ. 50,00." in html
    assert "Δεν μπορεί να είναι αρνητικό." in html
    assert "must be" not in html
    # A Greek amount goes to the API as plain text; the form shows it back the Greek way.
    data = {"enabled": "on", "recharge_amount": "1.025,50", "trigger_balance": "5,5"}
    html = await post_form(client, "/tenants/acme/auto-recharge", "/tenants/acme", data)
    assert 'id="ar-saved"' in html
    (sent,) = [c[2] for c in fakes.calls if c[0] == "auto-recharge"]
    assert "'recharge_amount': '1025.50'" in str(sent) and "'trigger_balance': '5.5'" in str(sent)
