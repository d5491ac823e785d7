"""Every error answer of the three HTTP servers is RFC 9457 problem details.

The worker's read API and admin API (Faust's aiohttp application, served here without
a broker) and the ledger sink's query API are walked error path by error path: each
answer is application/problem+json with type, title, status, detail and the
contract's `error`, and every 503 carries Retry-After (processor/http/problems.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from processor.config.settings import Settings
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.dev.kafka_local import free_port
from processor.http import admin, admin_web
from processor.http.problems import PROBLEM_JSON, PROBLEM_TYPE_BASE, problem, problem_body
from processor.kafka import glue
from processor.sink.http import build_app
from processor.sink.store import LedgerStore, database_url
from processor.worker.app import Broker, Meter
from schemas.admin import ErrorBody
from tests.support.faust_web import aiohttp_app

TOKEN = "problem-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUNDS = json.dumps({"amount": "5.00", "currency": "USD"})
LONG_ID = "x" * 100


async def assert_problem(
    resp: Any, status: int, error: str, tenant_id: Any = ..., **fields: Any
) -> dict[str, Any]:
    """The answer is problem details with this status and code (and these fields)."""
    raw = await resp.read()
    assert resp.status == status, raw
    assert resp.headers["Content-Type"].startswith(PROBLEM_JSON), resp.headers
    body: dict[str, Any] = json.loads(raw)
    assert body["type"] == PROBLEM_TYPE_BASE + error
    assert body["status"] == status and body["error"] == error
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if status == 503:
        assert int(resp.headers["Retry-After"]) >= 1
    if tenant_id is not ...:
        assert body["tenant_id"] == tenant_id
        ErrorBody.model_validate(body)  # what docs/openapi.json says an error is
    for name, value in fields.items():
        assert body[name] == value, name
    return body


def test_problem_body_and_headers() -> None:
    body = json.loads(problem_body(404, "not_found", "nothing here", tenant_id=None))
    assert body == {
        "type": "https://credits-meter.dev/problems/not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "nothing here",
        "error": "not_found",
        "tenant_id": None,
    }
    answer = problem(503, "unavailable", "later", tenant_id="acme")
    assert answer.content_type == PROBLEM_JSON
    assert answer.headers["Retry-After"] == "2"
    assert problem(503, "x", "y", retry_after=9).headers["Retry-After"] == "9"
    assert "Retry-After" not in problem(400, "x", "y").headers
    # `errors` only when there are some.
    assert "errors" not in json.loads(problem_body(422, "x", "y", errors=None))


# ---------------------------------------------------------------------- the worker


@pytest.fixture
async def worker(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Meter, TestClient[Any, Any]]]:
    cfg = Settings(_env_file=None, METER_ADMIN_TOKEN=TOKEN)
    m = Meter(cfg, load_rate_card(example_rate_card_path()), Broker("127.0.0.1:1"), partitions=4)

    async def no_broker(self: Any, topic: str, key: bytes, value: bytes) -> None:
        raise ConnectionError("no broker here")

    monkeypatch.setattr(admin_web.FaustCommandPublisher, "publish", no_broker)
    async with TestClient(TestServer(aiohttp_app(m.app))) as client:
        yield m, client
    await glue.close_http_client(m.app)


async def test_every_read_api_error_is_a_problem(
    worker: tuple[Meter, TestClient[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, http = worker
    await assert_problem(
        await http.get(f"/tenants/{LONG_ID}/account"), 400, "invalid_tenant_id", None
    )
    await assert_problem(
        await http.get(f"/tenants/{LONG_ID}/authorize?service=outbound&number=%2B4420"),
        400,
        "invalid_tenant_id",
        None,
    )
    await assert_problem(
        await http.get("/tenants/acme/authorize?service=fax&number=%2B4420"),
        400,
        "invalid_service",
        "acme",
    )
    await assert_problem(
        await http.get("/tenants/acme/authorize?service=outbound&number=44"),
        400,
        "invalid_number",
        "acme",
    )
    # No partition here: not the owner yet.
    await assert_problem(await http.get("/tenants/acme/account"), 503, "unavailable", "acme")
    # An owner that does not answer.
    closed = free_port()
    monkeypatch.setattr(m.account_api, "owner_url", lambda tenant_id: f"http://127.0.0.1:{closed}/")
    await assert_problem(await http.get("/tenants/acme/account"), 503, "owner_unreachable", "acme")
    # The owner itself, with no event for the tenant.
    me = str(m.app.conf.canonical_url)
    monkeypatch.setattr(m.account_api, "owner_url", lambda tenant_id: me)
    monkeypatch.setattr(m.account_api, "owned_partitions", lambda: set(range(4)))
    monkeypatch.setattr(m.account_api, "ready", lambda: True)
    await assert_problem(await http.get("/tenants/acme/account"), 404, "not_found", "acme")


async def test_what_the_frameworks_answer_is_a_problem_too(
    worker: tuple[Meter, TestClient[Any, Any]],
) -> None:
    _, http = worker
    await assert_problem(await http.get("/no/such/page"), 404, "not_found")
    resp = await http.post("/tenants/acme/account")
    await assert_problem(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]
    await assert_problem(await http.delete("/tenants/acme/funds"), 405, "method_not_allowed")


async def test_the_workers_ready_probe_keeps_its_body_and_says_when_to_retry(
    worker: tuple[Meter, TestClient[Any, Any]],
) -> None:
    _, http = worker
    resp = await http.get("/ready")
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    assert (await resp.json())["ready"] is False


async def test_every_admin_api_error_is_a_problem(
    worker: tuple[Meter, TestClient[Any, Any]],
) -> None:
    _, http = worker
    post = http.post
    await assert_problem(
        await post(f"/tenants/{LONG_ID}/funds", data=FUNDS, headers=AUTH),
        400,
        "invalid_tenant_id",
        None,
    )
    resp = await post("/tenants/acme/funds", data=FUNDS)
    await assert_problem(resp, 401, "unauthorized", "acme")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer not-it"}
    await assert_problem(
        await post("/tenants/acme/funds", data=FUNDS, headers=wrong), 403, "forbidden", "acme"
    )
    await assert_problem(
        await post("/tenants/acme/funds", data=b"x" * 20_000, headers=AUTH),
        413,
        "too_large",
        "acme",
    )
    await assert_problem(
        await post("/tenants/acme/funds", data="{", headers=AUTH), 400, "invalid_json", "acme"
    )
    body = await assert_problem(
        await post("/tenants/acme/funds", data='{"amount": "-1"}', headers=AUTH),
        422,
        "invalid_request",
        "acme",
    )
    assert {tuple(e["loc"]) for e in body["errors"]} >= {("body", "amount"), ("body", "currency")}
    keyed = {**AUTH, "Idempotency-Key": "k-1"}
    await assert_problem(
        await post("/tenants/acme/funds", data=FUNDS, headers=keyed), 503, "publish_failed", "acme"
    )
    other = json.dumps({"amount": "6.00", "currency": "USD"})
    await assert_problem(
        await post("/tenants/acme/funds", data=other, headers=keyed),
        422,
        "idempotency_key_reused",
        "acme",
    )
    await assert_problem(
        await http.put("/tenants/acme/limits", data="[]", headers=AUTH),
        422,
        "invalid_request",
        "acme",
    )
    await assert_problem(
        await http.put("/tenants/acme/auto-recharge", data="{}", headers=AUTH),
        422,
        "invalid_request",
        "acme",
    )


async def test_a_disabled_admin_api_is_a_503_problem() -> None:
    # arg-type: an API with no engine nor publisher is the test
    api = admin.AdminAPI(None, "USD", "commands", publisher=None)  # type: ignore[arg-type]
    reply = await api.add_funds("acme", AUTH, FUNDS.encode())
    assert reply.status == 503 and reply.headers["Retry-After"] == "2"
    body = json.loads(reply.body)
    assert body["type"] == PROBLEM_TYPE_BASE + "admin_disabled" and body["status"] == 503


async def test_an_interrupted_admin_request_leaves_a_503_problem_for_its_retries() -> None:
    class Hang:
        async def publish(self, topic: str, key: bytes, value: bytes) -> None:
            await asyncio.Event().wait()

    api = admin.AdminAPI(SecretStr(TOKEN), "USD", "commands", Hang())
    keyed = {**AUTH, "Idempotency-Key": "k-2"}
    request = asyncio.ensure_future(api.add_funds("acme", keyed, FUNDS.encode()))
    seen = None
    while seen is None:
        await asyncio.sleep(0)  # a turn of the loop, not a wait for time
        seen = api.idempotency.get(("acme", "funds", "k-2"))
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    reply = seen.answer.result()
    assert reply.status == 503 and reply.headers["Retry-After"] == "2"
    assert json.loads(reply.body)["error"] == "interrupted"


# ------------------------------------------------------------------------ the sink


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[tuple[LedgerStore, TestClient[Any, Any]]]:
    store = await LedgerStore.open(database_url(None, tmp_path))
    try:
        async with TestClient(TestServer(build_app(store, ready=lambda: False))) as client:
            yield store, client
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("path", "status", "error", "tenant"),
    [
        (f"/tenants/{LONG_ID}/ledger", 400, "invalid_tenant_id", None),
        (f"/tenants/{LONG_ID}/usage", 400, "invalid_tenant_id", None),
        (f"/tenants/{LONG_ID}/ledger.csv", 400, "invalid_tenant_id", None),
        ("/tenants/acme/ledger?limit=0", 400, "invalid_query", "acme"),
        ("/tenants/acme/ledger?kind=refund", 400, "invalid_query", "acme"),
        ("/tenants/acme/ledger?before=nope", 400, "invalid_cursor", "acme"),
        ("/tenants/acme/usage?from=yesterday", 400, "invalid_query", "acme"),
        ("/tenants/acme/usage?group_by=week", 400, "invalid_query", "acme"),
        (
            "/tenants/acme/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            400,
            "invalid_query",
            "acme",
        ),
        ("/no/such/page", 404, "not_found", ...),
    ],
)
async def test_every_sink_error_is_a_problem(
    sink: tuple[LedgerStore, TestClient[Any, Any]], path: str, status: int, error: str, tenant: Any
) -> None:
    _, http = sink
    await assert_problem(await http.get(path), status, error, tenant)


async def test_the_sinks_framework_answers_and_failures_are_problems(
    sink: tuple[LedgerStore, TestClient[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, http = sink
    await assert_problem(await http.post("/tenants/acme/ledger"), 405, "method_not_allowed")

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database gone")

    monkeypatch.setattr(store, "ledger_page", broken)
    body = await assert_problem(await http.get("/tenants/acme/ledger"), 500, "internal_error")
    assert "database gone" not in body["detail"]  # the log has it, the client does not
    resp = await http.get("/ready")
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    assert (await resp.json())["status"] == "not_ready"


async def test_a_handler_answer_is_not_rewritten() -> None:
    async def teapot(request: web.Request) -> web.Response:
        return problem(418, "teapot", "short and stout", extra_field=1)

    app = web.Application()
    from processor.http.problems import install_fallback

    install_fallback(app)
    app.router.add_get("/", teapot)
    async with TestClient(TestServer(app)) as http:
        body = await assert_problem(await http.get("/"), 418, "teapot")
        assert body["extra_field"] == 1
