"""PATCH and DELETE of auto-recharge: the `auto_recharge_changed` command, merged with
the tenant's settings at the owner (processor/core/engine.py), and the admin API
endpoints that publish it (processor/http/admin.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from processor.core.outcome import Status
from processor.core.state import AutoRecharge, RechargeMode
from schemas import decode_command
from schemas.inputs import AutoRechargeChanged
from tests.unit.conftest import T0, TENANT, Harness, Inputs, ts
from tests.unit.test_admin import AUTH, body, enc, make_api


def change(cid: str, **fields: Any) -> AutoRechargeChanged:
    return AutoRechargeChanged.model_validate(
        {
            "type": "auto_recharge_changed",
            "command_id": cid,
            "tenant_id": TENANT,
            "occurred_at": ts(T0),
            **fields,
        }
    )


def settings(h: Harness) -> AutoRecharge | None:
    account = h.find()
    return None if account is None else account.auto_recharge


# ----------------------------------------------------------------- the command


def test_a_change_keeps_what_it_does_not_name(harness: Harness, inputs: Inputs) -> None:
    harness.command(inputs.funds("100", "f-1"))
    harness.command(inputs.configure("s-1", recharge_amount="50", trigger="10"))
    out = harness.command(change("c-1", trigger_balance="20"))
    assert out.status is Status.APPLIED
    now = settings(harness)
    assert now is not None
    assert (now.enabled, now.recharge_amount, now.trigger_balance) == (
        True,
        Decimal("50"),
        Decimal("20"),
    )
    # Switch to recharge-to-target; then off; the amounts stay.
    harness.command(change("c-2", mode="to_target", target_balance="80"))
    now = settings(harness)
    assert now is not None and now.mode is RechargeMode.TO_TARGET
    assert now.target_balance == Decimal("80") and now.trigger_balance == Decimal("20")
    harness.command(change("c-3", enabled=False))
    now = settings(harness)
    assert now is not None and not now.enabled and now.target_balance == Decimal("80")


def test_a_change_is_checked_after_merging_at_the_owner(harness: Harness, inputs: Inputs) -> None:
    harness.command(inputs.configure("s-1", recharge_amount="50", trigger="10"))
    harness.command(change("c-1", mode="to_target", target_balance="30"))
    before = settings(harness)
    # The trigger alone is valid; above the tenant's target it is not.
    out = harness.command(change("c-2", trigger_balance="40"))
    assert out.status is Status.REJECTED and out.rejection is not None
    assert out.rejection.reason == "invalid_settings"
    assert "target_balance must be above trigger_balance" in out.rejection.detail
    assert settings(harness) == before
    # to_target without a target anywhere.
    harness.command(change("c-3", mode="fixed"))
    out = harness.command(change("c-4", mode="to_target"))
    assert out.status is Status.REJECTED and out.rejection is not None
    assert "target_balance is required" in out.rejection.detail


def test_a_tenant_without_settings_needs_them_named(harness: Harness) -> None:
    out = harness.command(change("c-1", trigger_balance="5"))
    assert out.status is Status.REJECTED and out.rejection is not None
    assert out.rejection.reason == "invalid_settings"
    assert "enabled, recharge_amount" in out.rejection.detail
    # Turning off what does not exist changes nothing, and is no error.
    assert harness.command(change("c-2", enabled=False)).status is Status.APPLIED
    assert settings(harness) is None
    out = harness.command(change("c-3", enabled=True, recharge_amount="5", trigger_balance="1"))
    assert out.status is Status.APPLIED
    assert settings(harness) == AutoRecharge(True, Decimal("5"), Decimal("1"))


def test_a_change_that_enables_below_the_trigger_requests_a_recharge(
    harness: Harness, inputs: Inputs
) -> None:
    harness.command(inputs.configure("s-1", enabled=False, recharge_amount="50", trigger="10"))
    harness.command(inputs.funds("5", "f-1"))
    assert harness.requests() == []
    harness.command(change("c-1", enabled=True))
    assert [r.amount for r in harness.requests()] == [Decimal("50")]


def test_a_change_is_deduplicated_and_money_is_checked(harness: Harness, inputs: Inputs) -> None:
    harness.command(inputs.configure("s-1"))
    assert harness.command(change("c-1", trigger_balance="3")).status is Status.APPLIED
    assert harness.command(change("c-1", trigger_balance="3")).status is Status.DUPLICATE
    out = harness.command(change("c-2", recharge_amount="1.23456"))
    assert out.status is Status.REJECTED and out.rejection is not None
    assert out.rejection.reason == "invalid_event"
    out = harness.command(change("c-3", enabled=True, currency="EUR"))
    assert out.status is Status.REJECTED and out.rejection is not None
    assert out.rejection.reason == "currency_mismatch"


@pytest.mark.parametrize(
    "fields",
    [{}, {"currency": "USD"}, {"enabled": None}, {"recharge_amount": None}, {"mode": None}],
)
def test_the_command_names_a_setting_and_no_null_but_the_target(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        change("c-1", **fields)
    change("c-1", target_balance=None)  # clears the target


# ------------------------------------------------------------------- the admin API


async def test_patch_publishes_only_the_fields_named() -> None:
    api, pub = make_api()
    headers = {**AUTH, "Idempotency-Key": "k-1"}
    reply = await api.change_auto_recharge("acme", headers, enc({"trigger_balance": "7.50"}))
    assert reply.status == 202, reply.body
    assert body(reply)["type"] == "auto_recharge_changed"
    assert body(reply)["command_id"] == "auto-recharge-change:k-1"
    assert reply.headers["Location"] == "/commands/auto-recharge-change%3Ak-1?tenant_id=acme"
    [(topic, key, value)] = pub.sent
    assert (topic, key) == ("acme.credits.commands", b"acme")
    sent = json.loads(value)
    assert set(sent) == {
        "type",
        "command_id",
        "tenant_id",
        "occurred_at",
        "trigger_balance",
        "actor",
    }
    command = decode_command(value)
    assert isinstance(command, AutoRechargeChanged)
    assert command.model_fields_set >= {"trigger_balance"} and command.enabled is None
    # target_balance: null is sent as null (it clears the target).
    reply = await api.change_auto_recharge(
        "acme", {**AUTH, "Idempotency-Key": "k-2"}, enc({"target_balance": None})
    )
    assert reply.status == 202 and json.loads(pub.sent[-1][2])["target_balance"] is None


@pytest.mark.parametrize(
    ("request_body", "loc"),
    [
        ({}, ["body"]),
        ({"trigger_balance": "5", "target_balance": "4"}, ["body"]),
        ({"enabled": None}, ["body"]),
        ({"recharge_amount": "-1"}, ["body", "recharge_amount"]),
        ({"recharge_amount": "1.123456"}, ["body", "recharge_amount"]),
        ({"enabled": True, "currency": "EUR"}, ["body", "currency"]),
        ({"amount": "5"}, ["body", "amount"]),
    ],
)
async def test_patch_refuses_what_is_invalid_on_its_own(
    request_body: dict[str, Any], loc: list[str]
) -> None:
    api, pub = make_api()
    reply = await api.change_auto_recharge("acme", AUTH, enc(request_body))
    assert reply.status == 422, reply.body
    assert loc in [e["loc"] for e in body(reply)["errors"]]
    assert pub.sent == []


async def test_patch_and_delete_share_the_put_rules() -> None:
    api, pub = make_api()
    assert (await api.change_auto_recharge("acme", {}, enc({"enabled": True}))).status == 401
    assert (await api.disable_auto_recharge("bad id", AUTH, b"")).status == 400
    assert (await api.change_auto_recharge("acme", AUTH, b"{")).status == 400
    assert (await api.disable_auto_recharge("acme", AUTH, None)).status == 413
    assert (await api.disable_auto_recharge("acme", AUTH, enc({"enabled": True}))).status == 422
    assert pub.sent == []


async def test_delete_turns_auto_recharge_off_once_per_key() -> None:
    api, pub = make_api()
    headers = {**AUTH, "Idempotency-Key": "off-1"}
    first = await api.disable_auto_recharge("acme", headers, b"")
    again = await api.disable_auto_recharge("acme", headers, b"{}")
    assert first.status == again.status == 202
    assert body(first) == body(again)
    assert body(first)["command_id"] == "auto-recharge-off:off-1"
    [(_, _, value)] = pub.sent
    command = decode_command(value)
    assert isinstance(command, AutoRechargeChanged) and command.enabled is False
    assert command.model_fields_set & {"recharge_amount", "trigger_balance"} == set()
    # A top-up key may not pose as a PATCH's or DELETE's command id.
    reply = await api.add_funds(
        "acme",
        {**AUTH, "Idempotency-Key": "auto-recharge-off:x"},
        enc({"amount": "5", "currency": "USD"}),
    )
    assert reply.status == 422
