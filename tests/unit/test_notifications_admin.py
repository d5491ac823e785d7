"""PUT /tenants/{id}/notifications (issue 20 part 5): validation, sealing, idempotency."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from processor.config.sealing import Sealer, SealError
from schemas import NotificationsConfigured, decode_command
from tests.unit.test_admin import AUTH, body, enc, make_api

KEY = Sealer.new_key()
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
FULL = {
    "emails": ["admin@acme.example", "ops@acme.example"],
    "webhook_url": "https://hooks.acme.example/credits",
    "webhook_secret": SECRET,
    "events": ["low_balance", "recharge_failed"],
}


async def test_the_command_carries_the_secret_sealed_and_never_in_clear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api, pub = make_api(sealer=Sealer(KEY))
    reply = await api.configure_notifications("acme", {**AUTH, "Idempotency-Key": "n-1"}, enc(FULL))
    assert reply.status == 202, body(reply)
    assert body(reply) == {
        "status": "accepted",
        "type": "notifications_configured",
        "command_id": "notifications:n-1",
        "tenant_id": "acme",
    }
    [(topic, key, value)] = pub.sent
    assert topic == "acme.credits.commands" and key == b"acme"
    assert SECRET.encode() not in value and SECRET not in caplog.text
    command = decode_command(value)
    assert isinstance(command, NotificationsConfigured)
    assert command.emails == FULL["emails"] and command.events == FULL["events"]
    assert command.webhook_secret_sealed is not None
    assert Sealer(KEY).open(command.webhook_secret_sealed) == SECRET
    # Another key does not open it.
    with pytest.raises(SealError):
        Sealer(Sealer.new_key()).open(command.webhook_secret_sealed)


async def test_emails_only_needs_no_key_and_events_default_to_all() -> None:
    api, pub = make_api()
    reply = await api.configure_notifications("acme", AUTH, enc({"emails": ["a@b.example"]}))
    assert reply.status == 202
    command = decode_command(pub.sent[0][2])
    assert isinstance(command, NotificationsConfigured)
    assert command.webhook_url is None and command.webhook_secret_sealed is None
    assert "funds_expiring" in command.events and len(command.events) == 8


async def test_a_webhook_without_secrets_key_is_503() -> None:
    api, pub = make_api()
    reply = await api.configure_notifications("acme", AUTH, enc(FULL))
    assert reply.status == 503 and body(reply)["error"] == "secrets_disabled"
    assert pub.sent == []


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"emails": ["not-an-address"]}, "emails.0"),
        ({"emails": ["a@b.example\r\nBcc: x@y.example"]}, "emails.0"),
        ({"emails": ["a@b.example", "A@b.example"]}, "more than once"),
        ({"emails": [f"u{i}@b.example" for i in range(11)]}, "emails"),
        ({"webhook_url": "ftp://hooks.example/x"}, "webhook_url"),
        ({"webhook_url": "https:///no-host"}, "webhook_url"),
        ({"webhook_secret": "plain"}, "webhook_secret"),
        ({"webhook_secret": "whsec_" + base64.b64encode(b"short").decode()}, "webhook_secret"),
        ({"webhook_secret": None}, "go together"),
        ({"webhook_url": None}, "go together"),
        ({"events": []}, "events"),
        ({"events": ["low_balance", "low_balance"]}, "more than once"),
        ({"events": ["balance_party"]}, "events.0"),
        ({"email": ["x@y.example"]}, "email"),
    ],
)
async def test_refusals_name_the_field(change: dict[str, Any], what: str) -> None:
    api, pub = make_api(sealer=Sealer(KEY))
    reply = await api.configure_notifications("acme", AUTH, enc({**FULL, **change}))
    assert reply.status == 422, body(reply)
    assert body(reply)["error"] == "invalid_request"
    assert what in body(reply)["detail"]
    assert SECRET not in json.dumps(body(reply))
    assert pub.sent == []


async def test_a_bad_address_is_refused_in_words_not_with_the_pattern() -> None:
    api, _ = make_api(sealer=Sealer(KEY))
    reply = await api.configure_notifications(
        "acme", AUTH, enc({**FULL, "emails": ["Ops <ops@acme.example>"]})
    )
    [error] = body(reply)["errors"]
    assert error["msg"] == "must be an email address such as ops@example.com (no name, no <>)"


async def test_the_same_key_and_body_is_one_command_a_new_secret_is_a_new_request() -> None:
    api, pub = make_api(sealer=Sealer(KEY))
    headers = {**AUTH, "Idempotency-Key": "n-2"}
    first = await api.configure_notifications("acme", headers, enc(FULL))
    again = await api.configure_notifications("acme", headers, enc(FULL))
    assert first.status == again.status == 202 and len(pub.sent) == 1
    other = "whsec_" + base64.b64encode(b"z" * 32).decode()
    changed = await api.configure_notifications(
        "acme", headers, enc({**FULL, "webhook_secret": other})
    )
    assert changed.status == 422 and body(changed)["error"] == "idempotency_key_reused"
    # The cache keeps a digest of the secret, never the secret.
    assert SECRET not in repr(api.idempotency.entries)


async def test_needs_the_token_a_tenant_id_and_the_prefix_is_reserved() -> None:
    api, _ = make_api(sealer=Sealer(KEY))
    assert (await api.configure_notifications("acme", {}, enc(FULL))).status == 401
    bad = await api.configure_notifications("a b", AUTH, enc(FULL))
    assert bad.status == 400
    top_up = await api.add_funds(
        "acme",
        {**AUTH, "Idempotency-Key": "notifications:x"},
        enc({"amount": "1", "currency": "USD"}),
    )
    assert top_up.status == 422
    assert "reserved_prefix" in {e["type"] for e in body(top_up)["errors"]}


def test_a_bad_secrets_key_is_refused_without_repeating_it() -> None:
    with pytest.raises(SealError) as info:
        Sealer("not-a-fernet-key")
    assert "not-a-fernet-key" not in str(info.value)
    assert "hidden" in repr(Sealer(KEY))


def test_a_bad_secrets_key_stops_every_command_with_a_sentence() -> None:
    from pydantic import ValidationError

    from processor.config.settings import Settings, settings_problems

    with pytest.raises(ValidationError) as info:
        Settings(METER_SECRETS_KEY="not-a-key")
    [problem] = settings_problems(info.value)
    assert problem.startswith("METER_SECRETS_KEY=(hidden) is not allowed: it must be Fernet")
    assert "not-a-key" not in problem
    assert Settings(METER_SECRETS_KEY=f"{KEY},{Sealer.new_key()}").secrets_key is not None
