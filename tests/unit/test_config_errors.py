"""A setting the environment gets wrong: one sentence and exit 2, never a traceback.

Run as an operator runs them: `meter ...` subprocesses with one bad variable each.
Every command reads its settings before touching Kafka, so no broker is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from processor.config.settings import Settings, settings_problems

METER = str(Path(sys.executable).with_name("meter"))


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("METER_", "KAFKA_"))}
    environ.update(env)
    return subprocess.run(
        [METER, *argv], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("argv", "variable", "value", "allowed"),
    [
        (["worker"], "METER_LOG_FORMAT", "xml", ["'text'", "'json'"]),
        (["worker"], "METER_EVENT_LOOP", "trio", ["'uvloop'", "'asyncio'"]),
        (["worker"], "METER_STANDBY_REPLICAS", "-1", ["at least 0"]),
        (["worker"], "METER_LOG_LEVEL", "verbose", ["'debug'", "'info'", "'critical'"]),
        (["worker"], "METER_WEB_PORT", "70000", ["at most 65535"]),
        (["reconcile"], "METER_PARTITIONS", "many", ["a whole number"]),
        (["replay-rejected", "--dry-run"], "METER_DEDUPE_DAYS", "0", ["greater than 0"]),
        (["add-funds", "acme", "5"], "KAFKA_SECURITY_PROTOCOL", "TLS", ["'SSL'", "'SASL_SSL'"]),
        (["account", "acme"], "METER_WEB_PORT", "-1", ["at least 0"]),
        (["notifier"], "METER_CONSOLE_URL", "credits.example.com", ["an http(s):// URL"]),
    ],
)
def test_a_bad_setting_names_variable_value_and_what_is_allowed(
    argv: list[str], variable: str, value: str, allowed: list[str]
) -> None:
    result = run(argv, **{variable: value})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if variable in line]
    assert line.startswith(f"meter {argv[0]}: configuration: ")
    assert f"{variable}={value!r}" in line
    for word in allowed:
        assert word in line, line


def test_every_bad_setting_is_reported_at_once() -> None:
    result = run(["worker"], METER_LOG_FORMAT="xml", METER_PARTITIONS="0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "METER_LOG_FORMAT" in result.stderr and "METER_PARTITIONS" in result.stderr


def test_the_log_level_is_read_in_any_case() -> None:
    settings = Settings(_env_file=None, METER_LOG_LEVEL="WARNING")
    assert settings.log_level == "warning"


def problems(**env: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **env)
    return settings_problems(caught.value)


def test_a_secret_is_never_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    # No secret setting can fail today (any text is a token); the rule holds anyway.
    assert problems(METER_LOG_FORMAT="xml") == [
        "METER_LOG_FORMAT='xml' is not allowed: it must be 'text' or 'json'"
    ]
    monkeypatch.setattr("processor.config.settings._SECRETS", frozenset({"METER_LOG_FORMAT"}))
    [problem] = problems(METER_LOG_FORMAT="s3cret")
    assert "s3cret" not in problem and "(hidden)" in problem
