"""`meter`'s conventions: --version, --output json|table, `command status`, and
top-ups and settings sent through the admin API (--via-api). No broker, no worker:
the HTTP exchange is faked at `admin_client.request`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from processor.config.version import package_version
from processor.ops import admin_client, cli, common
from processor.ops.output import table
from tests.unit.test_cli import ALL, TOKEN_SOURCES, Sent, sent, token_env  # noqa: F401


class FakeHTTP:
    """Answers `admin_client.request` calls from a list, and keeps what was asked."""

    def __init__(self, *answers: tuple[int, dict[str, Any], dict[str, str]]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, method: str, url: str, **kw: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kw})
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> FakeHTTP:
    fake = FakeHTTP((500, {"detail": "not set up"}, {}))
    monkeypatch.setattr(admin_client, "request", fake)
    return fake


def accepted(
    command_id: str, kind: str, location: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"status": "accepted", "type": kind, "command_id": command_id, "tenant_id": "acme"}
    return 202, body, {"Location": location}


def test_version_names_ours_and_what_it_runs_on(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"meter (credits-meter) {package_version()} (faust ")
    assert "aiokafka 0.14" in out and "python 3." in out


# Every command that prints a result (the long-running ones and the generators,
# which print progress, are not in it).
PRINTING = [
    ("account",),
    ("add-funds",),
    ("auto-recharge", "set"),
    ("auto-recharge", "disable"),
    ("command", "status"),
    ("kafka",),
    ("limits",),
    ("notifications",),
    ("reconcile",),
    ("replay-rejected",),
]


@pytest.mark.parametrize("path", PRINTING, ids=" ".join)
def test_every_printing_command_takes_output_json_or_table(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert path in ALL
    with pytest.raises(SystemExit):
        cli.main([*path, "--help"])
    assert "--output {json,table}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main([*path, "--output", "yaml"])
    assert exit_.value.code == common.EXIT_USAGE


def test_add_funds_output_json_is_one_document(
    sent: Sent,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["add-funds", "acme", "5", "--idempotency-key", "k-9", "-o", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "status": "published",
        "type": "funds_added",
        "command_id": "k-9",
        "tenant_id": "acme",
        "idempotency_key": "k-9",
        "topic": "credits.commands",
    }


def test_table_rows_and_columns() -> None:
    assert (
        table({"a": 1, "nested": {"b": None, "c": True}})
        == "a         1\nnested.b  -\nnested.c  true"
    )
    assert table([{"id": "x", "n": 10}, {"id": "yy"}]) == "ID  N\nx   10\nyy  -"
    assert table([]) == "(none)"


def test_add_funds_via_the_admin_api(
    http: FakeHTTP,
    sent: Sent,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    http.answers = [accepted("k-1", "funds_added", "/commands/k-1?tenant_id=acme")]
    argv = ["add-funds", "acme", "50.00", "--idempotency-key", "k-1"]
    assert cli.main([*argv, "--via-api", "http://w:6066/", "--token", "t0k", "-o", "json"]) == 0
    [call] = http.calls
    assert (call["method"], call["url"]) == ("POST", "http://w:6066/tenants/acme/funds")
    assert call["auth"] == {"Authorization": "Bearer t0k"} and call["key"] == "k-1"
    assert call["body"] == {"amount": "50.00", "currency": "USD"}
    assert sent.records == []  # not to Kafka
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "accepted" and printed["command_id"] == "k-1"
    assert printed["location"] == "http://w:6066/commands/k-1?tenant_id=acme"


def test_auto_recharge_via_the_api_uses_put_and_delete(
    http: FakeHTTP, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METER_API_TOKEN", "from-env")
    http.answers = [accepted("auto-recharge:s", "auto_recharge_configured", "/commands/x")]
    argv = ["auto-recharge", "set", "acme", "--amount", "25", "--trigger", "5"]
    assert cli.main([*argv, "--via-api", "http://w", "--idempotency-key", "s"]) == 0
    http.answers = [accepted("auto-recharge-off:o", "auto_recharge_changed", "/commands/y")]
    argv = ["auto-recharge", "disable", "acme", "--via-api", "http://w", "--idempotency-key", "o"]
    assert cli.main(argv) == 0
    put, delete = http.calls
    assert (put["method"], put["url"], put["auth"]) == (
        "PUT",
        "http://w/tenants/acme/auto-recharge",
        {"Authorization": "Bearer from-env"},
    )
    assert put["body"] == {"enabled": True, "recharge_amount": "25", "trigger_balance": "5"}
    assert (delete["method"], delete["body"], delete["key"]) == ("DELETE", None, "o")
    out = capsys.readouterr().out
    assert "meter command status auto-recharge-off:o --tenant acme" in out
    assert "a repeat with --idempotency-key o is applied once" in out


@pytest.mark.parametrize(("argv", "env", "bearer"), TOKEN_SOURCES)
def test_via_api_takes_its_token_as_the_contract_says(
    argv: list[str], env: dict[str, str], bearer: str, http: FakeHTTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """--token, else METER_API_TOKEN, else METER_ADMIN_TOKEN (docs/contract.md)."""
    token_env(monkeypatch, env)
    http.answers = [accepted("k-1", "funds_added", "/commands/k-1")]
    assert cli.main(["add-funds", "acme", "5", "--via-api", "http://w", *argv]) == 0
    [call] = http.calls
    assert call["auth"] == {"Authorization": f"Bearer {bearer}"}


def test_via_api_without_a_token_or_refused(
    http: FakeHTTP, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_env(monkeypatch, {})
    assert cli.main(["add-funds", "acme", "5", "--via-api", "http://w"]) == common.EXIT_USAGE
    assert "METER_API_TOKEN" in capsys.readouterr().err and http.calls == []
    http.answers = [(422, {"detail": "body.currency: must be USD"}, {})]
    argv = ["add-funds", "acme", "5", "--via-api", "http://w", "--token", "t"]
    assert cli.main(argv) == common.EXIT_USAGE
    assert "must be USD" in capsys.readouterr().err
    http.answers = [(503, {"detail": "could not publish"}, {})]
    assert cli.main([*argv, "--idempotency-key", "again"]) == common.EXIT_PROBLEM
    assert "repeat with --idempotency-key again" in capsys.readouterr().err


def status_body(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "command_id": "k-1",
        "tenant_id": "acme",
        "command_type": "funds_added",
        "status": status,
        "entry_id": None,
        "entry": None,
        "reason": None,
        "detail": None,
        "occurred_at": "2026-12-03T10:00:00Z",
        "recorded_at": None,
        **extra,
    }


def test_command_status_waits_for_the_outcome(
    http: FakeHTTP, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = {
        "entry_id": "e-1",
        "kind": "credit",
        "amount": "5.0000",
        "currency": "USD",
        "balance_after": "5.0000",
    }
    http.answers = [
        (404, {"detail": "unknown"}, {}),
        (200, status_body("pending"), {}),
        (200, status_body("applied", entry_id="e-1", entry=entry), {}),
    ]
    argv = ["command", "status", "k/1", "--tenant", "acme", "--worker-url", "http://w"]
    assert cli.main([*argv, "--wait", "10"]) == 0
    assert http.calls[0]["url"] == "http://w/commands/k%2F1?tenant_id=acme"
    assert len(http.calls) == 3
    out = capsys.readouterr().out
    assert "k-1 (funds_added, tenant acme): applied" in out
    assert "ledger entry e-1: credit 5.0000 USD" in out


def test_command_status_exit_codes_and_json(
    http: FakeHTTP, capsys: pytest.CaptureFixture[str]
) -> None:
    rejected = status_body("rejected", reason="invalid_settings", detail="target too low")
    http.answers = [(200, rejected, {})]
    assert cli.main(["command", "status", "k-1", "-o", "json"]) == common.EXIT_PROBLEM
    assert json.loads(capsys.readouterr().out) == rejected
    http.answers = [(404, {"detail": "no command with this id"}, {})]
    assert cli.main(["command", "status", "nope"]) == common.EXIT_PROBLEM
    assert "no command with this id (HTTP 404)" in capsys.readouterr().err
    http.answers = [(200, status_body("pending"), {})]
    assert cli.main(["command", "status", "k-1"]) == 0
    assert cli.main(["command", "status", "k-1", "--wait", "0.6"]) == common.EXIT_PROBLEM
    assert "still pending" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "env", "bearer"), TOKEN_SOURCES)
def test_command_status_sends_a_bearer_token(
    argv: list[str],
    env: dict[str, str],
    bearer: str,
    http: FakeHTTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # METER_AUTH=jwt (as `make run` runs): GET /commands/{id} needs a token.
    token_env(monkeypatch, env)
    http.answers = [(200, status_body("applied"), {})]
    assert cli.main(["command", "status", "k-1", "--tenant", "acme", *argv]) == 0
    [call] = http.calls
    assert call["auth"]["Authorization"] == f"Bearer {bearer}"


def test_command_status_refused_for_want_of_a_token_says_how_to_pass_one(
    http: FakeHTTP, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_env(monkeypatch, {})
    http.answers = [(401, {"detail": "missing bearer token"}, {})]
    assert cli.main(["command", "status", "k-1", "--tenant", "acme"]) == common.EXIT_PROBLEM
    [call] = http.calls
    assert not call["auth"]  # no token anywhere: none sent
    err = capsys.readouterr().err
    assert "missing bearer token (HTTP 401); pass a token with --token or METER_API_TOKEN" in err
