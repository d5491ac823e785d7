"""`meter`'s operator commands: parsing, help, exit codes, what they publish (no broker)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from processor.dev.kafka_local import free_port
from processor.http.admin_requests import ID_PREFIXES, Endpoint, command_id_for
from processor.ops import admin_client, cli, common
from schemas import decode_command
from schemas.inputs import (
    AutoRechargeChanged,
    AutoRechargeConfigured,
    FundsAdded,
    NotificationsChanged,
    TenantLimitsConfigured,
)
from schemas.notifications import NOTIFICATION_EVENTS


def commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Every command path of the parser tree, e.g. ("auto-recharge", "set")."""
    found: list[tuple[str, ...]] = []
    # argparse offers no public walk of a parser tree; these two are its stable internals.
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += commands(sub, (*prefix, name))
    return found


ALL = commands(cli.build_parser())


def test_the_operator_commands_are_registered() -> None:
    assert {
        ("worker",),
        ("kafka",),
        ("account",),
        ("add-funds",),
        ("auto-recharge",),
        ("auto-recharge", "set"),
        ("auto-recharge", "disable"),
        ("limits",),
        ("notifications",),
        ("schemas", "export"),
        ("simulate",),
    } <= set(ALL)


@pytest.mark.parametrize("path", [(), *ALL], ids=lambda p: " ".join(p) or "meter")
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meter") and len(out.splitlines()) > 3


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["account"],
        ["account", "has spaces"],
        ["add-funds", "acme"],
        ["add-funds", "x" * 65, "5.00"],
        ["auto-recharge"],
        ["auto-recharge", "set", "acme", "--amount", "5"],
        ["schemas"],
        ["no-such-command"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == common.EXIT_USAGE
    assert "usage: meter" in capsys.readouterr().err


def test_a_bad_tenant_id_names_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["add-funds", "no/slashes", "5.00"])
    assert "1 to 64 characters of A-Z a-z 0-9 . _ : -" in capsys.readouterr().err


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    async def __call__(self, cfg: Any, tenant: str, value: bytes) -> None:
        self.records.append((tenant, value))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    fake = Sent()
    monkeypatch.setattr(admin_client, "send_command", fake)
    return fake


def test_add_funds_publishes_a_manual_top_up_in_the_cards_currency(
    sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["add-funds", "acme", "50.00", "--idempotency-key", "k-1"]) == 0
    [(tenant, value)] = sent.records
    command = decode_command(value)
    assert isinstance(command, FundsAdded)
    assert tenant == "acme" and command.command_id == "k-1"
    assert command.source == "manual" and str(command.amount) == "50.00"
    assert command.currency == "USD"  # the example rate card's
    assert "k-1" in capsys.readouterr().out


def test_without_a_key_a_fresh_command_id_is_printed(
    sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["add-funds", "acme", "1"]) == 0
    assert cli.main(["add-funds", "acme", "1"]) == 0
    ids = [json.loads(v)["command_id"] for _, v in sent.records]
    assert ids[0] != ids[1]
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # Each value is named as it was given: the argument, not the contract's field.
        (["add-funds", "acme", "0"], "AMOUNT: must be greater than 0"),
        (["add-funds", "acme", "2000000"], "AMOUNT: must be at most 1000000"),
        (["add-funds", "acme", "5", "--currency", "usd"], "currency"),
        (["add-funds", "acme", "5", "--idempotency-key", "é"], "--idempotency-key: must be"),
        (["limits", "acme", "--credit-limit", "1", "--idempotency-key", "k" * 129], "1 to 128"),
        (["auto-recharge", "set", "acme", "--amount", "0", "--trigger", "1"], "--amount: must be"),
        (["auto-recharge", "set", "acme", "--amount", "5", "--trigger", "-1"], "--trigger: must"),
        (["auto-recharge", "disable", "acme", "--amount", "5"], "both --amount and --trigger"),
        (
            ["auto-recharge", "set", "acme", "--amount", "5", "--trigger", "9", "--target", "8"],
            "above trigger_balance",
        ),
        # The example card keeps 4 decimal places; the processor would reject more.
        (["add-funds", "acme", "5.00001"], "AMOUNT 5.00001 has more than 4 decimal places"),
        (["auto-recharge", "set", "acme", "--amount", "5", "--trigger", "0.12345"], "--trigger"),
    ],
)
def test_invalid_values_exit_2_before_anything_is_sent(
    argv: list[str], message: str, sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == common.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert sent.records == []


def test_auto_recharge_set_and_disable_with_explicit_amounts(sent: Sent) -> None:
    assert cli.main(["auto-recharge", "set", "acme", "--amount", "25", "--trigger", "5"]) == 0
    assert cli.main(["auto-recharge", "disable", "acme", "--amount", "25", "--trigger", "5"]) == 0
    first, second = (decode_command(v) for _, v in sent.records)
    assert isinstance(first, AutoRechargeConfigured) and first.enabled
    assert isinstance(second, AutoRechargeConfigured) and not second.enabled
    assert str(second.recharge_amount) == "25" and str(second.trigger_balance) == "5"


def fake_account(
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: dict[str, Any],
    auths: list[dict[str, str]] | None = None,
) -> list[str]:
    """Answer `get_account` with (status, body); the URLs asked, and each request's
    `auth` into `auths`."""
    asked: list[str] = []

    async def get(url: str, tenant: str, auth: dict[str, str]) -> tuple[int, dict[str, Any]]:
        asked.append(url)
        if auths is not None:
            auths.append(auth)
        return status, body

    monkeypatch.setattr(admin_client, "get_account", get)
    return asked


def test_disable_turns_it_off_at_the_owner_keeping_amounts_mode_and_target(
    sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {
        "enabled": True,
        "recharge_amount": "20.0000",
        "trigger_balance": "2.5000",
        "mode": "to_target",
        "target_balance": "40.0000",
    }
    asked = fake_account(monkeypatch, 200, {"auto_recharge": settings})
    monkeypatch.setenv("METER_WEB_PORT", "7777")
    assert cli.main(["auto-recharge", "disable", "acme", "--idempotency-key", "off-1"]) == 0
    assert asked == ["http://127.0.0.1:7777"]  # the default follows METER_WEB_PORT
    [(tenant, value)] = sent.records
    command = decode_command(value)
    # Only `enabled: false`: the owner keeps what it has (the mode and target too),
    # as the API's DELETE does; not amounts as a read saw them, in fixed mode.
    assert isinstance(command, AutoRechargeChanged) and tenant == "acme"
    assert command.command_id == "auto-recharge-off:off-1" and command.enabled is False
    assert json.loads(value).keys() >= {"enabled"}
    assert "recharge_amount" not in json.loads(value) and "mode" not in json.loads(value)


def test_disable_without_settings_says_so_and_without_a_worker_still_publishes(
    sent: Sent, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_account(monkeypatch, 404, {"error": "not_found"})
    assert cli.main(["auto-recharge", "disable", "acme"]) == 0
    assert "nothing to disable" in capsys.readouterr().out
    assert sent.records == []
    # No worker to ask: the owner decides when it applies the command.
    fake_account(monkeypatch, 0, {"detail": "no worker answers"})
    assert cli.main(["auto-recharge", "disable", "acme"]) == 0
    [(_, value)] = sent.records
    assert isinstance(decode_command(value), AutoRechargeChanged)


def test_limits_sends_only_what_was_given_and_null_to_clear_the_level(sent: Sent) -> None:
    assert cli.main(["limits", "acme", "--credit-limit", "20", "--notify-below", "5"]) == 0
    assert cli.main(["limits", "acme", "--no-notify-below"]) == 0
    assert cli.main(["limits", "acme", "--credit-limit", "0"]) == 0
    both, cleared, credit = (json.loads(v) for _, v in sent.records)
    assert (both["credit_limit"], both["notify_below"]) == ("20", "5")
    # null clears the level; the credit limit, not named, is kept at the owner.
    assert cleared["notify_below"] is None and "credit_limit" not in cleared
    assert credit["credit_limit"] == "0" and "notify_below" not in credit
    for _, value in sent.records:
        assert isinstance(decode_command(value), TenantLimitsConfigured)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["limits", "acme"], "name credit_limit, notify_below or both"),
        (["limits", "acme", "--credit-limit", "-1"], "--credit-limit: must be at least 0"),
        (["limits", "acme", "--notify-below", "1.00001"], "more than 4 decimal places"),
    ],
)
def test_limits_refuses_what_the_processor_would_reject(
    argv: list[str], message: str, sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == common.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert sent.records == []


# What `meter notifications` is given, and the fields it publishes: only those.
NOTIFICATIONS = [
    pytest.param(["--email", "ops@acme.io"], {"emails": ["ops@acme.io"]}, id="email"),
    pytest.param(
        ["--email", "ops@acme.io", "--email", "cfo@acme.io"],
        {"emails": ["ops@acme.io", "cfo@acme.io"]},
        id="emails",
    ),
    pytest.param(["--no-emails"], {"emails": []}, id="no-emails"),
    pytest.param(
        ["--events", "low_balance, exhausted"],
        {"events": ["low_balance", "exhausted"]},
        id="events",
    ),
    pytest.param(["--no-webhook"], {"webhook_url": None}, id="no-webhook"),
    pytest.param(
        ["--email", "ops@acme.io", "--events", "recharge_failed", "--no-webhook"],
        {"emails": ["ops@acme.io"], "events": ["recharge_failed"], "webhook_url": None},
        id="together",
    ),
]
ENVELOPE = {"type", "command_id", "tenant_id", "occurred_at", "actor"}


@pytest.mark.parametrize(("given", "fields"), NOTIFICATIONS)
def test_notifications_sends_only_what_was_given(
    given: list[str], fields: dict[str, Any], sent: Sent
) -> None:
    assert cli.main(["notifications", "acme", *given, "--idempotency-key", "n-1"]) == 0
    [(tenant, value)] = sent.records
    published = json.loads(value)
    # Absent fields are kept at the owner; webhook_url null removes the webhook.
    assert {k: v for k, v in published.items() if k not in ENVELOPE} == fields
    command = decode_command(value)
    assert isinstance(command, NotificationsChanged) and tenant == "acme"
    assert command.command_id == command_id_for("notifications-change", "n-1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--events", "low_balance,hurricane"], "unknown event 'hurricane'; the events are: "),
        (["--events", "x,"], "unknown events 'x', ''"),
        ([], "nothing to change: give --email (or --no-emails), --events or --no-webhook"),
        (["--email", "Ops <ops@acme.io>"], "--email 'Ops <ops@acme.io>': must be an email address"),
        (["--email", "a@acme.io", "--email", "A@acme.io"], "names an address more than once"),
        (["--events", "exhausted,exhausted"], "events names an event more than once"),
    ],
)
def test_notifications_refuses_what_the_contract_would(
    argv: list[str], message: str, sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    code: int | str | None
    try:
        code = cli.main(["notifications", "acme", *argv])
    except SystemExit as exit_:  # argparse's: the --events type
        code = exit_.code
    assert code == common.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    if "unknown" in message:
        assert ", ".join(NOTIFICATION_EVENTS) in err
    assert sent.records == []


def test_notifications_via_the_api_patches_the_same_body(
    sent: Sent, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    async def request(method: str, url: str, **kw: Any) -> Any:
        calls.append({"method": method, "url": url, **kw})
        body = {"type": "notifications_changed", "command_id": "notifications-change:p-1"}
        return 202, body, {"Location": "/commands/notifications-change:p-1?tenant_id=acme"}

    monkeypatch.setattr(admin_client, "request", request)
    argv = ["notifications", "acme", "--no-emails", "--events", "low_balance", "--no-webhook"]
    argv += ["--idempotency-key", "p-1", "--via-api", "http://w:6066", "--token", "t0k"]
    assert cli.main([*argv, "-o", "json"]) == 0
    [call] = calls
    assert (call["method"], call["url"]) == ("PATCH", "http://w:6066/tenants/acme/notifications")
    assert call["key"] == "p-1" and call["auth"] == {"Authorization": "Bearer t0k"}
    assert call["body"] == {"emails": [], "events": ["low_balance"], "webhook_url": None}
    assert sent.records == []  # not to Kafka
    printed = json.loads(capsys.readouterr().out)
    assert printed["command_id"] == "notifications-change:p-1"
    assert printed["idempotency_key"] == "p-1"


def test_notifications_says_what_it_published_and_the_key(
    sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["notifications", "acme", "--email", "ops@acme.io", "--no-webhook"]
    assert cli.main([*argv, "--idempotency-key", "n-2"]) == 0
    assert capsys.readouterr().out == (
        "notifications for acme: emails ops@acme.io; webhook removed: published to "
        "credits.commands as command notifications-change:n-2; a repeat with "
        "--idempotency-key n-2 is applied once\n"
    )
    assert cli.main(["notifications", "acme", "--no-emails", "-o", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    key = printed["idempotency_key"]
    assert printed["type"] == "notifications_changed"
    assert printed["command_id"] == f"notifications-change:{key}"


def test_set_with_a_target_recharges_up_to_it(sent: Sent) -> None:
    argv = ["auto-recharge", "set", "acme", "--amount", "25", "--trigger", "5", "--target", "60"]
    assert cli.main(argv) == 0
    [(_, value)] = sent.records
    command = decode_command(value)
    assert isinstance(command, AutoRechargeConfigured) and command.enabled
    assert command.mode == "to_target" and str(command.target_balance) == "60"


def test_account_prints_the_json_and_exit_codes_say_what_happened(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_account(monkeypatch, 200, {"tenant_id": "acme", "balance": "1.0000"})
    assert cli.main(["account", "acme", "--worker-url", "http://w:1"]) == 0
    assert json.loads(capsys.readouterr().out)["balance"] == "1.0000"
    fake_account(monkeypatch, 404, {"error": "not_found"})
    assert cli.main(["account", "acme"]) == common.EXIT_PROBLEM
    assert "no such tenant" in capsys.readouterr().err
    fake_account(monkeypatch, 503, {"detail": "being reassigned"})
    assert cli.main(["account", "acme"]) == common.EXIT_PROBLEM
    assert "retry" in capsys.readouterr().err


def test_account_with_no_worker_listening_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["account", "acme", "--worker-url", url]) == common.EXIT_PROBLEM
    assert f"no worker answers at {url}" in capsys.readouterr().err


def test_add_funds_with_kafka_unreachable_exits_1_saying_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", address)
    assert cli.main(["add-funds", "acme", "5"]) == common.EXIT_PROBLEM
    err = capsys.readouterr().err
    assert f"cannot use Kafka at {address}" in err and "refused" in err.lower()


def test_half_configured_sasl_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    assert cli.main(["add-funds", "acme", "5"]) == common.EXIT_USAGE
    assert "KAFKA_SASL_PASSWORD" in capsys.readouterr().err


def test_schemas_export_check_passes_on_the_checked_in_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["schemas", "export", "--check"]) == 0
    out = capsys.readouterr().out
    assert "JSON Schema files up to date" in out
    assert "openapi.json up to date" in out and "asyncapi.yaml up to date" in out


def test_schemas_export_check_fails_on_drift(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from schemas import export

    monkeypatch.setattr(export, "JSON_DIR", tmp_path)
    assert cli.main(["schemas", "export", "--check"]) == common.EXIT_PROBLEM


def test_simulate_takes_the_simulators_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from processor.dev import simulator

    seen: dict[str, Any] = {}

    class FakeSimulator:
        def __init__(self, config: Any) -> None:
            seen["config"] = config
            self.stats = type("Stats", (), {"summary": staticmethod(lambda: "done")})()

        async def run(self) -> None:
            seen["ran"] = True

    monkeypatch.setattr(simulator, "Simulator", FakeSimulator)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092")
    argv = ["simulate", "--tenants", "3", "--rate", "2.5", "--duration", "1"]
    assert cli.main(argv) == 0
    config = seen["config"]
    assert (config.tenants, config.rate_per_second, config.duration_seconds) == (3, 2.5, 1.0)
    assert config.bootstrap == "k1:9092" and seen["ran"]


def test_simulate_passes_the_sasl_options_to_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from processor.dev import simulator

    seen: dict[str, Any] = {}

    class FakeSimulator:
        def __init__(self, config: Any) -> None:
            seen["options"] = config.client_options
            self.stats = type("Stats", (), {"summary": staticmethod(lambda: "")})()

        async def run(self) -> None:
            pass

    monkeypatch.setattr(simulator, "Simulator", FakeSimulator)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "sim")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    assert cli.main(["simulate", "--duration", "1"]) == 0
    assert seen["options"]["sasl_mechanism"] == "PLAIN"
    assert seen["options"]["sasl_plain_password"] == "pw"


# Each command and the admin API endpoint whose command_id it shares for a key.
AS_THE_API = [
    pytest.param(["add-funds", "acme", "5"], "funds", id="add-funds"),
    pytest.param(
        ["auto-recharge", "set", "acme", "--amount", "25", "--trigger", "5"],
        "auto-recharge",
        id="set",
    ),
    # Explicit amounts publish auto_recharge_configured, as PUT does.
    pytest.param(
        ["auto-recharge", "disable", "acme", "--amount", "25", "--trigger", "5"],
        "auto-recharge",
        id="disable-with-amounts",
    ),
    pytest.param(["auto-recharge", "disable", "acme"], "auto-recharge-off", id="disable"),
    pytest.param(["limits", "acme", "--credit-limit", "20"], "limits", id="limits"),
    pytest.param(
        ["notifications", "acme", "--events", "low_balance"],
        "notifications-change",
        id="notifications",
    ),
]


@pytest.mark.parametrize("key", ["k-1", "k" * 125], ids=["short", "hashed-past-128"])
@pytest.mark.parametrize(("argv", "endpoint"), AS_THE_API)
def test_a_key_makes_the_command_id_the_admin_api_makes_at_its_endpoint(
    argv: list[str],
    endpoint: Endpoint,
    key: str,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_account(monkeypatch, 200, {"auto_recharge": {"enabled": True}})
    assert cli.main([*argv, "--idempotency-key", key]) == 0
    [(_, value)] = sent.records
    assert decode_command(value).command_id == command_id_for(endpoint, key)
    out = capsys.readouterr().out
    assert f"a repeat with --idempotency-key {key} is applied once" in out


def test_one_key_for_a_top_up_and_limits_makes_two_commands(sent: Sent) -> None:
    assert cli.main(["add-funds", "acme", "5", "--idempotency-key", "k-1"]) == 0
    assert cli.main(["limits", "acme", "--credit-limit", "20", "--idempotency-key", "k-1"]) == 0
    funds, limits = (decode_command(v).command_id for _, v in sent.records)
    assert (funds, limits) == ("k-1", "limits:k-1")


@pytest.mark.parametrize("prefix", ID_PREFIXES.values())
def test_a_top_up_key_with_another_endpoints_prefix_exits_2(
    prefix: str, sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["add-funds", "acme", "5", "--idempotency-key", f"{prefix}k-1"]
    assert cli.main(argv) == common.EXIT_USAGE
    assert f"--idempotency-key: must not start with {prefix!r}" in capsys.readouterr().err
    assert sent.records == []


def test_output_json_names_the_key_a_new_one_too(
    sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["limits", "acme", "--credit-limit", "20", "-o", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    key = printed["idempotency_key"]
    assert printed["command_id"] == f"limits:{key}" == decode_command(sent.records[0][1]).command_id


def test_a_failed_send_says_which_key_to_repeat_it_with(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def times_out(cfg: Any, tenant: str, value: bytes) -> None:
        raise admin_client.Failed(common.EXIT_PROBLEM, "no acknowledgement from Kafka")

    monkeypatch.setattr(admin_client, "send_command", times_out)
    argv = ["limits", "acme", "--credit-limit", "20", "--idempotency-key", "k-7"]
    assert cli.main(argv) == common.EXIT_PROBLEM
    err = capsys.readouterr().err
    assert "no acknowledgement from Kafka; repeat with --idempotency-key k-7" in err


def test_a_model_level_problem_reads_as_one_sentence(
    sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["auto-recharge", "set", "hooli", "--amount", "25", "--trigger", "50", "--target", "40"]
    assert cli.main(argv) == common.EXIT_USAGE
    # No location: the model's own rule, not a field's (was ": : target_balance ...").
    assert capsys.readouterr().err == (
        "meter auto-recharge set: target_balance must be above trigger_balance\n"
    )


# Every money argument, with a value that is no decimal number.
MONEY_ARGUMENTS = [
    pytest.param(["add-funds", "acme", "abc"], "AMOUNT", id="add-funds"),
    pytest.param(
        ["auto-recharge", "set", "acme", "--amount", "1e3", "--trigger", "5"],
        "--amount",
        id="amount",
    ),
    pytest.param(
        ["auto-recharge", "set", "acme", "--amount", "5", "--trigger", "five"],
        "--trigger",
        id="trigger",
    ),
    pytest.param(
        ["auto-recharge", "set", "acme", "--amount", "5", "--trigger", "1", "--target", "+9"],
        "--target",
        id="target",
    ),
    pytest.param(
        ["auto-recharge", "disable", "acme", "--amount", "5", "--trigger", " 1"],
        "--trigger",
        id="disable-trigger",
    ),
    pytest.param(["limits", "acme", "--credit-limit", "1,5"], "--credit-limit", id="credit-limit"),
    pytest.param(["limits", "acme", "--notify-below", "."], "--notify-below", id="notify-below"),
]


@pytest.mark.parametrize(("argv", "argument"), MONEY_ARGUMENTS)
def test_a_money_argument_that_is_no_number_is_said_the_clis_way(
    argv: list[str], argument: str, sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == common.EXIT_USAGE
    err = capsys.readouterr().err
    # The contract's wording ("a JSON string", "no '+'") means nothing on a command line.
    assert (
        f"argument {argument}: must be a decimal number such as 50.00 "
        "(at most 18 integer and 12 fraction digits)"
    ) in err
    assert "JSON" not in err
    assert sent.records == []


def test_a_top_up_in_another_currency_than_the_cards_exits_2(
    sent: Sent, capsys: pytest.CaptureFixture[str]
) -> None:
    # Straight to Kafka the processor would reject it later (currency_mismatch), as
    # --via-api refuses it at once.
    assert cli.main(["add-funds", "acme", "5", "--currency", "EUR"]) == common.EXIT_USAGE
    assert "--currency EUR: the rate card's currency is USD" in capsys.readouterr().err
    assert sent.records == []
    assert cli.main(["add-funds", "acme", "5", "--currency", "USD"]) == 0


def test_without_a_readable_card_the_given_currency_is_sent(
    sent: Sent, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("METER_RATE_CARD", str(tmp_path / "no-such-card.yaml"))
    assert cli.main(["add-funds", "acme", "5", "--currency", "EUR"]) == 0
    [(_, value)] = sent.records
    command = decode_command(value)
    assert isinstance(command, FundsAdded) and command.currency == "EUR"


# Where a read (account, command status) takes its bearer from: (its arguments, the
# environment, the token sent). Neither --token nor METER_API_TOKEN: the settings'
# other token, as `meter account` always sent (client_headers).
TOKEN_SOURCES = [
    pytest.param(["--token", "t0k"], {"METER_API_TOKEN": "env"}, "t0k", id="--token"),
    pytest.param([], {"METER_API_TOKEN": "env"}, "env", id="METER_API_TOKEN"),
    pytest.param([], {"METER_ADMIN_TOKEN": "static"}, "static", id="METER_ADMIN_TOKEN"),
]


def token_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Exactly these token variables set (none of the caller's own)."""
    for name in ("METER_API_TOKEN", "METER_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("argv", "env", "bearer"), TOKEN_SOURCES)
def test_account_sends_a_bearer_token_and_still_prints_json(
    argv: list[str],
    env: dict[str, str],
    bearer: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token_env(monkeypatch, env)
    sent: list[dict[str, str]] = []
    fake_account(monkeypatch, 200, {"tenant_id": "acme", "balance": "1.0000"}, sent)
    assert cli.main(["account", "acme", *argv]) == 0
    assert sent == [{"Authorization": f"Bearer {bearer}"}]
    assert json.loads(capsys.readouterr().out)["balance"] == "1.0000"


def test_account_refused_for_want_of_a_token_says_how_to_pass_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_env(monkeypatch, {})
    auths: list[dict[str, str]] = []
    fake_account(monkeypatch, 401, {"detail": "missing bearer token"}, auths)
    assert cli.main(["account", "acme"]) == common.EXIT_PROBLEM
    assert auths == [{}]  # no token anywhere: none sent
    err = capsys.readouterr().err
    assert "missing bearer token (HTTP 401); pass a token with --token or METER_API_TOKEN" in err


def logs_and_reports(args: argparse.Namespace) -> int:
    """A command as `meter reconcile` is: aiokafka logs at INFO, then the report."""
    logging.getLogger("aiokafka.consumer").info("Updating subscribed topics")
    print("report")
    return 0


@pytest.mark.parametrize(
    ("command", "name", "logged"),
    [
        # A report: a library's INFO lines would be mixed into it.
        (["reconcile"], "cmd_reconcile", False),
        (["replay-rejected", "--dry-run"], "cmd_replay_rejected", False),
        # The live view: the demo's own simulator joining its group is not news there.
        (["demo"], "cmd_demo", False),
        # A service: its log is its output.
        (["worker"], "cmd_worker", True),
    ],
)
def test_library_info_logs_only_where_the_log_is_the_output(
    command: list[str],
    name: str,
    logged: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As in a fresh process: the root logger unconfigured (pytest has its handlers on
    # it, which would make `meter`'s logging set-up a no-op); both restored after.
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.WARNING)
    monkeypatch.setattr(cli, name, logs_and_reports)
    assert cli.main(command) == 0
    out, err = capsys.readouterr()
    assert out == "report\n"
    assert ("INFO aiokafka.consumer Updating subscribed topics" in err) is logged


@pytest.mark.parametrize(("argv", "endpoint"), AS_THE_API)
@pytest.mark.parametrize(("user", "actor"), [("alice", "cli:alice"), ("jos\u00e9", "cli")])
def test_a_command_sent_straight_to_kafka_names_its_actor(
    argv: list[str],
    endpoint: Endpoint,
    user: str,
    actor: str,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As the admin API names its caller (the token's sub), so the ledger entry says who.
    # A user name the contract's printable ASCII cannot hold: the CLI, unnamed.
    monkeypatch.setenv("LOGNAME", user)
    fake_account(monkeypatch, 200, {"auto_recharge": {"enabled": True}})
    assert cli.main(argv) == 0
    [(_, value)] = sent.records
    assert decode_command(value).actor == actor
