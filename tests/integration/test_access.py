"""Access per tenant (METER_AUTH=jwt) on real workers, the real broker and the sink.

Two workers (so reads are forwarded between them) and a `meter ledger-sink` (SQLite)
verify tokens signed by a test key pair (tests/support/tokens.py). Each role is tried on each
endpoint: a tenant admin reading another tenant is 403, no token is 401, an operator
reads every tenant but cannot post funds, billing can post funds and recharge
outcomes, and the actor of a top-up reaches the ledger, the sink and its CSV.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processor.http.accounts import FORWARDED_HEADER
from processor.http.problems import PROBLEM_JSON
from tests.integration.harness import Deployment, Worker, eventually, running
from tests.integration.test_ledger_sink import Sink
from tests.support.tokens import TestKeys

pytestmark = pytest.mark.integration

STATIC = "it-static-token"
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark"]
FUNDS = {"amount": "10.00", "currency": "USD"}
SETTINGS = {"enabled": True, "recharge_amount": "25.00", "trigger_balance": "5.00"}


async def call(
    base: str,
    method: str,
    path: str,
    token: str | None = None,
    payload: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None if payload is None else json.dumps(payload)
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, base + path, data=data, headers=sent) as resp,
    ):
        raw = await resp.read()
        if resp.status >= 400:
            assert resp.headers["Content-Type"].startswith(PROBLEM_JSON), (path, raw)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return resp.status, body, resp.headers


async def sink_ready(sink: Sink) -> bool:
    sink.alive()
    try:
        return (await sink.get("/ready"))[0] == 200
    except aiohttp.ClientError:
        return False


async def test_each_role_on_each_endpoint(kafka: Any, tmp_path: Path) -> None:
    keys = TestKeys.make(tmp_path / "keys")
    env = {**keys.env(), "METER_ADMIN_TOKEN": STATIC}
    app_id = f"meter-{uuid.uuid4().hex[:8]}"
    (tmp_path / "sink").mkdir()
    sink = Sink(kafka.bootstrap, app_id, tmp_path / "sink", None)
    sink.env.update(env)
    # The workers forward GET /commands/{id} to this sink.
    worker_env = {**env, "METER_SINK_URL": f"http://127.0.0.1:{sink.port}"}
    d = Deployment(kafka.bootstrap, tmp_path, partitions=4, app_id=app_id, env_extra=worker_env)
    acme_admin = keys.tenant_admin("acme", sub="alice@acme")
    operator = keys.token(role="operator", sub="olga")
    billing = keys.token(role="billing", sub="billing-svc")
    async with running(d, 0) as w0, running(d, 1) as w1:
        await w0.wait_ready()
        sink.start()
        try:
            await eventually(lambda: sink_ready(sink), 90, what="the sink ready")
            await walk_the_workers(keys, w0, w1, acme_admin, operator, billing)
            await walk_the_sink(keys, sink, acme_admin, operator, billing)
        finally:
            sink.stop()


async def walk_the_workers(
    keys: TestKeys, w0: Worker, w1: Worker, acme_admin: str, operator: str, billing: str
) -> None:
    base = w0.url
    # Billing funds every tenant, through either worker, with its actor.
    for i, tenant in enumerate(TENANTS):
        worker = (w0, w1)[i % 2]
        status, body, _ = await call(worker.url, "POST", f"/tenants/{tenant}/funds", billing, FUNDS)
        assert status == 202, body

    async def all_funded() -> bool:
        for w in (w0, w1):
            for tenant in TENANTS:
                status, _, _ = await call(w.url, "GET", f"/tenants/{tenant}/account", operator)
                if status != 200:
                    return False
        return True

    # The operator reads every tenant from both workers: with two workers, some of
    # these reads are forwarded to the owner, with the caller's token.
    await eventually(all_funded, 60, what="every tenant readable by the operator")

    # ---- no token: 401 with a bare challenge, everywhere but the open pages
    guarded = [
        ("GET", "/tenants/acme/account", None),
        ("GET", "/tenants/acme/authorize?service=outbound&number=%2B14155550100", None),
        ("POST", "/tenants/acme/funds", FUNDS),
        ("PUT", "/tenants/acme/auto-recharge", SETTINGS),
        ("PUT", "/tenants/acme/limits", {"notify_below": "3.00"}),
        ("POST", "/tenants/acme/recharges/rr-1/outcome", {"outcome": "failed", "reason": "x"}),
        ("GET", "/auth/whoami", None),
    ]
    for method, path, payload in guarded:
        status, body, headers = await call(base, method, path, None, payload)
        assert status == 401, (path, body)
        assert headers["WWW-Authenticate"].startswith("Bearer realm=")
        assert body["error"] == "unauthorized"
    for path in ("/metrics", "/health", "/ready", "/openapi.json"):
        assert (await call(base, "GET", path))[0] == 200, path

    # ---- a bad token: 401 invalid_token
    bad = [
        keys.token(role="operator", exp_in=-3600),
        keys.token(role="operator", aud="another-service"),
        keys.token(role="operator", iss="https://elsewhere.test/"),
        "not.a.jwt",
    ]
    for token in bad:
        status, body, headers = await call(base, "GET", "/tenants/acme/account", token)
        assert status == 401 and body["error"] == "invalid_token", body
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]

    # ---- the forwarding hop's header grants nothing
    spoofed = {FORWARDED_HEADER: "http://127.0.0.1:1/"}
    for w in (w0, w1):
        status, _, _ = await call(w.url, "GET", "/tenants/acme/account", headers=spoofed)
        assert status == 401

    # ---- each role on each endpoint
    expect: list[tuple[str, str, str, Any, int]] = [
        # tenant admin: its own tenant only (its own top-ups too); no outcomes
        (acme_admin, "GET", "/tenants/acme/account", None, 200),
        (acme_admin, "GET", "/tenants/globex/account", None, 403),
        (
            acme_admin,
            "GET",
            "/tenants/globex/authorize?service=outbound&number=%2B14155550100",
            None,
            403,
        ),
        (
            acme_admin,
            "GET",
            "/tenants/acme/authorize?service=outbound&number=%2B14155550100",
            None,
            200,
        ),
        (acme_admin, "PUT", "/tenants/acme/auto-recharge", SETTINGS, 202),
        (acme_admin, "PUT", "/tenants/globex/auto-recharge", SETTINGS, 403),
        (acme_admin, "PUT", "/tenants/acme/limits", {"notify_below": "3.00"}, 202),
        (acme_admin, "PUT", "/tenants/globex/limits", {"notify_below": "3.00"}, 403),
        (acme_admin, "POST", "/tenants/acme/funds", FUNDS, 202),
        (acme_admin, "POST", "/tenants/globex/funds", FUNDS, 403),
        # a command's status: its tenant is the query's
        (acme_admin, "GET", "/commands/never-sent?tenant_id=acme", None, 404),
        (acme_admin, "GET", "/commands/never-sent?tenant_id=globex", None, 403),
        (acme_admin, "GET", "/commands/never-sent", None, 403),
        (operator, "GET", "/commands/never-sent?tenant_id=globex", None, 404),
        (
            acme_admin,
            "POST",
            "/tenants/acme/recharges/rr-1/outcome",
            {"outcome": "failed", "reason": "x"},
            403,
        ),
        # operator: reads every tenant, changes nothing
        (operator, "GET", "/tenants/globex/account", None, 200),
        (operator, "GET", "/tenants/nobody-yet/account", None, 404),
        (operator, "POST", "/tenants/globex/funds", FUNDS, 403),
        (operator, "PUT", "/tenants/globex/auto-recharge", SETTINGS, 403),
        (operator, "PUT", "/tenants/globex/limits", {"notify_below": "3.00"}, 403),
        # billing: funds and outcomes, no reads, no settings
        (billing, "POST", "/tenants/globex/funds", FUNDS, 202),
        (
            billing,
            "POST",
            "/tenants/globex/recharges/rr-9/outcome",
            {"outcome": "failed", "reason": "card_declined", "attempt": 1},
            202,
        ),
        (billing, "GET", "/tenants/globex/account", None, 403),
        (billing, "PUT", "/tenants/globex/auto-recharge", SETTINGS, 403),
        # the static token: everything
        (STATIC, "POST", "/tenants/globex/funds", FUNDS, 202),
        (STATIC, "GET", "/tenants/globex/account", None, 200),
    ]
    for w in (w0, w1):
        for token, method, path, payload, wanted in expect:
            status, body, _ = await call(w.url, method, path, token, payload)
            assert status == wanted, (w.index, method, path, body)
            if wanted == 403:
                assert body["error"] == "forbidden"

    # ---- whoami
    for token, whoami in (
        (acme_admin, {"subject": "alice@acme", "role": "tenant_admin", "tenant_id": "acme"}),
        (operator, {"subject": "olga", "role": "operator", "tenant_id": None}),
        (billing, {"subject": "billing-svc", "role": "billing", "tenant_id": None}),
        (STATIC, {"subject": "admin-token", "role": "admin", "tenant_id": None}),
    ):
        status, body, _ = await call(base, "GET", "/auth/whoami", token)
        assert (status, body) == (200, whoami)


async def walk_the_sink(
    keys: TestKeys, sink: Sink, acme_admin: str, operator: str, billing: str
) -> None:
    base = f"http://127.0.0.1:{sink.port}"

    async def acme_in_the_sink() -> bool:
        sink.alive()
        try:
            status, body, _ = await call(base, "GET", "/tenants/acme/ledger", operator)
        except aiohttp.ClientError:
            return False
        credits = [] if status != 200 else [e for e in body["entries"] if e["kind"] == "credit"]
        return len(credits) >= 3

    await eventually(acme_in_the_sink, 90, what="acme's three top-ups in the sink")
    status, body, _ = await call(base, "GET", "/tenants/acme/ledger", acme_admin)
    assert status == 200
    # Who added each top-up, for an audit: billing's first, then acme's admin's own
    # (one through each worker).
    credits = [e for e in body["entries"] if e["kind"] == "credit"]
    assert sorted(e["actor"] for e in credits) == ["alice@acme", "alice@acme", "billing-svc"]

    for path in ("/tenants/acme/ledger", "/tenants/acme/usage", "/tenants/acme/ledger.csv"):
        status, body, headers = await call(base, "GET", path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        assert (await call(base, "GET", path, acme_admin))[0] == 200, path
        assert (await call(base, "GET", path.replace("acme", "globex"), acme_admin))[0] == 403
        assert (await call(base, "GET", path.replace("acme", "globex"), operator))[0] == 200
        assert (await call(base, "GET", path, billing))[0] == 403, path
        expired = keys.tenant_admin("acme", exp_in=-3600)
        assert (await call(base, "GET", path, expired))[0] == 401, path
    for path in ("/health", "/ready"):
        assert (await call(base, "GET", path))[0] == 200

    _, text, _ = await call(base, "GET", "/tenants/acme/ledger.csv", acme_admin)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][-1] == "actor"
    actors = [r[-1] for r in rows[1:] if r[3] == "credit"]
    assert sorted(actors) == ["alice@acme", "alice@acme", "billing-svc"]
