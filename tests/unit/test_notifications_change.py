"""PATCH /tenants/{id}/notifications: the `notifications_changed` command, merged with
the tenant's settings at the owner (processor/core/engine.py) and published whole, and
the admin endpoint that publishes it (processor/http/admin.py), the secret sealed."""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from processor.config.sealing import Sealer
from processor.core.outcome import Status
from processor.core.outputs import NotificationsOut
from processor.core.state import Notifications
from processor.http.auth import ROUTES, Permission
from processor.kafka import wire
from processor.testing import MemoryPublisher
from processor.worker.pipeline import Pipeline
from processor.worker.records import Record, Source
from schemas import NotificationsChanged, NotificationSettings, decode_command
from schemas.notifications import NOTIFICATION_EVENTS
from tests.unit.conftest import CARD, DEDUPE, POLICY, T0, TENANT, Harness, ts
from tests.unit.test_admin import AUTH, body, enc, make_api
from tests.unit.test_batches import NAMES
from tests.unit.test_notifications_admin import KEY, SECRET
from tests.unit.test_notifications_core import SEALED, settings_command

OTHER_SEALED = "gAAAAABother-sealed_token="


def change(cid: str, **fields: Any) -> NotificationsChanged:
    return NotificationsChanged.model_validate(
        {
            "type": "notifications_changed",
            "command_id": cid,
            "tenant_id": TENANT,
            "occurred_at": ts(T0),
            **fields,
        }
    )


def configured(h: Harness) -> None:
    """The tenant's settings as test_notifications_core's PUT command sets them."""
    assert h.command(decode_command(settings_command())).status is Status.APPLIED


def published(h: Harness, cid: str, **fields: Any) -> Notifications:
    """Applies a change; the settings it published, which are the account's."""
    outcome = h.command(change(cid, **fields))
    assert outcome.status is Status.APPLIED
    [out] = outcome.outputs
    assert isinstance(out, NotificationsOut)
    assert h.account().notifications == out.settings
    # Complete, as the contract's record: every field, the secret only sealed.
    raw = wire.dump_output(out, "USD")
    assert NotificationSettings.model_validate_json(raw).to_json() == raw
    return out.settings


# ----------------------------------------------------------------- the command


def test_emails_alone_keep_the_webhook_and_events(harness: Harness) -> None:
    configured(harness)
    now = published(harness, "notifications-change:c-1", emails=["new@acme.example"])
    assert now == Notifications(
        ("new@acme.example",),
        "https://hooks.acme.example/x",
        SEALED,
        ("low_balance", "exhausted"),
        "notifications-change:c-1",
    )


def test_events_alone_keep_the_emails_and_webhook(harness: Harness) -> None:
    configured(harness)
    now = published(harness, "c-1", events=["restored"])
    assert now.events == ("restored",) and now.emails == ("admin@acme.example",)
    assert (now.webhook_url, now.webhook_secret_sealed) == ("https://hooks.acme.example/x", SEALED)


def test_a_null_url_removes_the_webhook_and_its_secret(harness: Harness) -> None:
    configured(harness)
    now = published(harness, "c-1", webhook_url=None)
    assert (now.webhook_url, now.webhook_secret_sealed) == (None, None)
    assert now.emails == ("admin@acme.example",) and now.events == ("low_balance", "exhausted")


def test_a_new_url_comes_with_its_new_secret(harness: Harness) -> None:
    configured(harness)
    url = "https://other.acme.example/hook"
    now = published(harness, "c-1", webhook_url=url, webhook_secret_sealed=OTHER_SEALED)
    assert (now.webhook_url, now.webhook_secret_sealed) == (url, OTHER_SEALED)
    assert now.emails == ("admin@acme.example",)


def test_a_tenant_without_settings_starts_from_the_puts_defaults(harness: Harness) -> None:
    now = published(harness, "c-1", emails=["a@acme.example"])
    # As a PUT of {"emails": [...]}: no webhook, every event.
    assert now == Notifications(("a@acme.example",), None, None, NOTIFICATION_EVENTS, "c-1")


def test_a_repeated_change_is_dropped(harness: Harness) -> None:
    configured(harness)
    published(harness, "c-1", emails=["new@acme.example"])
    published(harness, "c-2", events=["exhausted"])
    again = harness.command(change("c-1", emails=["new@acme.example"]))
    assert again.status is Status.DUPLICATE and again.outputs == ()
    now = harness.account().notifications
    assert now is not None and now.events == ("exhausted",)


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({}, "name at least one"),
        ({"emails": None}, "may not be null"),
        ({"events": None}, "may not be null"),
        ({"webhook_url": "https://h.example/x"}, "go together"),
        ({"webhook_secret_sealed": SEALED}, "go together"),
        ({"emails": ["a@b.example"], "webhook_secret_sealed": None}, "go together"),
        ({"webhook_url": None, "webhook_secret_sealed": SEALED}, "go together"),
        ({"events": []}, "events"),
    ],
)
def test_the_command_names_a_setting_and_the_url_with_its_secret(
    fields: dict[str, Any], detail: str
) -> None:
    with pytest.raises(ValidationError) as info:
        change("c-1", **fields)
    assert detail in str(info.value)


async def test_the_owner_publishes_the_merged_settings_beside_the_result() -> None:
    pub = MemoryPublisher()
    pipeline = Pipeline.build(CARD, POLICY, DEDUPE, {}, {}, NAMES, 1, pub, clock=lambda: T0)
    emails = change("notifications-change:c-1", emails=["new@acme.example"])
    for offset, value in enumerate(
        [settings_command(), emails.model_dump_json(exclude_unset=True).encode()]
    ):
        record = Record(NAMES.commands, 0, offset, TENANT.encode(), value)
        assert await pipeline.handle(Source.COMMANDS, record) == "applied"
    await pipeline.flusher.flush()
    settings = [orjson.loads(s[2]) for s in pub.sent if s[0] == NAMES.notification_settings]
    assert settings[-1]["emails"] == ["new@acme.example"]
    assert settings[-1]["webhook_secret_sealed"] == SEALED
    assert settings[-1]["command_id"] == "notifications-change:c-1"
    results = [orjson.loads(s[2]) for s in pub.sent if s[0] == NAMES.command_results]
    assert results[-1]["command_type"] == "notifications_changed"
    assert results[-1]["outcome"] == "applied"


# ------------------------------------------------------------------- the admin API


async def test_patch_of_emails_publishes_only_the_emails() -> None:
    api, pub = make_api()  # no METER_SECRETS_KEY needed: no secret named
    headers = {**AUTH, "Idempotency-Key": "k-1"}
    reply = await api.change_notifications("acme", headers, enc({"emails": ["a@acme.example"]}))
    assert reply.status == 202, reply.body
    assert body(reply) == {
        "status": "accepted",
        "type": "notifications_changed",
        "command_id": "notifications-change:k-1",
        "tenant_id": "acme",
    }
    assert reply.headers["Location"] == "/commands/notifications-change%3Ak-1?tenant_id=acme"
    [(topic, key, value)] = pub.sent
    assert (topic, key) == ("acme.credits.commands", b"acme")
    assert set(json.loads(value)) == {
        "type",
        "command_id",
        "tenant_id",
        "occurred_at",
        "actor",
        "emails",
    }
    assert isinstance(decode_command(value), NotificationsChanged)


async def test_patch_removing_the_webhook_sends_the_null() -> None:
    api, pub = make_api()
    reply = await api.change_notifications("acme", AUTH, enc({"webhook_url": None}))
    assert reply.status == 202, reply.body
    sent = json.loads(pub.sent[0][2])
    assert sent["webhook_url"] is None and sent["webhook_secret_sealed"] is None
    assert "emails" not in sent and "events" not in sent


async def test_patch_seals_a_new_secret_and_never_shows_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api, pub = make_api(sealer=Sealer(KEY))
    request = {"webhook_url": "https://hooks.acme.example/new", "webhook_secret": SECRET}
    headers = {**AUTH, "Idempotency-Key": "k-1"}
    reply = await api.change_notifications("acme", headers, enc(request))
    assert reply.status == 202, reply.body
    [(_, _, value)] = pub.sent
    assert SECRET.encode() not in value and SECRET.encode() not in reply.body
    assert SECRET not in caplog.text and SECRET not in repr(api.idempotency.entries)
    command = decode_command(value)
    assert isinstance(command, NotificationsChanged)
    assert command.webhook_secret_sealed is not None
    assert Sealer(KEY).open(command.webhook_secret_sealed) == SECRET
    # The same key and body: the first answer; another secret: a different request.
    assert (await api.change_notifications("acme", headers, enc(request))).body == reply.body
    other = {**request, "webhook_secret": SECRET.replace("a", "b", 1)}
    reused = await api.change_notifications("acme", headers, enc(other))
    assert reused.status == 422 and body(reused)["error"] == "idempotency_key_reused"
    assert len(pub.sent) == 1


async def test_patch_of_a_secret_without_secrets_key_is_503() -> None:
    api, pub = make_api()
    request = {"webhook_url": "https://hooks.acme.example/new", "webhook_secret": SECRET}
    reply = await api.change_notifications("acme", AUTH, enc(request))
    assert reply.status == 503 and body(reply)["error"] == "secrets_disabled"
    assert pub.sent == []


@pytest.mark.parametrize(
    ("request_body", "what"),
    [
        ({}, "name at least one of emails, events, webhook_url"),
        ({"webhook_secret": SECRET}, "go together"),
        ({"webhook_url": "https://hooks.acme.example/x"}, "go together"),
        ({"webhook_url": None, "webhook_secret": SECRET}, "go together"),
        ({"emails": ["not-an-address"]}, "emails.0"),
        ({"emails": None}, "may not be null"),
        ({"events": ["balance_party"]}, "events.0"),
        ({"events": []}, "events"),
        ({"webhook_secret_sealed": "x"}, "webhook_secret_sealed"),
    ],
)
async def test_patch_refuses_what_is_invalid_naming_it(
    request_body: dict[str, Any], what: str
) -> None:
    api, pub = make_api(sealer=Sealer(KEY))
    reply = await api.change_notifications("acme", AUTH, enc(request_body))
    assert reply.status == 422, reply.body
    assert body(reply)["error"] == "invalid_request" and what in body(reply)["detail"]
    assert SECRET not in reply.body.decode()
    assert pub.sent == []


async def test_patch_shares_the_put_rules_and_its_prefix_is_reserved() -> None:
    route = "/tenants/{tenant_id}/notifications"
    assert ROUTES[("PATCH", route)] is ROUTES[("PUT", route)] is Permission.CONFIGURE
    api, pub = make_api(sealer=Sealer(KEY))
    emails = enc({"emails": ["a@acme.example"]})
    assert (await api.change_notifications("acme", {}, emails)).status == 401
    assert (await api.change_notifications("a b", AUTH, emails)).status == 400
    assert (await api.change_notifications("acme", AUTH, b"{")).status == 400
    assert (await api.change_notifications("acme", AUTH, None)).status == 413
    assert pub.sent == []
    top_up = await api.add_funds(
        "acme",
        {**AUTH, "Idempotency-Key": "notifications-change:x"},
        enc({"amount": "1", "currency": "USD"}),
    )
    assert top_up.status == 422
    assert "reserved_prefix" in {e["type"] for e in body(top_up)["errors"]}
