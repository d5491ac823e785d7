"""The admin HTTP API on a real `meter worker`: auth, validation, one top-up per key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processor.dev.kafka_local import free_port
from processor.http import openapi
from tests.integration.harness import (
    METER,
    Client,
    Deployment,
    Worker,
    eventually,
    running,
    signed_sum,
)
from tests.support.tokens import TestKeys

pytestmark = pytest.mark.integration

TOKEN = "it-admin-token"


@pytest.fixture
async def worker(kafka: Any, tmp_path: Path) -> AsyncIterator[Worker]:
    d = Deployment(kafka.bootstrap, tmp_path, partitions=2, env_extra={"METER_ADMIN_TOKEN": TOKEN})
    async with running(d) as w:
        yield w


async def call(
    w: Worker,
    method: str,
    path: str,
    payload: Any,
    token: str | None = TOKEN,
    key: str | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, w.url + path, data=json.dumps(payload), headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.read())


async def balance(w: Worker, tenant: str) -> str | None:
    status, body = await w.get(f"/tenants/{tenant}/account")
    return body["balance"] if status == 200 else None


async def test_a_top_up_posted_twice_with_one_key_is_applied_once(worker: Worker) -> None:
    top_up = {"amount": "50.00", "currency": "USD"}
    first = await call(worker, "POST", "/tenants/acme/funds", top_up, key="top-up-1")
    retry = await call(worker, "POST", "/tenants/acme/funds", top_up, key="top-up-1")
    assert (
        first
        == retry
        == (
            202,
            {
                "status": "accepted",
                "type": "funds_added",
                "command_id": "top-up-1",
                "tenant_id": "acme",
            },
        )
    )
    # A later, distinct top-up on the same partition: once it shows, everything sent
    # before it has been processed, so 51 (not 101) proves the retry was dropped.
    status, _ = await call(
        worker, "POST", "/tenants/acme/funds", {"amount": "1.00", "currency": "USD"}
    )
    assert status == 202

    async def settled() -> str | None:
        got = await balance(worker, "acme")
        return got if got in ("51.0000", "101.0000") else None

    assert await eventually(settled, timeout=30, what="both top-ups applied") == "51.0000"
    async with Client(worker.deployment) as c:
        ledger = await c.read_all("credits.ledger")
    causes = [e["cause_id"] for e in ledger]
    assert len(causes) == 2 and causes.count("top-up-1") == 1, causes
    assert str(signed_sum(ledger, "acme")) == "51.0000"


async def test_auth_validation_and_settings_on_a_real_worker(worker: Worker) -> None:
    settings = {"enabled": True, "recharge_amount": "25.00", "trigger_balance": "5.00"}
    path = "/tenants/globex/auto-recharge"
    status, body = await call(worker, "PUT", path, settings, token=None)
    assert status == 401 and body["error"] == "unauthorized"
    status, body = await call(worker, "PUT", path, settings, token="not-it")
    assert status == 403 and body["error"] == "forbidden"
    status, body = await call(
        worker, "PUT", path, {**settings, "recharge_amount": "-1"}, key="x" * 200
    )
    assert status == 422
    assert {tuple(e["loc"]) for e in body["errors"]} == {
        ("body", "recharge_amount"),
        ("header", "Idempotency-Key"),
    }
    status, body = await call(
        worker, "POST", "/tenants/globex/funds", {"amount": "5", "currency": "EUR"}
    )
    assert status == 422 and "must be USD" in body["detail"]
    # Nothing refused reached the processor: the tenant is still unknown.
    assert (await worker.get("/tenants/globex/account"))[0] == 404

    status, _ = await call(worker, "PUT", path, settings, key="ar-1")
    assert status == 202

    async def configured() -> dict[str, Any] | None:
        status, body = await worker.get("/tenants/globex/account")
        return body["auto_recharge"] if status == 200 else None

    assert await eventually(configured, timeout=30, what="settings applied") == {
        "enabled": True,
        "recharge_amount": "25.0000",
        "trigger_balance": "5.0000",
        "suspended": False,
        # Added with recharge-to-target (docs/contract.md): the default mode.
        "mode": "fixed",
        "target_balance": None,
    }


async def test_the_worker_serves_the_checked_in_openapi_document(worker: Worker) -> None:
    status, served = await worker.get("/openapi.json")
    assert status == 200
    assert served == json.loads(openapi.DOC_PATH.read_text())


async def meter(w: Worker, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the `meter` command as an operator would, configured like the worker (and
    `env`)."""
    proc = await asyncio.create_subprocess_exec(
        METER,
        *argv,
        env={**w.deployment.env(99, w.port), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_meter_add_funds_reaches_the_worker_and_meter_account_reads_it(
    worker: Worker,
) -> None:
    code, out, err = await meter(
        worker, "add-funds", "initech", "12.50", "--idempotency-key", "cli-1",
        env={"LOGNAME": "ops-anna"},
    )  # fmt: skip
    assert code == 0, err
    assert "cli-1" in out
    # The same key again: published again, applied once.
    assert (await meter(worker, "add-funds", "initech", "12.50", "--idempotency-key", "cli-1"))[
        0
    ] == 0
    code, out, err = await meter(
        worker, "auto-recharge", "set", "initech", "--amount", "10", "--trigger", "1",
        "--target", "30",
    )  # fmt: skip
    assert code == 0, err

    async def configured() -> bool:
        status, body = await worker.get("/tenants/initech/account")
        return status == 200 and body["auto_recharge"] is not None

    await eventually(configured, timeout=30, what="the CLI's commands applied")
    code, out, err = await meter(worker, "account", "initech")  # default URL: METER_WEB_PORT
    assert code == 0, err
    account = json.loads(out)
    assert account["balance"] == "12.5000" and account["auto_recharge"]["enabled"] is True
    async with Client(worker.deployment) as c:
        ledger = await c.read_all("credits.ledger")
    # Who sent it, as the admin API names its caller: the CLI and the OS user.
    assert [e.get("actor") for e in ledger if e["cause_id"] == "cli-1"] == ["cli:ops-anna"]
    assert account["auto_recharge"]["mode"] == "to_target"
    code, _, err = await meter(worker, "account", "never-seen")
    assert code == 1 and "no such tenant" in err
    # Off, straight to Kafka: the owner keeps the amounts, the mode and the target.
    code, out, err = await meter(worker, "auto-recharge", "disable", "initech")
    assert code == 0, err

    async def disabled() -> dict[str, Any] | str:
        _, body = await worker.get("/tenants/initech/account")
        settings = body.get("auto_recharge") or {}
        return dict(settings) if settings.get("enabled") is False else f"not yet: {body}"

    off = await eventually(disabled, timeout=30, what="auto-recharge disabled")
    assert (off["mode"], off["target_balance"], off["recharge_amount"]) == (
        "to_target",
        "30.0000",
        "10.0000",
    ), off
    # Limits: what is named changes, the rest is kept; --no-notify-below clears the level.
    # The top-up's key again: keys are per kind of command, so this one is applied too.
    code, out, err = await meter(
        worker, "limits", "initech", "--credit-limit", "5", "--notify-below", "2",
        "--idempotency-key", "cli-1",
    )  # fmt: skip
    assert code == 0, err
    assert "as command limits:cli-1" in out
    code, _, err = await meter(worker, "limits", "initech", "--no-notify-below")
    assert code == 0, err

    async def limited() -> dict[str, Any] | str:
        _, body = await worker.get("/tenants/initech/account")
        done = body.get("credit_limit") == "5.0000" and body.get("notify_below") is None
        return dict(body) if done else f"not yet: {body}"

    await eventually(limited, timeout=30, what="the limits applied")


async def test_refused_at_the_api_what_the_processor_would_reject_and_keys_per_endpoint(
    worker: Worker,
) -> None:
    funds = "/tenants/hooli/funds"
    # The card keeps 4 decimal places: the processor would reject this after a 202.
    status, body = await call(worker, "POST", funds, {"amount": "1.00001", "currency": "USD"})
    assert status == 422 and [e["type"] for e in body["errors"]] == ["too_many_decimals"]
    assert "more than 4 decimal places" in body["detail"]
    # A path that is no tenant id: 400 before anything else.
    status, body = await call(worker, "POST", "/tenants/bad!id/funds", {"amount": "1"})
    assert status == 400 and body["error"] == "invalid_tenant_id"

    first = await call(worker, "POST", funds, {"amount": "2.00", "currency": "USD"}, key="k-1")
    assert first[0] == 202
    assert await call(worker, "POST", funds, {"amount": "2.0", "currency": "USD"}, key="k-1") == (
        first
    )
    status, body = await call(
        worker, "POST", funds, {"amount": "900.00", "currency": "USD"}, key="k-1"
    )
    assert status == 422 and body["error"] == "idempotency_key_reused"
    # The same key on the other endpoint is another request, applied too.
    settings = {"enabled": True, "recharge_amount": "25.00", "trigger_balance": "1.00"}
    status, body = await call(worker, "PUT", "/tenants/hooli/auto-recharge", settings, key="k-1")
    assert status == 202 and body["command_id"] == "auto-recharge:k-1"

    async def applied() -> dict[str, Any] | None:
        status, body = await worker.get("/tenants/hooli/account")
        ok = status == 200 and body["auto_recharge"] is not None
        return body if ok else None

    account = await eventually(applied, timeout=30, what="top-up and settings applied")
    assert account["balance"] == "2.0000"
    assert account["auto_recharge"]["recharge_amount"] == "25.0000"
    async with Client(worker.deployment) as c:
        ledger = await c.read_all("credits.ledger")
        rejected = await c.read_all("credits.rejected")
    assert [e["cause_id"] for e in ledger if e["tenant_id"] == "hooli"] == ["k-1"]
    assert rejected == []  # nothing the API accepted was rejected later


async def test_meter_reads_take_a_token_from_a_jwt_worker(kafka: Any, tmp_path: Path) -> None:
    """`meter command status` and `meter account` on a worker with METER_AUTH=jwt (as
    `make run` runs it): a token from --token or METER_API_TOKEN gets past the check."""
    keys = TestKeys.make(tmp_path / "keys")
    # No ledger sink at this address: a status read past the token check is a 503.
    env = {**keys.env(), "METER_SINK_URL": f"http://127.0.0.1:{free_port()}"}
    operator = keys.token(role="operator")
    status = ("command", "status", "k-1", "--tenant", "acme")
    async with running(Deployment(kafka.bootstrap, tmp_path, env_extra=env)) as w:
        code, _, err = await meter(w, *status)
        assert code == 1 and "(HTTP 401); pass a token with --token or METER_API_TOKEN" in err
        code, _, err = await meter(w, *status, env={"METER_API_TOKEN": operator})
        assert code == 1 and "(HTTP 503)" in err, err
        code, _, err = await meter(w, *status, "--token", operator)
        assert code == 1 and "(HTTP 503)" in err, err
        code, _, err = await meter(w, "account", "acme")
        assert code == 1 and "(HTTP 401); pass a token with --token" in err, err
        code, _, err = await meter(w, "account", "acme", "--token", operator)
        assert code == 1 and "no such tenant" in err, err
