"""Issue 20 on a real worker and broker: call authorization (GET /tenants/{id}/authorize)
and the per-tenant limits it pays from (PUT /tenants/{id}/limits)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import Client, Deployment, Worker, eventually, now_rfc3339, running
from tests.support import events

funds = events.funds  # stamped now

pytestmark = pytest.mark.integration

TOKEN = "it-admin-token"
US = "%2B14155550100"  # +1: 0.0200/min in 60 s increments (the example card)
UK_MOBILE = "%2B447700900123"  # +447: 0.0100 connect fee + 0.1200/min per second


@pytest.fixture
async def worker(kafka: Any, tmp_path: Path) -> AsyncIterator[Worker]:
    d = Deployment(kafka.bootstrap, tmp_path, partitions=2, env_extra={"METER_ADMIN_TOKEN": TOKEN})
    async with running(d) as w:
        yield w


async def authorize(w: Worker, tenant: str, service: str, number: str) -> tuple[int, Any]:
    return await w.get(f"/tenants/{tenant}/authorize?service={service}&number={number}")


async def test_authorize_answers_from_the_balance_and_the_credit_limit(worker: Worker) -> None:
    async with Client(worker.deployment) as client:
        await client.send("credits.commands", funds("f-1", tenant="funded", amount="0.1000"))
        await client.send("credits.commands", funds("f-2", tenant="dry", amount="0.0100"))

        async def funded() -> bool:
            status, body = await worker.get("/tenants/dry/account")
            return status == 200 and body["balance"] == "0.0100"

        # The call comes after the funds (two topics: no order between them otherwise).
        await eventually(funded, what="dry's funds applied")
        await client.send(
            "usage.calls",
            {
                "event_id": "drain-1",
                "tenant_id": "dry",
                "occurred_at": now_rfc3339(),
                "call_id": "c-1",
                "call_type": "outbound",
                "source_number": "+14155550199",
                "destination_number": "+14155550100",
                "duration_seconds": 60,
            },
        )

    async def applied() -> bool:
        funded, dry = (
            await worker.get("/tenants/funded/account"),
            await worker.get("/tenants/dry/account"),
        )
        return funded[0] == 200 and dry[0] == 200 and dry[1]["balance"] == "-0.0100"

    await eventually(applied, what="funds and the draining call applied")

    # Funded: 0.1000 pays 5 minutes of +1 at 0.0200/min.
    status, body = await authorize(worker, "funded", "outbound", US)
    assert status == 200
    assert body == {
        "tenant_id": "funded",
        "allowed": True,
        "max_seconds": 300,
        "reason": None,
        "rate_prefix": "+1",
        "per_minute": "0.0200",
        "balance": "0.1000",
        "currency": "USD",
    }
    # Per second with a connect fee: (0.1000 - 0.0100) / 0.002 = 45 s.
    status, body = await authorize(worker, "funded", "outbound", UK_MOBILE)
    assert (status, body["allowed"], body["max_seconds"]) == (200, True, 45)

    # Exhausted: -0.0100.
    status, body = await authorize(worker, "dry", "outbound", US)
    assert (status, body["allowed"], body["reason"], body["max_seconds"]) == (
        200,
        False,
        "exhausted",
        0,
    )
    assert body["balance"] == "-0.0100"

    # A credit limit through the admin API: the dry tenant may now go 0.0500 below zero,
    # so 0.0400 of budget is 2 minutes; and it is restored.
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            worker.url + "/tenants/dry/limits",
            data=json.dumps({"credit_limit": "0.05", "notify_below": "1.00"}),
            headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "limits-1"},
        ) as resp,
    ):
        assert resp.status == 202, await resp.read()

    async def limited() -> Any:
        _, body = await worker.get("/tenants/dry/account")
        return body if body.get("credit_limit") == "0.0500" else None

    account = await eventually(limited, what="the credit limit applied")
    assert account["status"] == "active" and account["notify_below"] == "1.0000"
    status, body = await authorize(worker, "dry", "outbound", US)
    assert (body["allowed"], body["max_seconds"]) == (True, 120)

    # No rate: a toll-free dial-in to a number that is no toll-free number.
    status, body = await authorize(worker, "funded", "conferencing_toll_free_dial_in", US)
    assert (status, body["allowed"], body["reason"], body["rate_prefix"]) == (
        200,
        False,
        "no_rate",
        None,
    )
    # Unknown tenant.
    status, body = await authorize(worker, "nobody", "outbound", US)
    assert (status, body["allowed"], body["reason"], body["balance"]) == (
        200,
        False,
        "unknown_tenant",
        None,
    )

    # The credit limit crossed the tenant back: restored, with no ledger entry.
    async def dry_alerts() -> Any:
        async with Client(worker.deployment) as client:
            alerts = await client.read_all("credits.alerts")
        kinds = [a["alert"] for a in alerts if a["tenant_id"] == "dry"]
        return kinds if len(kinds) >= 3 else f"not yet: {alerts}"

    assert await eventually(dry_alerts, what="dry's alerts") == [
        "restored",
        "exhausted",
        "restored",
    ]


async def test_authorize_refuses_a_bad_request_with_400(worker: Worker) -> None:
    status, body = await authorize(worker, "a%20b", "outbound", US)
    assert status == 400 and body["error"] == "invalid_tenant_id"
    status, body = await authorize(worker, "acme", "inbound", US)
    assert status == 400 and body["error"] == "invalid_service"
    status, body = await authorize(worker, "acme", "outbound", "+14155550100")  # '+' -> ' '
    assert status == 400 and body["error"] == "invalid_number"
    status, body = await worker.get("/tenants/acme/authorize?service=outbound")
    assert status == 400 and body["error"] == "invalid_number"


async def test_any_worker_authorizes_through_the_owner(kafka: Any, tmp_path: Path) -> None:
    """The account read's forward to the owner carries the authorize query too."""
    d = Deployment(kafka.bootstrap, tmp_path, partitions=2)
    workers = [Worker(d, 0).start(), Worker(d, 1).start()]
    try:
        for w in workers:
            await w.wait_ready()
        tenants = [f"t{i}" for i in range(6)]  # both partitions of 2
        async with Client(d) as client:
            for i, tenant in enumerate(tenants):
                await client.send(
                    "credits.commands", funds(f"c-{i}", tenant=tenant, amount=f"0.{i + 1}000")
                )

        async def everywhere() -> Any:
            seen = []
            for i, tenant in enumerate(tenants):
                answers = [await authorize(w, tenant, "outbound", US) for w in workers]
                if any(status != 200 for status, _ in answers) or answers[0] != answers[1]:
                    return f"not yet: {tenant} {answers}"
                body = answers[0][1]
                if body["max_seconds"] != (i + 1) * 300:  # 0.0200 a minute
                    return f"not yet: {tenant} {body}"
                seen.append(body["max_seconds"])
            return seen

        await eventually(everywhere, timeout=60, what="both workers authorize every tenant")
    finally:
        for w in workers:
            w.stop()
            print(f"--- worker {w.index} log ---\n{w.log_tail(40)}")
