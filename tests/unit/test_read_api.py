"""The HTTP read API validates before it works (`AccountAPI.account_response`), no broker.

A tenant id that breaks the contract's pattern is a 400 that hashes, caches and
forwards nothing; a forward to the owner gives up after FORWARD_TIMEOUT_SECONDS; every
503 says when to retry; Faust's own pages are off. The same on a real worker:
tests/integration/test_read_api.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from processor.config.settings import Settings
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.http import accounts as accounts_module
from processor.http.problems import RETRY_AFTER_SECONDS
from processor.kafka import glue
from processor.kafka.routing import (
    MAX_CACHED_KEY_BYTES,
    _partition,
    cache_sizes,
    partition_for,
    partition_for_key,
)
from processor.worker.app import Broker, Meter

INVALID = [
    "x" * 7000,
    "x" * 65,
    "",
    "has space",
    "a/b",
    "acme\n",
    "caf\u00e9",
    "acme%2F..",
]


@pytest.fixture
async def meter() -> AsyncIterator[Meter]:
    cfg = Settings(_env_file=None)
    m = Meter(cfg, load_rate_card(example_rate_card_path()), Broker("127.0.0.1:1"), partitions=4)
    try:
        yield m
    finally:
        await glue.close_http_client(m.app)


def refuse_work(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    def no(*args: Any) -> Any:
        raise AssertionError("an invalid tenant id reached the routing")

    monkeypatch.setattr(meter.account_api, "owner_url", no)
    monkeypatch.setattr(accounts_module, "partition_for", no)


@pytest.mark.parametrize("tenant", INVALID, ids=lambda t: repr(t[:12]) + f"[{len(t)}]")
async def test_an_invalid_tenant_id_is_400_before_any_work(
    meter: Meter, monkeypatch: pytest.MonkeyPatch, tenant: str
) -> None:
    refuse_work(meter, monkeypatch)
    before = cache_sizes()
    status, body, headers = await meter.account_api.account_response(tenant, forwarded=False)
    assert status == 400 and headers == {}
    answer = json.loads(body)
    assert answer["error"] == "invalid_tenant_id"
    assert "1 to 64 characters of A-Z a-z 0-9 . _ : -" in answer["detail"]
    # The id is never echoed back (it may be kilobytes long).
    assert answer["tenant_id"] is None and len(body) < 300
    assert cache_sizes() == before


async def test_a_valid_tenant_id_is_routed(meter: Meter) -> None:
    # No partition is assigned here: not the owner, so 503 (and when to retry).
    status, body, headers = await meter.account_api.account_response(
        "acme:eu-1_x.y", forwarded=False
    )
    assert status == 503 and json.loads(body)["error"] == "unavailable"
    assert headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}


@pytest.fixture
async def owner(meter: Meter) -> AsyncIterator[Callable[[web.Response | None], Any]]:
    """A fake owner worker; `None` makes it accept and never answer."""
    runners: list[web.AppRunner] = []
    blocked = asyncio.Event()

    async def serve(answer: web.Response | None) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            if answer is None:
                await blocked.wait()
            assert answer is not None
            return answer

        async def echo(request: web.Request) -> web.StreamResponse:
            return web.json_response({"path": request.path, "query": dict(request.query)})

        http = web.Application()
        http.router.add_get("/tenants/{tenant}/account", handler)
        http.router.add_get("/tenants/{tenant}/authorize", echo)
        runner = web.AppRunner(http)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        # the test chooses where a tenant's owner is
        meter.account_api.owner_url = lambda tenant_id: f"http://127.0.0.1:{port}/"

    yield serve
    blocked.set()
    for runner in runners:
        await runner.cleanup()


async def test_a_forward_to_a_silent_owner_gives_up_with_503_and_retry_after(
    meter: Meter, owner: Callable[[web.Response | None], Any]
) -> None:
    assert accounts_module.FORWARD_TIMEOUT_SECONDS == 2.0
    await owner(None)
    meter.account_api.forward_timeout = 0.3
    started = time.monotonic()
    status, body, headers = await meter.account_api.account_response("acme", forwarded=False)
    assert time.monotonic() - started < 2.0
    assert status == 503 and headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    answer = json.loads(body)
    assert answer["error"] == "owner_unreachable"
    assert "did not answer within 0.3s" in answer["detail"]


async def test_an_owners_503_is_passed_on_with_retry_after(
    meter: Meter, owner: Callable[[web.Response | None], Any]
) -> None:
    await owner(web.json_response({"error": "unavailable"}, status=503))
    status, body, headers = await meter.account_api.account_response("acme", forwarded=False)
    assert status == 503 and json.loads(body) == {"error": "unavailable"}
    assert headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}


async def test_an_owners_answer_is_passed_on(
    meter: Meter, owner: Callable[[web.Response | None], Any]
) -> None:
    await owner(web.json_response({"tenant_id": "acme"}, status=200))
    assert await meter.account_api.account_response("acme", forwarded=False) == (
        200,
        b'{"tenant_id": "acme"}',
        {},
    )


async def test_an_unreachable_owner_is_503_with_retry_after(meter: Meter) -> None:
    from processor.dev.kafka_local import free_port

    port = free_port()  # nothing listens there
    # the test chooses where a tenant's owner is
    meter.account_api.owner_url = lambda tenant_id: f"http://127.0.0.1:{port}/"
    status, body, headers = await meter.account_api.account_response("acme", forwarded=False)
    assert status == 503 and json.loads(body)["error"] == "owner_unreachable"
    assert "Retry-After" in headers


def test_faust_pages_are_off_and_ours_are_on(meter: Meter) -> None:
    conf = meter.app.conf
    assert not conf.web_router_enabled  # /router/: the cluster's layout
    assert not conf.web_tables_enabled  # /table/...: table data
    assert not conf.web_graph_enabled
    assert not conf.web_stats_enabled
    assert not conf.web_metrics_enabled  # Faust's /performance/, not our /metrics
    served = {prefix for prefix, _ in glue.enabled_blueprints(meter.app.web)}
    assert served == {""}  # only Faust's plain production index at /
    names = {page.__name__ for page in meter.pages}
    assert names == {
        "AccountPage",
        "AuthorizePage",
        "WhoAmIPage",
        "MetricsPage",
        "HealthPage",
        "ReadyPage",
    }


# ------------------------------------------------------------------------ routing


def test_only_keys_up_to_a_tenant_ids_size_are_cached() -> None:
    before = cache_sizes()
    long_id = "y" * 7000
    assert partition_for(long_id, 4) == _partition(long_id.encode(), 4)
    assert partition_for("\u00e9" * 10, 4) == _partition(("\u00e9" * 10).encode(), 4)
    assert partition_for_key(b"k" * 1000, 4) == _partition(b"k" * 1000, 4)
    assert cache_sizes() == before
    fresh = "z" * MAX_CACHED_KEY_BYTES
    assert partition_for(fresh, 4) == _partition(fresh.encode(), 4)
    assert partition_for_key(fresh.encode() + b"!", 4) == _partition(fresh.encode() + b"!", 4)
    tenants, keys = cache_sizes()
    assert tenants == before[0] + 1 and keys == before[1] + 1  # the tenant's bytes key


def test_every_path_gives_a_tenant_the_same_partition() -> None:
    for tenant in ("acme", "globex", "t" * MAX_CACHED_KEY_BYTES):
        expected = _partition(tenant.encode(), 7)
        assert partition_for(tenant, 7) == partition_for_key(tenant.encode(), 7) == expected


def test_the_openapi_document_names_the_400_and_the_retry_after() -> None:
    from processor.http import openapi

    paths = openapi.build()["paths"]
    read = paths["/tenants/{tenant_id}/account"]["get"]["responses"]
    assert {"200", "400", "401", "403", "404", "503"} == set(read)
    assert "invalid_tenant_id" in read["400"]["description"]
    assert "Retry-After" in read["503"]["headers"]
    for path, method in (
        ("/tenants/{tenant_id}/funds", "post"),
        ("/tenants/{tenant_id}/auto-recharge", "put"),
    ):
        assert "invalid_tenant_id" in paths[path][method]["responses"]["400"]["description"]


# ------------------------------------------------------------- authorize (issue 20)


@pytest.mark.parametrize("tenant", INVALID[:4], ids=lambda t: repr(t[:12]) + f"[{len(t)}]")
async def test_authorize_an_invalid_tenant_id_is_400_before_any_work(
    meter: Meter, monkeypatch: pytest.MonkeyPatch, tenant: str
) -> None:
    refuse_work(meter, monkeypatch)
    status, body, _ = await meter.account_api.authorize_response(
        tenant, "outbound", "+33612345678", False
    )
    assert status == 400 and json.loads(body)["error"] == "invalid_tenant_id"
    assert json.loads(body)["tenant_id"] is None


@pytest.mark.parametrize(
    ("service", "number", "error"),
    [
        ("inbound", "+33612345678", "invalid_service"),
        (None, "+33612345678", "invalid_service"),
        ("outbound", " 33612345678", "invalid_number"),  # an unescaped '+' reads as ' '
        ("outbound", None, "invalid_number"),
    ],
)
async def test_authorize_a_bad_query_is_400_before_any_work(
    meter: Meter,
    monkeypatch: pytest.MonkeyPatch,
    service: str | None,
    number: str | None,
    error: str,
) -> None:
    refuse_work(meter, monkeypatch)
    status, body, headers = await meter.account_api.authorize_response(
        "acme", service, number, False
    )
    assert status == 400 and headers == {}
    assert json.loads(body)["error"] == error and json.loads(body)["tenant_id"] == "acme"


async def test_authorize_is_forwarded_to_the_owner_with_its_query(
    meter: Meter, owner: Callable[[web.Response | None], Any]
) -> None:
    await owner(None)
    status, body, _ = await meter.account_api.authorize_response(
        "acme", "conferencing_dial_out", "+33612345678", forwarded=False
    )
    assert status == 200
    assert json.loads(body) == {
        "path": "/tenants/acme/authorize",
        "query": {"service": "conferencing_dial_out", "number": "+33612345678"},
    }


async def test_authorize_not_owned_is_503(meter: Meter) -> None:
    status, body, headers = await meter.account_api.authorize_response(
        "acme", "outbound", "+33612345678", forwarded=False
    )
    assert status == 503 and json.loads(body)["error"] == "unavailable"
    assert "Retry-After" in headers
