"""`AccountAPI` (processor/http/accounts.py) on its own: no Faust, no broker, no table.

What it is built with decides every answer: the local lookup when this worker owns
the tenant and is ready, a 503 with Retry-After otherwise. The same behind a real
worker's views: tests/unit/test_read_api.py and tests/integration/test_read_api.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp

from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.core.state import Account
from processor.core.stored import StoredAccount
from processor.http.accounts import AccountAPI
from processor.http.problems import RETRY_AFTER_SECONDS

ME = "http://127.0.0.1:6066/"


def no_session() -> aiohttp.ClientSession:
    raise AssertionError("the owner answers itself: nothing is forwarded")


def api(stored: dict[str, StoredAccount], *, owned: bool = True, ready: bool = True) -> AccountAPI:
    return AccountAPI(
        load_rate_card(example_rate_card_path()),
        4,
        lookup=stored.get,
        owner_url=lambda tenant_id: ME,
        owned_partitions=lambda: set(range(4)) if owned else set(),
        ready=lambda: ready,
        me=lambda: ME,
        session=no_session,
        clock=lambda: datetime(2026, 12, 3, tzinfo=UTC),
    )


async def test_the_owner_answers_from_its_lookup() -> None:
    stored = {"acme": StoredAccount(Account("acme", balance=Decimal("12.5")))}
    status, body, headers = await api(stored).account_response("acme", forwarded=False)
    assert status == 200 and headers == {}
    view = json.loads(body)
    assert view["tenant_id"] == "acme" and view["balance"] == "12.5"


async def test_a_tenant_never_seen_is_404() -> None:
    status, body, _ = await api({}).account_response("acme", forwarded=False)
    assert status == 404 and json.loads(body)["error"] == "not_found"


async def test_not_owned_or_not_ready_is_503_with_retry_after() -> None:
    for reads in (api({}, owned=False), api({}, ready=False)):
        status, body, headers = await reads.account_response("acme", forwarded=False)
        assert status == 503 and json.loads(body)["error"] == "unavailable"
        assert headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}


async def test_authorize_answers_for_a_tenant_never_seen() -> None:
    status, body, _ = await api({}).authorize_response(
        "acme", "outbound", "+33612345678", forwarded=False
    )
    assert status == 200
    answer = json.loads(body)
    assert answer["allowed"] is False and answer["reason"] == "unknown_tenant"
