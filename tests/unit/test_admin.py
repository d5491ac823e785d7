"""The admin API's logic (processor/http/admin.py) with a fake publisher, and its OpenAPI."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import SecretStr

from processor.http import openapi
from processor.http.admin import AdminAPI
from processor.http.admin_requests import Reply, command_id_for, decimal_places
from processor.http.idempotency import IdempotencyCache
from schemas import decode_command
from schemas.inputs import AutoRechargeConfigured, FundsAdded

TOKEN = "s3cret-tøken"  # non-ASCII on purpose: compare_digest must not choke on it
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


class FakePublisher:
    def __init__(self, fail: BaseException | None = None, hang: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail
        self.hang = hang

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, key, value))


def make_api(
    publisher: FakePublisher | None = None, token: str | None = TOKEN, **kw: Any
) -> tuple[AdminAPI, FakePublisher]:
    pub = publisher or FakePublisher()
    kw.setdefault("decimals", 4)  # the example card's
    api = AdminAPI(
        None if token is None else SecretStr(token),
        "USD",
        "acme.credits.commands",
        pub,
        clock=lambda: NOW,
        new_command_id=lambda: "generated-id",
        **kw,
    )
    return api, pub


def body(reply: Reply) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(reply.body)
    return result


def enc(value: Any) -> bytes:
    return json.dumps(value).encode()


FUNDS = enc({"amount": "50.00", "currency": "USD"})
SETTINGS = enc({"enabled": True, "recharge_amount": "25.00", "trigger_balance": "5.00"})


# ------------------------------------------------------------------------ happy path


async def test_top_up_publishes_a_manual_funds_added_keyed_by_tenant() -> None:
    api, pub = make_api()
    reply = await api.add_funds("acme", {**AUTH, "Idempotency-Key": "top-up-1"}, FUNDS)
    assert reply.status == 202
    assert body(reply) == {
        "status": "accepted",
        "type": "funds_added",
        "command_id": "top-up-1",
        "tenant_id": "acme",
    }
    assert reply.headers["Location"] == "/commands/top-up-1?tenant_id=acme"
    [(topic, key, value)] = pub.sent
    assert (topic, key) == ("acme.credits.commands", b"acme")
    # Exactly what the processor's own decoder accepts, nothing more.
    command = decode_command(value)
    assert isinstance(command, FundsAdded)
    assert json.loads(value) == {
        "type": "funds_added",
        "command_id": "top-up-1",
        "tenant_id": "acme",
        "occurred_at": "2026-11-25T10:00:00Z",
        "amount": "50.00",
        "currency": "USD",
        "source": "manual",
        # The static token's actor (processor/http/auth.py).
        "actor": "admin-token",
    }


async def test_without_idempotency_key_a_fresh_command_id_is_used() -> None:
    api, pub = make_api()
    reply = await api.add_funds("acme", AUTH, FUNDS)
    assert reply.status == 202 and body(reply)["command_id"] == "generated-id"
    assert json.loads(pub.sent[0][2])["command_id"] == "generated-id"


async def test_the_same_key_and_body_get_the_first_answer_without_publishing_again() -> None:
    api, pub = make_api()
    headers = {**AUTH, "idempotency-key": "retry-me"}  # header names are case-insensitive
    first = await api.add_funds("acme", headers, FUNDS)
    second = await api.add_funds("acme", headers, FUNDS)
    assert first.status == 202 and second == first
    # The same amount written differently is the same request.
    same = enc({"currency": "USD", "amount": "50.0"})
    assert await api.add_funds("acme", headers, same) == first
    assert [json.loads(v)["command_id"] for _, _, v in pub.sent] == ["retry-me"]
    # Another worker (or this one restarted) publishes the same command again, and the
    # processor drops its command id as a duplicate.
    other, other_pub = make_api()
    assert await other.add_funds("acme", headers, FUNDS) == first
    assert json.loads(other_pub.sent[0][2])["command_id"] == "retry-me"


async def test_auto_recharge_publishes_the_settings() -> None:
    api, pub = make_api()
    reply = await api.configure_auto_recharge("acme", {**AUTH, "Idempotency-Key": "ar-1"}, SETTINGS)
    assert reply.status == 202 and body(reply)["type"] == "auto_recharge_configured"
    command = decode_command(pub.sent[0][2])
    assert isinstance(command, AutoRechargeConfigured)
    assert command.enabled is True
    assert str(command.recharge_amount) == "25.00" and str(command.trigger_balance) == "5.00"
    disabled = enc({"enabled": False, "recharge_amount": "25.00", "trigger_balance": "0"})
    assert (await api.configure_auto_recharge("acme", AUTH, disabled)).status == 202


# ------------------------------------------------------------------------------ auth


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
    ids=["none", "empty", "basic", "bearer-without-token"],
)
async def test_no_token_is_401_with_a_challenge(headers: dict[str, str]) -> None:
    api, pub = make_api()
    reply = await api.add_funds("acme", headers, FUNDS)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert body(reply)["error"] == "unauthorized"
    assert pub.sent == []


@pytest.mark.parametrize("given", ["n0t-the-t0ken", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
async def test_wrong_token_is_403_and_never_logged(
    given: str, caplog: pytest.LogCaptureFixture
) -> None:
    api, pub = make_api()
    with caplog.at_level(logging.DEBUG):
        reply = await api.configure_auto_recharge(
            "acme", {"Authorization": f"Bearer {given}"}, SETTINGS
        )
    assert reply.status == 403 and body(reply)["error"] == "forbidden"
    assert pub.sent == []
    assert "wrong bearer token" in caplog.text
    assert given not in caplog.text and TOKEN not in caplog.text


async def test_auth_is_checked_before_the_body_is_looked_at() -> None:
    api, _ = make_api()
    assert (await api.add_funds("acme", {}, b"not json")).status == 401
    assert (await api.add_funds("acme", {"Authorization": "Bearer x"}, None)).status == 403


async def test_without_a_configured_token_the_admin_api_is_disabled() -> None:
    for token in (None, ""):
        api, pub = make_api(token=token)
        assert not api.enabled
        reply = await api.add_funds("acme", AUTH, FUNDS)
        assert reply.status == 503
        assert body(reply)["error"] == "admin_disabled"
        assert "admin API disabled" in body(reply)["detail"]
        assert pub.sent == []


async def test_a_successful_request_logs_no_token(caplog: pytest.LogCaptureFixture) -> None:
    api, _ = make_api()
    with caplog.at_level(logging.DEBUG):
        assert (await api.add_funds("acme", AUTH, FUNDS)).status == 202
    assert "funds_added" in caplog.text and TOKEN not in caplog.text


# ------------------------------------------------------------------------ validation


async def refused(
    payload: bytes | None,
    tenant: str = "acme",
    headers: dict[str, str] | None = None,
    endpoint: str = "funds",
) -> tuple[Reply, dict[tuple[Any, ...], str]]:
    api, pub = make_api()
    call = api.add_funds if endpoint == "funds" else api.configure_auto_recharge
    reply = await call(tenant, {**AUTH, **(headers or {})}, payload)
    assert pub.sent == []
    errors = {tuple(e["loc"]): e["msg"] for e in body(reply).get("errors") or []}
    return reply, errors


@pytest.mark.parametrize(
    ("payload", "loc", "message"),
    [
        ({"amount": "0", "currency": "USD"}, ("body", "amount"), "greater than 0"),
        ({"amount": "-5.00", "currency": "USD"}, ("body", "amount"), "greater than 0"),
        ({"amount": "1000000.01", "currency": "USD"}, ("body", "amount"), "at most 1000000"),
        ({"amount": 50.0, "currency": "USD"}, ("body", "amount"), "not a number"),
        ({"amount": "5e3", "currency": "USD"}, ("body", "amount"), "decimal number"),
        ({"amount": "50.00"}, ("body", "currency"), "Field required"),
        ({"amount": "50.00", "currency": "usd"}, ("body", "currency"), "ISO 4217"),
        ({"amount": "50.00", "currency": "EUR"}, ("body", "currency"), "must be USD"),
        ({"ammount": "50.00", "currency": "USD"}, ("body", "ammount"), "not a field"),
        ([1, 2], ("body",), "JSON object"),
    ],
)
async def test_invalid_funds_bodies_are_422_naming_the_field(
    payload: Any, loc: tuple[str, ...], message: str
) -> None:
    reply, errors = await refused(enc(payload))
    assert reply.status == 422, reply
    assert body(reply)["error"] == "invalid_request"
    assert message in errors[loc], errors
    assert message in body(reply)["detail"]


async def test_a_field_named_twice_is_422_never_last_wins() -> None:
    reply, errors = await refused(b'{"amount": "1.00", "currency": "USD", "amount": "999999.00"}')
    assert reply.status == 422, reply
    assert "more than once" in errors[("body", "amount")]
    reply, errors = await refused(
        b'{"enabled": true, "recharge_amount": "5.00", "trigger_balance": "1.00", '
        b'"enabled": false}',
        endpoint="auto-recharge",
    )
    assert reply.status == 422 and ("body", "enabled") in errors


async def test_invalid_settings_are_422_listing_every_field() -> None:
    reply, errors = await refused(
        enc({"enabled": "yes", "recharge_amount": "0", "trigger_balance": "-1"}),
        endpoint="auto-recharge",
    )
    assert reply.status == 422
    assert set(errors) == {
        ("body", "enabled"),
        ("body", "recharge_amount"),
        ("body", "trigger_balance"),
    }


async def test_header_and_body_errors_come_together() -> None:
    reply, errors = await refused(
        enc({"amount": "0", "currency": "USD"}),
        headers={"Idempotency-Key": "x" * 129},
    )
    assert reply.status == 422
    assert "128 printable ASCII" in errors[("header", "Idempotency-Key")]
    assert ("body", "amount") in errors


@pytest.mark.parametrize("tenant", ["no spaces allowed", "x" * 7000, "a/b", "caf\u00e9", ""])
@pytest.mark.parametrize("endpoint", ["funds", "auto-recharge"])
@pytest.mark.parametrize("headers", [AUTH, {}], ids=["authorized", "anonymous"])
async def test_a_path_that_is_no_tenant_id_is_400_before_anything_else(
    tenant: str, endpoint: str, headers: dict[str, str]
) -> None:
    api, pub = make_api()
    call = api.add_funds if endpoint == "funds" else api.configure_auto_recharge
    reply = await call(tenant, headers, b"not even json")
    assert reply.status == 400, reply
    answer = body(reply)
    assert answer["error"] == "invalid_tenant_id" and answer["tenant_id"] is None
    assert "1 to 64 characters of A-Z a-z 0-9 . _ : -" in answer["detail"]
    assert len(reply.body) < 300  # the id is not echoed
    assert pub.sent == []


async def test_malformed_json_is_400_and_oversized_is_413() -> None:
    reply, _ = await refused(b'{"amount": ')
    assert reply.status == 400 and body(reply)["error"] == "invalid_json"
    reply, _ = await refused(None)
    assert reply.status == 413


# ------------------------------------------------------------------------ publishing


async def test_a_publish_failure_is_503_telling_to_retry_with_the_same_key() -> None:
    api, _ = make_api(FakePublisher(fail=ConnectionError("broker down")))
    reply = await api.add_funds("acme", {**AUTH, "Idempotency-Key": "k-1"}, FUNDS)
    assert reply.status == 503
    assert body(reply)["error"] == "publish_failed"
    assert "k-1" in body(reply)["detail"] and "broker down" in body(reply)["detail"]


async def test_a_publish_that_never_acks_times_out_as_503() -> None:
    api, _ = make_api(FakePublisher(hang=True), publish_timeout=0.05)
    reply = await api.add_funds("acme", AUTH, FUNDS)
    assert reply.status == 503 and "no acknowledgement" in body(reply)["detail"]


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_document_is_checked_in_and_current() -> None:
    problems = openapi.check()
    assert not problems, (
        "docs/openapi.json is stale; run `python -m processor.http.openapi`: " + "; ".join(problems)
    )


def test_openapi_document_is_valid_openapi_3_1() -> None:
    document = json.loads(openapi.render())
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: raises on any violation of the spec
    paths = document["paths"]
    assert set(paths) == {
        "/tenants/{tenant_id}/account",
        "/tenants/{tenant_id}/authorize",
        "/tenants/{tenant_id}/funds",
        "/tenants/{tenant_id}/auto-recharge",
        "/tenants/{tenant_id}/limits",
        "/tenants/{tenant_id}/recharges/{request_id}/outcome",
        "/auth/whoami",
        "/tenants/{tenant_id}/notifications",
        "/metrics",
        "/health",
        "/ready",
        "/openapi.json",
        # Served by the ledger sink (meter ledger-sink), which each path's servers name.
        "/tenants/{tenant_id}/ledger",
        "/tenants/{tenant_id}/usage",
        "/tenants/{tenant_id}/ledger.csv",
        "/commands/{command_id}",
        "/tenants",
        "/tenants/{tenant_id}/recharges",
    }
    funds = paths["/tenants/{tenant_id}/funds"]["post"]
    assert funds["security"] == [{"jwt": []}, {"bearerAuth": []}]
    # A read is open unless METER_AUTH=jwt; every guarded operation names 401 and 403.
    account = paths["/tenants/{tenant_id}/account"]["get"]
    assert account["security"] == [{}, {"jwt": []}, {"bearerAuth": []}]
    for path in ("/tenants/{tenant_id}/account", "/tenants/{tenant_id}/ledger.csv"):
        responses = paths[path]["get"]["responses"]
        assert {"401", "403"} <= set(responses)
        assert "application/problem+json" in responses["403"]["content"]
    assert "jwt" in document["components"]["securitySchemes"]
    assert {"202", "401", "403", "422", "503"} <= set(funds["responses"])
    assert {p["name"] for p in funds["parameters"]} == {"tenant_id", "Idempotency-Key"}
    schemas = document["components"]["schemas"]
    # Generated from the models, so money is a string with the contract's pattern.
    assert schemas["FundsRequest"]["properties"]["amount"]["type"] == "string"
    assert schemas["FundsRequest"]["additionalProperties"] is False
    assert set(schemas["AccountView"]["required"]) >= {"tenant_id", "balance", "status"}


def test_openapi_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "openapi.json"
    assert openapi.main(["--check"], path=path) == 1
    assert openapi.main([], path=path) == 0
    assert openapi.main(["--check"], path=path) == 0
    path.write_text("{}\n")
    assert openapi.check(path) == [f"differs: {path}"]
    capsys.readouterr()
    assert openapi.main(["--check"], path=path) == 1
    assert "python -m processor.http.openapi" in capsys.readouterr().err


async def test_settings_may_name_the_cards_currency_but_no_other() -> None:
    api, pub = make_api()
    same = enc({"enabled": True, "recharge_amount": "5", "trigger_balance": "1", "currency": "USD"})
    assert (await api.configure_auto_recharge("acme", AUTH, same)).status == 202
    command = decode_command(pub.sent[0][2])
    assert isinstance(command, AutoRechargeConfigured) and command.currency == "USD"
    reply, errors = await refused(
        enc({"enabled": True, "recharge_amount": "5", "trigger_balance": "1", "currency": "EUR"}),
        endpoint="auto-recharge",
    )
    assert reply.status == 422 and "must be USD" in errors[("body", "currency")]


# ------------------------------------------------- what the processor would reject


@pytest.mark.parametrize(
    ("endpoint", "payload", "fields"),
    [
        ("funds", {"amount": "50.00001", "currency": "USD"}, {"amount"}),
        ("funds", {"amount": "0.00001", "currency": "USD"}, {"amount"}),
        (
            "auto-recharge",
            {"enabled": True, "recharge_amount": "25.123456", "trigger_balance": "5.00001"},
            {"recharge_amount", "trigger_balance"},
        ),
    ],
)
async def test_more_decimals_than_the_card_keeps_is_422_not_a_silent_rejection(
    endpoint: str, payload: dict[str, Any], fields: set[str]
) -> None:
    reply, errors = await refused(enc(payload), endpoint=endpoint)
    assert reply.status == 422 and body(reply)["error"] == "invalid_request"
    assert set(errors) == {("body", name) for name in fields}
    for name in fields:
        assert "more than 4 decimal places" in errors[("body", name)]
    assert {e["type"] for e in body(reply)["errors"]} == {"too_many_decimals"}


@pytest.mark.parametrize("amount", ["50.0001", "50.00010000", "50", "0.0001"])
async def test_amounts_at_the_cards_precision_pass(amount: str) -> None:
    api, pub = make_api()
    reply = await api.add_funds("acme", AUTH, enc({"amount": amount, "currency": "USD"}))
    assert reply.status == 202, reply
    assert len(pub.sent) == 1


async def test_a_card_with_fewer_decimals_refuses_more() -> None:
    api, pub = make_api(decimals=2)
    reply = await api.add_funds("acme", AUTH, enc({"amount": "1.005", "currency": "USD"}))
    assert reply.status == 422 and "more than 2 decimal places" in body(reply)["detail"]
    assert pub.sent == []


@pytest.mark.parametrize(
    ("text", "places"),
    [("5", 0), ("5.00", 0), ("1.2300", 2), ("0.0001", 4), ("0.000000", 0), ("1E+3", 0)],
)
def test_decimal_places(text: str, places: int) -> None:
    assert decimal_places(Decimal(text)) == places


# ----------------------------------------------------------------- Idempotency-Key


async def test_the_same_key_with_a_different_body_is_422() -> None:
    api, pub = make_api()
    headers = {**AUTH, "Idempotency-Key": "top-up-7"}
    assert (await api.add_funds("acme", headers, FUNDS)).status == 202
    other = enc({"amount": "999999.00", "currency": "USD"})
    reply = await api.add_funds("acme", headers, other)
    assert reply.status == 422
    answer = body(reply)
    assert answer["error"] == "idempotency_key_reused"
    assert answer["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert "different request" in answer["detail"]
    assert len(pub.sent) == 1


async def test_a_key_is_scoped_per_tenant_and_endpoint() -> None:
    api, pub = make_api()
    headers = {**AUTH, "Idempotency-Key": "k-1"}
    funds = await api.add_funds("acme", headers, FUNDS)
    other_tenant = await api.add_funds("globex", headers, enc({"amount": "7", "currency": "USD"}))
    settings = await api.configure_auto_recharge("acme", headers, SETTINGS)
    assert funds.status == other_tenant.status == settings.status == 202
    ids = [(key, json.loads(value)["command_id"]) for _, key, value in pub.sent]
    # Two commands for acme with distinct ids: the processor applies both.
    assert ids == [(b"acme", "k-1"), (b"globex", "k-1"), (b"acme", "auto-recharge:k-1")]
    assert body(settings)["command_id"] == "auto-recharge:k-1"
    assert settings.headers["Idempotency-Key"] == "k-1"
    # And each endpoint remembers its own request.
    assert await api.configure_auto_recharge("acme", headers, SETTINGS) == settings
    assert await api.add_funds("acme", headers, FUNDS) == funds
    assert len(pub.sent) == 3


async def test_a_top_up_key_may_not_take_the_settings_prefix() -> None:
    reply, errors = await refused(FUNDS, headers={"Idempotency-Key": "auto-recharge:x"})
    assert reply.status == 422 and "must not start with" in errors[("header", "Idempotency-Key")]


def test_settings_command_ids_stay_within_the_contract() -> None:
    assert command_id_for("funds", "k" * 128) == "k" * 128
    assert command_id_for("auto-recharge", "k" * 114) == "auto-recharge:" + "k" * 114
    long = command_id_for("auto-recharge", "k" * 115)
    assert long.startswith("auto-recharge:sha256:") and len(long) <= 128
    assert long == command_id_for("auto-recharge", "k" * 115)
    assert long != command_id_for("auto-recharge", "k" * 116)


async def test_a_long_settings_key_publishes_a_valid_command() -> None:
    api, pub = make_api()
    reply = await api.configure_auto_recharge(
        "acme", {**AUTH, "Idempotency-Key": "x" * 128}, SETTINGS
    )
    assert reply.status == 202
    command = decode_command(pub.sent[0][2])
    assert command.command_id == command_id_for("auto-recharge", "x" * 128)


async def test_after_a_failure_the_same_request_is_tried_again_but_not_another() -> None:
    failing = FakePublisher(fail=ConnectionError("broker down"))
    api, _ = make_api(failing)
    headers = {**AUTH, "Idempotency-Key": "k-9"}
    assert (await api.add_funds("acme", headers, FUNDS)).status == 503
    failing.fail = None
    # A different body still refused: the failed send may have landed all the same.
    other = enc({"amount": "1.00", "currency": "USD"})
    assert (await api.add_funds("acme", headers, other)).status == 422
    retried = await api.add_funds("acme", headers, FUNDS)
    assert retried.status == 202 and len(failing.sent) == 1
    assert await api.add_funds("acme", headers, FUNDS) == retried
    assert len(failing.sent) == 1


async def test_concurrent_requests_with_one_key_publish_once() -> None:
    class Slow(FakePublisher):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def publish(self, topic: str, key: bytes, value: bytes) -> None:
            await self.release.wait()
            await super().publish(topic, key, value)

    slow = Slow()
    api, _ = make_api(slow)
    headers = {**AUTH, "Idempotency-Key": "twice"}
    both = asyncio.gather(
        api.add_funds("acme", headers, FUNDS), api.add_funds("acme", headers, FUNDS)
    )
    await asyncio.sleep(0)
    slow.release.set()
    first, second = await both
    assert first.status == 202 and first == second
    assert len(slow.sent) == 1


async def test_without_a_key_nothing_is_remembered() -> None:
    api, pub = make_api()
    assert (await api.add_funds("acme", AUTH, FUNDS)).status == 202
    assert (
        await api.add_funds("acme", AUTH, enc({"amount": "1", "currency": "USD"}))
    ).status == 202
    assert len(api.idempotency) == 0 and len(pub.sent) == 2
    # The answer names the key to retry with; for settings it maps to the same id.
    settings = await api.configure_auto_recharge("acme", AUTH, SETTINGS)
    assert settings.headers["Idempotency-Key"] == "generated-id"
    assert body(settings)["command_id"] == "auto-recharge:generated-id"


async def test_the_idempotency_cache_is_bounded_by_count_bytes_and_age() -> None:
    now = [0.0]
    cache = IdempotencyCache(max_entries=3, max_bytes=10_000, ttl=60, clock=lambda: now[0])
    for i in range(5):
        cache.remember(("acme", "funds", f"k{i}"), (("amount", "1"),))
    assert len(cache) == 3
    assert cache.get(("acme", "funds", "k0")) is None
    assert cache.get(("acme", "funds", "k4")) is not None
    by_bytes = IdempotencyCache(max_entries=1_000, max_bytes=20_000, clock=lambda: now[0])
    for i in range(100):
        by_bytes.remember(("acme", "funds", f"key-{i:03d}" + "x" * 100), (("amount", "1"),))
        assert by_bytes.bytes <= 20_000
    assert 5 < len(by_bytes) < 20
    now[0] = 61.0
    assert cache.get(("acme", "funds", "k4")) is None
    assert len(cache) == 0 and cache.bytes == 0


async def test_the_api_holds_its_cache_within_bounds() -> None:
    api, _ = make_api(idempotency=IdempotencyCache(max_entries=50))
    for i in range(200):
        headers = {**AUTH, "Idempotency-Key": f"k-{i}"}
        assert (await api.add_funds("acme", headers, FUNDS)).status == 202
    assert len(api.idempotency) == 50


# ------------------------------------------------------------ limits (issue 20, part 4)


async def test_limits_publish_only_the_named_fields() -> None:
    api, pub = make_api()
    reply = await api.configure_limits(
        "acme", {**AUTH, "Idempotency-Key": "k-1"}, enc({"credit_limit": "5.00"})
    )
    assert reply.status == 202
    assert body(reply) == {
        "status": "accepted",
        "type": "tenant_limits_configured",
        "command_id": "limits:k-1",
        "tenant_id": "acme",
    }
    cleared = await api.configure_limits(
        "acme", {**AUTH, "Idempotency-Key": "k-2"}, enc({"notify_below": None})
    )
    assert cleared.status == 202
    first, second = (json.loads(value) for _, _, value in pub.sent)
    assert first == {
        "type": "tenant_limits_configured",
        "command_id": "limits:k-1",
        "tenant_id": "acme",
        "occurred_at": "2026-11-25T10:00:00Z",
        "credit_limit": "5.00",
        "actor": "admin-token",
    }
    assert second["notify_below"] is None and "credit_limit" not in second
    for _, _, value in pub.sent:
        decode_command(value)  # what the processor accepts


async def test_limits_absent_and_null_are_different_requests_for_one_key() -> None:
    api, _ = make_api()
    headers = {**AUTH, "Idempotency-Key": "k"}
    assert (await api.configure_limits("acme", headers, enc({"credit_limit": "1"}))).status == 202
    again = await api.configure_limits(
        "acme", headers, enc({"credit_limit": "1", "notify_below": None})
    )
    assert again.status == 422 and body(again)["error"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({"credit_limit": "1.00001"}, "too_many_decimals"),
        ({"notify_below": "0.12345"}, "too_many_decimals"),
        ({"credit_limit": "-1.00"}, None),
        ({"notify_below": "-0.01"}, None),
        ({"credit_limit": "1", "currency": "EUR"}, "currency_mismatch"),
        ({}, None),
        ({"credit_limit": None}, None),
        ({"credit_limt": "1"}, "extra_forbidden"),
    ],
)
async def test_limits_refuse_what_the_processor_would_reject(
    payload: dict[str, Any], kind: str | None
) -> None:
    api, pub = make_api()
    reply = await api.configure_limits("acme", AUTH, enc(payload))
    assert reply.status == 422, body(reply)
    assert body(reply)["error"] == "invalid_request"
    if kind is not None:
        assert kind in {e["type"] for e in body(reply)["errors"]}
    assert pub.sent == []


async def test_limits_need_the_token_and_a_tenant_id() -> None:
    api, _ = make_api()
    assert (await api.configure_limits("acme", {}, enc({"credit_limit": "1"}))).status == 401
    bad = await api.configure_limits("a b", AUTH, enc({"credit_limit": "1"}))
    assert bad.status == 400 and body(bad)["error"] == "invalid_tenant_id"


async def test_a_top_up_key_may_not_take_the_limits_prefix() -> None:
    api, _ = make_api()
    reply = await api.add_funds("acme", {**AUTH, "Idempotency-Key": "limits:x"}, FUNDS)
    assert reply.status == 422
    assert "reserved_prefix" in {e["type"] for e in body(reply)["errors"]}


async def test_auto_recharge_to_target_is_published_and_checked() -> None:
    api, pub = make_api()
    settings = {
        "enabled": True,
        "recharge_amount": "25.00",
        "trigger_balance": "5.00",
        "mode": "to_target",
        "target_balance": "40.00",
    }
    assert (await api.configure_auto_recharge("acme", AUTH, enc(settings))).status == 202
    command = decode_command(pub.sent[0][2])
    assert isinstance(command, AutoRechargeConfigured)
    assert command.mode == "to_target" and command.target_balance == Decimal("40.00")
    for wrong in ({"target_balance": "5.00"}, {"target_balance": None}, {"mode": "x"}):
        reply = await api.configure_auto_recharge("acme", AUTH, enc({**settings, **wrong}))
        assert reply.status == 422, wrong
    too_fine = await api.configure_auto_recharge(
        "acme", AUTH, enc({**settings, "target_balance": "40.00001"})
    )
    assert too_fine.status == 422
    assert "too_many_decimals" in {e["type"] for e in body(too_fine)["errors"]}
