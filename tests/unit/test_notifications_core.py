"""The worker's side of notifications (issue 20 part 5): `notifications_configured`
applied once and in order, published to credits.notification-settings, shown in the
account view without the secret; and the `recharge_succeeded` alert."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from processor.core.outcome import Status
from processor.core.outputs import AlertKind, AlertOut, NotificationsOut
from processor.http.views import account_view
from processor.kafka import wire
from processor.kafka.topics import TopicNames
from processor.testing import MemoryPublisher
from processor.worker import codec
from processor.worker.pipeline import Pipeline
from processor.worker.records import Record, Source
from schemas import BalanceAlert, DecodeError, NotificationSettings, decode_command
from schemas.notifications import NOTIFICATION_EVENTS
from tests.unit.conftest import CARD, DEDUPE, POLICY, T0, TENANT, Harness, Inputs, ts

SEALED = "gAAAAABsealed-secret_token="  # a Fernet token's alphabet; never opened here


def settings_command(command_id: str = "notifications:n-1", **change: Any) -> bytes:
    body: dict[str, Any] = {
        "type": "notifications_configured",
        "command_id": command_id,
        "tenant_id": TENANT,
        "occurred_at": ts(T0),
        "emails": ["admin@acme.example"],
        "webhook_url": "https://hooks.acme.example/x",
        "webhook_secret_sealed": SEALED,
        "events": ["low_balance", "exhausted"],
        **change,
    }
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def test_settings_are_applied_stored_and_published(harness: Harness) -> None:
    outcome = harness.command(decode_command(settings_command()))
    assert outcome.status is Status.APPLIED
    [out] = outcome.outputs
    assert isinstance(out, NotificationsOut)
    account = harness.account()
    assert account.notifications == out.settings
    assert account.notifications.webhook_secret_sealed == SEALED
    # The stored value keeps them through a round trip (the changelog).
    stored = harness.engine.accounts[TENANT]
    assert codec.load_stored(codec.dump_stored(stored)) == stored
    # The record is the contract's, byte for byte.
    raw = wire.dump_output(out, "USD")
    assert NotificationSettings.model_validate_json(raw).to_json() == raw
    assert wire.output_from_dict(orjson.loads(raw)) == out
    # A repeat is a duplicate: applied exactly once.
    again = harness.command(decode_command(settings_command()))
    assert again.status is Status.DUPLICATE and again.outputs == ()


def test_later_settings_replace_earlier_ones(harness: Harness) -> None:
    harness.command(decode_command(settings_command()))
    harness.command(
        decode_command(
            settings_command(
                "notifications:n-2", webhook_url=..., webhook_secret_sealed=..., events=...
            )
        )
    )
    settings = harness.account().notifications
    assert settings is not None and settings.webhook_url is None
    assert settings.events == NOTIFICATION_EVENTS and settings.command_id == "notifications:n-2"


def test_the_account_view_shows_the_settings_but_never_the_secret(harness: Harness) -> None:
    inputs = Inputs()
    harness.command(inputs.funds("5.0000"))
    assert account_view(harness.account(), "USD")["notifications"] is None
    harness.command(decode_command(settings_command()))
    view = account_view(harness.account(), "USD")
    assert view["notifications"] == {
        "emails": ["admin@acme.example"],
        "webhook_url": "https://hooks.acme.example/x",
        "events": ["low_balance", "exhausted"],
    }
    assert SEALED not in orjson.dumps(view).decode()


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"webhook_secret_sealed": ...}, "go together"),
        ({"webhook_url": ...}, "go together"),
        ({"webhook_secret_sealed": "not sealed!"}, "webhook_secret_sealed"),
        ({"emails": ["nobody"]}, "emails.0"),
        ({"events": ["low_balance", "low_balance"]}, "more than once"),
        ({"events": []}, "events"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
    ],
)
def test_a_bad_command_is_rejected_with_a_reason(change: dict[str, Any], detail: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_command(settings_command(**change))
    assert info.value.reason == "invalid_event" and detail in info.value.detail


async def test_the_worker_publishes_settings_keyed_by_tenant_to_their_topic() -> None:
    names = TopicNames(
        calls="usage.calls",
        conferencing="usage.conferencing",
        commands="credits.commands",
        recharge_requests="credits.recharge-requests",
        ledger="credits.ledger",
        alerts="credits.alerts",
        rejected="credits.rejected",
        reroute="r",
        timer="t",
        accounts_changelog="a",
        dedupe_changelog="d",
    )
    pub = MemoryPublisher()
    pipeline = Pipeline.build(CARD, POLICY, DEDUPE, {}, {}, names, 1, pub, clock=lambda: T0)
    record = Record("credits.commands", 0, 0, TENANT.encode(), settings_command())
    assert await pipeline.handle(Source.COMMANDS, record) == "applied"
    # Beside the command's result on credits.command-results.
    [(topic, key, value, _)] = [s for s in pub.sent if s[0] == names.notification_settings]
    assert topic == "credits.notification-settings"
    assert key == TENANT.encode()
    assert orjson.loads(value)["webhook_secret_sealed"] == SEALED


def test_funds_that_close_a_request_raise_recharge_succeeded(harness: Harness) -> None:
    inputs = Inputs()
    harness.command(inputs.configure(trigger="10.0000", recharge_amount="50.0000"))
    [request] = harness.requests()
    outcome = harness.command(inputs.auto_funds("50.0000", request.request_id, "f-1"))
    [succeeded] = [
        o
        for o in outcome.outputs
        if isinstance(o, AlertOut) and o.alert is AlertKind.RECHARGE_SUCCEEDED
    ]
    assert succeeded.request_id == request.request_id
    assert succeeded.amount == request.amount and succeeded.balance == harness.account().balance
    raw = wire.dump_output(succeeded, "USD")
    assert BalanceAlert.model_validate_json(raw).to_json() == raw
    assert wire.output_from_dict(orjson.loads(raw)) == succeeded
    # Funds that close nothing (manual, or a request already closed) raise none.
    for cmd in (inputs.funds("1.0000"), inputs.auto_funds("50.0000", request.request_id)):
        out = harness.command(cmd).outputs
        assert not any(
            isinstance(o, AlertOut) and o.alert is AlertKind.RECHARGE_SUCCEEDED for o in out
        )


def test_recharge_succeeded_needs_its_request_and_amount() -> None:
    base = {
        "alert_id": "a",
        "tenant_id": TENANT,
        "alert": "recharge_succeeded",
        "balance": "1.00",
        "currency": "USD",
        "occurred_at": T0,
    }
    with pytest.raises(ValueError, match="request_id and amount"):
        BalanceAlert.model_validate({**base, "request_id": "r"})
    BalanceAlert.model_validate({**base, "request_id": "r", "amount": "50.00"})
