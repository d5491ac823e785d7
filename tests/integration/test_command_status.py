"""PATCH/DELETE auto-recharge and the command status resource on the real broker.

A `meter worker` (admin API on) and a `meter ledger-sink` (SQLite) run as
subprocesses; every admin request's 202 `Location` is followed on the worker, which
forwards it to the sink, until the command's outcome shows. The store's command
tests (tests/unit/test_command_status.py) run here again against PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import METER, Client, Deployment, Worker, eventually, running
from tests.integration.test_ledger_sink import Sink
from tests.support.postgres import LocalPostgres

# The store's command tests, collected here again: `db_url` below is PostgreSQL.
from tests.unit.test_command_status import (  # noqa: F401
    http,
    test_a_replayed_result_changes_nothing_but_applied_replaces_rejected,
    test_http_command_status,
    test_pending_then_the_outcome_in_any_order,
)
from tests.unit.test_sink_store import store  # noqa: F401  # the fixture the tests below use

TOKEN = "it-admin-token"


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    server = LocalPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def db_url(postgres: LocalPostgres) -> str:
    return postgres.create_database()


@pytest.fixture
async def stack(kafka: Any, tmp_path: Path) -> AsyncIterator[tuple[Worker, Sink]]:
    d = Deployment(kafka.bootstrap, tmp_path, partitions=2)
    sink = Sink(kafka.bootstrap, d.app_id, tmp_path, None).start()
    d.env_extra.update(METER_ADMIN_TOKEN=TOKEN, METER_SINK_URL=f"http://127.0.0.1:{sink.port}")
    try:
        async with running(d) as w:
            yield w, sink
    finally:
        code = sink.stop()
        print(f"--- sink log (exit {code}) ---\n{sink.log_tail()}")


async def call(
    w: Worker, method: str, path: str, payload: Any = None, key: str | None = None
) -> tuple[int, dict[str, Any], str | None]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = None if payload is None else json.dumps(payload)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, w.url + path, data=data, headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.read()), resp.headers.get("Location")


async def outcome(w: Worker, location: str, want: str = "applied") -> dict[str, Any]:
    """The command's status once it is no longer pending (and names its entry)."""

    async def settled() -> dict[str, Any] | str:
        status, body = await w.get(location)
        if status != 200 or body["status"] == "pending":
            return f"not yet: {status} {body}"
        if body["status"] == "applied" and body["entry_id"] and body["entry"] is None:
            return "not yet: the entry is still on its way to the sink"
        return dict(body)

    got: dict[str, Any] = await eventually(settled, timeout=60, what=f"the outcome of {location}")
    assert got["status"] == want, got
    return got


async def test_each_admin_command_reports_its_outcome(stack: tuple[Worker, Sink]) -> None:
    w, sink = stack
    path = "/tenants/acme/auto-recharge"
    # Not yet seen anywhere: 404 from the sink, through the worker.
    status, body = await w.get("/commands/never-sent?tenant_id=acme")
    assert status == 404 and body["error"] == "unknown_command", body

    status, body, location = await call(
        w, "POST", "/tenants/acme/funds", {"amount": "100.00", "currency": "USD"}, "f-1"
    )
    assert status == 202 and location == "/commands/f-1?tenant_id=acme"
    funded = await outcome(w, location)
    assert funded["command_type"] == "funds_added" and funded["tenant_id"] == "acme"
    assert funded["entry"]["cause_id"] == "f-1" and funded["entry"]["amount"] == "100.0000"

    settings = {
        "enabled": True,
        "recharge_amount": "25.00",
        "trigger_balance": "5.00",
        "mode": "to_target",
        "target_balance": "30.00",
    }
    status, _, location = await call(w, "PUT", path, settings, "s-1")
    assert status == 202 and location is not None
    put = await outcome(w, location)
    assert (put["entry_id"], put["entry"]) == (None, None)

    # A partial change: valid alone, invalid against the tenant's target at the owner.
    status, body, location = await call(w, "PATCH", path, {"trigger_balance": "40.00"}, "p-1")
    assert status == 202 and body["command_id"] == "auto-recharge-change:p-1"
    assert location == "/commands/auto-recharge-change%3Ap-1?tenant_id=acme"
    rejected = await outcome(w, location, "rejected")
    assert rejected["reason"] == "invalid_settings"
    assert "target_balance must be above trigger_balance" in rejected["detail"]
    # A valid one is applied, and keeps what it did not name.
    status, _, location = await call(w, "PATCH", path, {"trigger_balance": "10.00"}, "p-2")
    assert status == 202 and location is not None
    await outcome(w, location)
    status, account = await w.get("/tenants/acme/account")
    assert status == 200
    ar = account["auto_recharge"]
    assert (ar["enabled"], ar["trigger_balance"], ar["target_balance"]) == (
        True,
        "10.0000",
        "30.0000",
    ), ar

    # 422 before anything is published, as for PUT.
    status, body, _ = await call(w, "PATCH", path, {"trigger_balance": "-1"})
    assert status == 422 and body["errors"][0]["loc"] == ["body", "trigger_balance"]

    status, body, location = await call(w, "DELETE", path, None, "off-1")
    assert status == 202 and body["type"] == "auto_recharge_changed"
    assert location is not None
    await outcome(w, location)
    status, account = await w.get("/tenants/acme/account")
    assert account["auto_recharge"]["enabled"] is False
    assert account["auto_recharge"]["recharge_amount"] == "25.0000"

    # Every result is on credits.command-results, once per command.
    async with Client(w.deployment) as c:
        results = await c.read_all("credits.command-results")
    assert sorted((r["command_id"], r["outcome"]) for r in results) == [
        ("auto-recharge-change:p-1", "rejected"),
        ("auto-recharge-change:p-2", "applied"),
        ("auto-recharge-off:off-1", "applied"),
        ("auto-recharge:s-1", "applied"),
        ("f-1", "applied"),
    ]
    sink.alive()


def meter(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METER, *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_cli_goes_through_the_admin_api_and_follows_the_status(
    stack: tuple[Worker, Sink],
) -> None:
    w, _ = stack
    sent = await asyncio.to_thread(
        meter,
        "add-funds",
        "globex",
        "7.50",
        "--via-api",
        w.url,
        "--idempotency-key",
        "cli-1",
        "--output",
        "json",
        env={"METER_API_TOKEN": TOKEN},
    )
    assert sent.returncode == 0, sent.stderr
    accepted = json.loads(sent.stdout)
    assert accepted["command_id"] == "cli-1"
    assert accepted["location"] == f"{w.url}/commands/cli-1?tenant_id=globex"
    argv = ["command", "status", "cli-1", "--tenant", "globex", "--worker-url", w.url]
    shown = await asyncio.to_thread(meter, *argv, "--wait", "60", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["status"] == "applied" and status["entry_id"] is not None
    # Off through the API (DELETE), then its status as a table.
    off = await asyncio.to_thread(
        meter,
        "auto-recharge",
        "disable",
        "globex",
        "--via-api",
        w.url,
        "--token",
        TOKEN,
        "--idempotency-key",
        "cli-off",
    )
    assert off.returncode == 0, off.stderr
    argv = ["command", "status", "auto-recharge-off:cli-off", "--worker-url", w.url]
    shown = await asyncio.to_thread(meter, *argv, "--wait", "60")
    assert shown.returncode == 0, shown.stderr
    assert "(auto_recharge_changed, tenant globex): applied" in shown.stdout
