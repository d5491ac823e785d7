"""POST /tenants/{id}/recharges/{request_id}/outcome: billing's answer as a command,
and the admin API under METER_AUTH=jwt (processor/http/admin.py, processor/http/auth.py)."""

from __future__ import annotations

import json
from collections.abc import Awaitable

import pytest
from pydantic import SecretStr

from processor.http.admin import AdminAPI
from processor.http.admin_requests import Reply
from processor.http.auth import Access, TokenVerifier
from schemas import decode_command
from schemas.inputs import FundsAdded, RechargeFailed
from tests.support.tokens import AUDIENCE, ISSUER, TestKeys
from tests.unit.test_admin import AUTH, FUNDS, FakePublisher, body, enc, make_api

SUCCEEDED = enc({"outcome": "succeeded", "amount": "25.00", "attempt": 2})
FAILED = enc({"outcome": "failed", "reason": "card_declined", "attempt": 1})


async def test_a_success_is_an_auto_recharge_top_up_for_the_request() -> None:
    api, pub = make_api()
    reply = await api.record_recharge_outcome("acme", "rr-1", AUTH, SUCCEEDED)
    assert reply.status == 202, reply.body
    assert body(reply)["type"] == "funds_added"
    [(_, key, value)] = pub.sent
    command = decode_command(value)
    assert key == b"acme" and isinstance(command, FundsAdded)
    assert command.source == "auto_recharge" and command.recharge_request_id == "rr-1"
    assert command.attempt == 2 and str(command.amount) == "25.00"
    assert command.currency == "USD" and command.actor == "admin-token"
    assert command.command_id == "outcome:rr-1#2:succeeded"


async def test_a_failure_is_recharge_failed_with_the_reason() -> None:
    api, pub = make_api()
    reply = await api.record_recharge_outcome("acme", "rr-1", AUTH, FAILED)
    assert reply.status == 202 and body(reply)["type"] == "recharge_failed"
    command = decode_command(pub.sent[0][2])
    assert isinstance(command, RechargeFailed)
    assert (command.recharge_request_id, command.reason, command.attempt) == (
        "rr-1",
        "card_declined",
        1,
    )


async def test_an_answer_sent_twice_without_a_key_is_one_command() -> None:
    api, pub = make_api()
    first = await api.record_recharge_outcome("acme", "rr-1", AUTH, SUCCEEDED)
    again = await api.record_recharge_outcome("acme", "rr-1", AUTH, SUCCEEDED)
    assert first.status == again.status == 202
    assert len(pub.sent) == 1
    # Another request's answer is another command, even with the same body.
    await api.record_recharge_outcome("acme", "rr-2", AUTH, SUCCEEDED)
    assert len(pub.sent) == 2


@pytest.mark.parametrize(
    "payload",
    [
        {"outcome": "succeeded"},
        {"outcome": "failed"},
        {"outcome": "failed", "reason": "x", "amount": "1.00"},
        {"outcome": "succeeded", "amount": "1.00", "currency": "EUR"},
        {"outcome": "succeeded", "amount": "1.000001"},
        {"outcome": "refunded", "amount": "1.00"},
    ],
)
async def test_an_answer_the_processor_would_reject_is_422(payload: dict[str, str]) -> None:
    api, pub = make_api()
    reply = await api.record_recharge_outcome("acme", "rr-1", AUTH, enc(payload))
    assert reply.status == 422 and body(reply)["error"] == "invalid_request"
    assert pub.sent == []


async def test_a_bad_request_id_is_400() -> None:
    api, pub = make_api()
    reply = await api.record_recharge_outcome("acme", "r\u00e9", AUTH, SUCCEEDED)
    assert reply.status == 400 and body(reply)["error"] == "invalid_request_id"
    assert pub.sent == []


# ------------------------------------------------------------------- METER_AUTH=jwt


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> TestKeys:
    return TestKeys.make(tmp_path_factory.mktemp("keys"))


def jwt_api(keys: TestKeys, token: str | None = None) -> tuple[AdminAPI, FakePublisher]:
    verifier = TokenVerifier(str(keys.jwks_path), ISSUER, AUDIENCE)
    access = Access("jwt", None if token is None else SecretStr(token), verifier)
    return make_api(token=token, access=access)


async def test_under_jwt_billing_posts_funds_and_outcomes_with_its_actor(keys: TestKeys) -> None:
    api, pub = jwt_api(keys)
    billing = keys.header(keys.token(role="billing", sub="billing-svc"))
    assert api.enabled  # no static token needed
    assert (await api.add_funds("acme", billing, FUNDS)).status == 202
    assert (await api.record_recharge_outcome("acme", "rr-1", billing, FAILED)).status == 202
    assert {decode_command(v).actor for _, _, v in pub.sent} == {"billing-svc"}


async def test_under_jwt_who_may_do_what(keys: TestKeys) -> None:
    api, pub = jwt_api(keys, token="static-automation")
    operator = keys.header(keys.token(role="operator"))
    acme_admin = keys.header(keys.tenant_admin("acme", sub="alice"))
    settings = enc({"enabled": True, "recharge_amount": "25.00", "trigger_balance": "5.00"})

    async def status(reply_of: Awaitable[Reply]) -> int:
        reply = await reply_of
        return int(reply.status)

    assert await status(api.add_funds("acme", operator, FUNDS)) == 403
    assert await status(api.add_funds("acme", acme_admin, FUNDS)) == 202
    assert await status(api.add_funds("globex", acme_admin, FUNDS)) == 403
    assert await status(api.record_recharge_outcome("acme", "rr", acme_admin, FAILED)) == 403
    assert await status(api.configure_auto_recharge("globex", acme_admin, settings)) == 403
    assert await status(api.configure_auto_recharge("acme", acme_admin, settings)) == 202
    assert await status(api.add_funds("acme", {}, FUNDS)) == 401
    expired = keys.header(keys.token(role="billing", exp_in=-3600))
    reply = await api.add_funds("acme", expired, FUNDS)
    assert reply.status == 401 and 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
    assert json.loads(reply.body)["type"].endswith("/invalid_token")
    static = {"Authorization": "Bearer static-automation"}
    assert await status(api.add_funds("acme", static, FUNDS)) == 202
    actors = [decode_command(v).actor for _, _, v in pub.sent]
    assert actors == ["alice", "alice", "admin-token"]
