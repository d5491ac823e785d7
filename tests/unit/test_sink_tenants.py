"""The ledger sink's tenants table and `GET /tenants` (the operator's list), on SQLite.

tests/integration/test_ledger_sink.py runs these same tests against PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition

from processor.sink.http import build_app
from processor.sink.service import SinkStats, SinkTopics, rows_of
from processor.sink.store import LedgerStore, database_url
from schemas.ledger_api import RechargeHistory, TenantList
from schemas.outputs import BalanceAlert
from tests.support.ledger_records import (
    T0,
    LedgerStream,
    funds_added_auto,
    recharge_failed,
    recharge_request,
)
from tests.unit.test_sink_store import GROUP, Rec

ALERTS = "credits.alerts"
TOPICS = SinkTopics(
    "credits.ledger", "credits.recharge-requests", "credits.commands", alerts=ALERTS
)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return database_url(None, tmp_path)


@pytest.fixture
async def tenants_store(db_url: str) -> AsyncIterator[LedgerStore]:
    s = await LedgerStore.open(database_url(db_url, Path()))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def tenants_http(tenants_store: LedgerStore) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(tenants_store))) as client:
        yield client


def alert(tenant: str, kind: str, seq: int | None = None, **extra: Any) -> bytes:
    return BalanceAlert(
        alert_id=f"{tenant}:{kind}:{seq}",
        tenant_id=tenant,
        # arg-type: the alert kind as a plain string, as on the wire
        alert=kind,  # type: ignore[arg-type]
        balance=Decimal("0.0000"),
        currency="USD",
        occurred_at=T0,
        status_seq=seq,
        **extra,
    ).to_json()


def command(**fields: Any) -> bytes:
    return json.dumps({"occurred_at": "2026-11-25T10:05:00Z", **fields}).encode()


async def write(store: LedgerStore, records: dict[str, list[bytes]], first: int = 0) -> None:
    batch = rows_of(
        {
            TopicPartition(topic, 0): [Rec(first + i, v) for i, v in enumerate(values)]
            for topic, values in records.items()
        },
        TOPICS,
        SinkStats(),
    )
    await store.write(GROUP, batch)


async def listing(http: TestClient[Any, Any], query: str = "") -> list[dict[str, Any]]:
    resp = await http.get(f"/tenants{query}")
    assert resp.status == 200, await resp.text()
    TenantList.model_validate_json(await resp.read())  # what docs/openapi.json says
    return list((await resp.json())["tenants"])


async def test_the_operator_list_filters_by_status_alert_settings_and_answers(
    tenants_store: LedgerStore, tenants_http: TestClient[Any, Any]
) -> None:
    stream = LedgerStream()
    funded = [stream.entry(t, kind="credit", amount=Decimal("20.0000")) for t in ("a", "b", "c")]
    low = stream.entry("c", kind="debit", amount=Decimal("18.0000"))  # c: 2.0000
    await write(
        tenants_store,
        {
            TOPICS.ledger: [e.to_json() for e in [*funded, low]],
            ALERTS: [
                alert("a", "restored", 1),
                alert("a", "exhausted", 2),
                # A re-delivered older alert keeps its old number: a stays exhausted.
                alert("a", "restored", 1),
                alert("b", "restored", 1),
                alert("b", "recharge_failed", reason="card declined", request_id="r1"),
                alert("c", "restored", 1),
            ],
            TOPICS.commands: [
                command(
                    type="tenant_limits_configured",
                    command_id="l1",
                    tenant_id="c",
                    notify_below="5.00",
                ),
                recharge_failed("b", "f1", "r1", 1),
            ],
        },
    )
    everyone = await listing(tenants_http)
    assert [t["tenant_id"] for t in everyone] == ["a", "b", "c"]
    by_id = {t["tenant_id"]: t for t in everyone}
    assert by_id["a"]["status"] == "exhausted"
    assert by_id["a"]["balance"] == "20.0000"
    assert by_id["b"]["auto_recharge_suspended"] is True
    assert by_id["b"]["last_failure_reason"] == "card declined"
    assert by_id["c"]["below_low_balance"] is True
    assert by_id["c"]["low_balance_level"] == "5.00"
    assert [t["tenant_id"] for t in await listing(tenants_http, "?status=exhausted")] == ["a"]
    assert [t["tenant_id"] for t in await listing(tenants_http, "?status=suspended")] == ["b"]
    assert [t["tenant_id"] for t in await listing(tenants_http, "?status=low")] == ["c"]
    assert [t["tenant_id"] for t in await listing(tenants_http, "?status=failing")] == ["b"]
    assert [t["tenant_id"] for t in await listing(tenants_http, "?q=B")] == ["b"]

    # Settings lift the suspension; auto-recharge funds end the failures; c is topped up.
    await write(
        tenants_store,
        {
            TOPICS.commands: [
                command(
                    type="auto_recharge_configured",
                    command_id="s1",
                    tenant_id="b",
                    enabled=True,
                    recharge_amount="25.00",
                    trigger_balance="5.00",
                ),
                funds_added_auto("b", "p1", "r1", 2),
            ],
            TOPICS.ledger: [stream.entry("c", kind="credit", amount=Decimal("10.0000")).to_json()],
        },
        first=10,
    )
    assert await listing(tenants_http, "?status=suspended") == []
    assert await listing(tenants_http, "?status=failing") == []
    assert await listing(tenants_http, "?status=low") == []


async def test_a_batch_read_again_changes_no_tenant(
    tenants_store: LedgerStore, tenants_http: TestClient[Any, Any]
) -> None:
    failures = {TOPICS.commands: [recharge_failed("b", f"f{i}", "r1", 1) for i in range(3)]}
    await write(tenants_store, failures)
    await write(tenants_store, failures)  # after a crash, before its positions were seen
    (b,) = await listing(tenants_http)
    assert b["recharge_failures"] == 3


async def test_the_operator_list_pages_by_cursor(
    tenants_store: LedgerStore, tenants_http: TestClient[Any, Any]
) -> None:
    stream = LedgerStream(tenants=12)
    await write(
        tenants_store,
        {TOPICS.ledger: [stream.entry(stream.tenant(i)).to_json() for i in range(12)]},
    )
    seen: list[str] = []
    url = "/tenants?limit=5"
    while True:
        body = await (await tenants_http.get(url)).json()
        seen += [t["tenant_id"] for t in body["tenants"]]
        if body["next_cursor"] is None:
            break
        url = f"/tenants?limit=5&cursor={body['next_cursor']}"
    assert seen == [stream.tenant(i) for i in range(12)]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("?status=broke", "invalid_query"),
        ("?cursor=!!", "invalid_cursor"),
        ("?limit=0", "invalid_query"),
        ("?q=" + "x" * 65, "invalid_query"),
    ],
)
async def test_the_operator_list_refuses_bad_queries(
    tenants_http: TestClient[Any, Any], query: str, error: str
) -> None:
    resp = await tenants_http.get(f"/tenants{query}")
    assert resp.status == 400
    assert (await resp.json())["error"] == error


async def test_recharge_requests_come_with_their_outcomes(
    tenants_store: LedgerStore, tenants_http: TestClient[Any, Any]
) -> None:
    await write(
        tenants_store,
        {
            TOPICS.recharge_requests: [
                recharge_request("acme", "r1", 1),
                recharge_request("acme", "r1", 2),
            ],
            TOPICS.commands: [
                recharge_failed("acme", "f1", "r1", 1),
                funds_added_auto("acme", "p1", "r1", 2),
            ],
        },
    )
    resp = await tenants_http.get("/tenants/acme/recharges")
    RechargeHistory.model_validate_json(await resp.read())  # what docs/openapi.json says
    body = await resp.json()
    assert [(r["attempt"], r["outcome"], r["reason"]) for r in body["recharges"]] == [
        (2, "succeeded", None),
        (1, "failed", "card declined"),
    ]
    assert body["recharges"][0]["amount"] == "25.00"
