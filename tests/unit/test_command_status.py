"""The command status resource: the sink records each command as pending from
credits.commands and its outcome from credits.command-results, and serves
`GET /commands/{command_id}`; a worker forwards that path to the sink.

tests/integration/test_command_status.py runs the store tests here against PostgreSQL
too (it overrides `db_url`), and the whole path on the real broker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition
from pydantic import SecretStr

from processor.dev.kafka_local import free_port
from processor.http.auth import Access, TokenVerifier
from processor.http.command_status import SinkForwarder
from processor.http.tokens import LocalKeys
from processor.sink.http import build_app
from processor.sink.service import SinkStats, SinkTopics, rows_of
from processor.sink.store import Batch, LedgerStore, supersedes
from schemas.outputs import CommandResult, LedgerEntry
from schemas.types import format_timestamp
from tests.support.ledger_records import T0, LedgerStream
from tests.unit.test_sink_store import GROUP, Rec, db_url, store  # noqa: F401

TOPICS = SinkTopics(
    "credits.ledger", "credits.recharge-requests", "credits.commands", "credits.command-results"
)


def command(command_id: str, tenant: str = "acme", amount: str = "5.00") -> bytes:
    return json.dumps(
        {
            "type": "funds_added",
            "command_id": command_id,
            "tenant_id": tenant,
            "occurred_at": format_timestamp(T0),
            "amount": amount,
            "currency": "USD",
            "source": "manual",
        }
    ).encode()


def result(
    command_id: str,
    outcome: str,
    tenant: str = "acme",
    entry_id: str | None = None,
    reason: str | None = None,
) -> bytes:
    return CommandResult(
        command_id=command_id,
        tenant_id=tenant,
        command_type="funds_added",
        # arg-type: outcome as a plain string, as it arrives on the wire
        outcome=outcome,  # type: ignore[arg-type]
        entry_id=entry_id,
        reason=reason,
        detail=None if reason is None else f"because {reason}",
        recorded_at=T0,
    ).to_json()


def batch(*records: tuple[str, bytes], first: int = 0) -> Batch:
    by_topic: dict[TopicPartition, list[Rec]] = {}
    for topic, value in records:
        items = by_topic.setdefault(TopicPartition(topic, 0), [])
        items.append(Rec(first + len(items), value))
    return rows_of(by_topic, TOPICS, SinkStats())


def test_the_first_result_stands_but_applied_supersedes_rejected() -> None:
    assert supersedes("pending", "rejected") and supersedes("pending", "applied")
    assert supersedes("rejected", "applied")
    assert not supersedes("applied", "rejected") and not supersedes("rejected", "rejected")
    assert not supersedes("ignored", "rejected") and not supersedes("applied", "applied")
    b = batch(
        (TOPICS.command_results, result("c-1", "rejected", reason="too_old")),
        (TOPICS.command_results, result("c-1", "rejected", reason="other")),
        (TOPICS.command_results, result("c-2", "rejected", reason="no_rate")),
        (TOPICS.command_results, result("c-2", "applied")),
    )
    assert b.results[("acme", "c-1")]["reason"] == "too_old"
    assert b.results[("acme", "c-2")]["status"] == "applied"


async def test_pending_then_the_outcome_in_any_order(store: LedgerStore) -> None:  # noqa: F811
    stream = LedgerStream(tenants=1)
    [entry] = list(stream.entries(1))
    assert isinstance(entry, LedgerEntry)
    # c-1's command, then its result and entry; c-2's result before its command.
    await store.write(GROUP, batch((TOPICS.commands, command("c-1"))))
    [row] = await store.command_status("c-1")
    assert (row["status"], row["entry"], row["occurred_at"]) == ("pending", None, T0)
    await store.write(
        GROUP,
        batch(
            (TOPICS.command_results, result("c-1", "applied", entry_id=entry.entry_id)),
            (TOPICS.command_results, result("c-2", "rejected", reason="no_rate")),
        ),
    )
    [row] = await store.command_status("c-1")
    assert (row["status"], row["entry_id"], row["entry"]) == ("applied", entry.entry_id, None)
    await store.write(GROUP, batch((TOPICS.ledger, entry.to_json())))
    [row] = await store.command_status("c-1", "acme")
    assert row["entry"]["entry_id"] == entry.entry_id
    await store.write(GROUP, batch((TOPICS.commands, command("c-2")), first=5))
    [row] = await store.command_status("c-2")
    # The command arriving late keeps its result, and adds when it occurred.
    assert (row["status"], row["reason"], row["occurred_at"]) == ("rejected", "no_rate", T0)


async def test_a_replayed_result_changes_nothing_but_applied_replaces_rejected(
    store: LedgerStore,  # noqa: F811
) -> None:
    await store.write(GROUP, batch((TOPICS.command_results, result("c-1", "applied"))))
    # A replay's copy, a duplicate's (re-sent) command: neither changes the status.
    await store.write(
        GROUP,
        batch(
            (TOPICS.command_results, result("c-1", "rejected", reason="invalid_event")),
            (TOPICS.commands, command("c-1")),
        ),
    )
    [row] = await store.command_status("c-1")
    assert (row["status"], row["reason"]) == ("applied", None)
    await store.write(GROUP, batch((TOPICS.command_results, result("c-3", "rejected", reason="x"))))
    await store.write(GROUP, batch((TOPICS.command_results, result("c-3", "rejected", reason="y"))))
    [row] = await store.command_status("c-3")
    assert row["reason"] == "x"
    await store.write(GROUP, batch((TOPICS.command_results, result("c-3", "applied"))))
    [row] = await store.command_status("c-3")
    assert (row["status"], row["reason"]) == ("applied", None)
    assert await store.count("commands") == 2


@pytest.fixture
async def http(store: LedgerStore) -> AsyncIterator[TestClient[Any, Any]]:  # noqa: F811
    async with TestClient(TestServer(build_app(store))) as client:
        yield client


async def test_http_command_status(store: LedgerStore, http: TestClient[Any, Any]) -> None:  # noqa: F811
    await store.write(
        GROUP,
        batch(
            (TOPICS.commands, command("auto-recharge-change:k/1")),
            (TOPICS.commands, command("same", tenant="acme")),
            (TOPICS.commands, command("same", tenant="zeta")),
            (TOPICS.command_results, result("same", "rejected", "zeta", reason="no_rate")),
        ),
    )
    answer = await http.get("/commands/auto-recharge-change%3Ak%2F1")
    assert answer.status == 200, await answer.text()
    assert await answer.json() == {
        "command_id": "auto-recharge-change:k/1",
        "tenant_id": "acme",
        "command_type": "funds_added",
        "status": "pending",
        "entry_id": None,
        "entry": None,
        "reason": None,
        "detail": None,
        "occurred_at": format_timestamp(T0),
        "recorded_at": None,
    }
    answer = await http.get("/commands/same")
    assert answer.status == 409
    assert (await answer.json())["error"] == "ambiguous_command_id"
    answer = await http.get("/commands/same?tenant_id=zeta")
    body = await answer.json()
    assert (body["status"], body["reason"], body["detail"]) == (
        "rejected",
        "no_rate",
        "because no_rate",
    )
    answer = await http.get("/commands/never")
    assert answer.status == 404
    assert answer.content_type == "application/problem+json"
    assert (await answer.json())["error"] == "unknown_command"
    answer = await http.get("/commands/x?tenant_id=bad%20id")
    assert answer.status == 400 and (await answer.json())["error"] == "invalid_tenant_id"


async def test_a_worker_forwards_the_status_to_the_sink(store: LedgerStore) -> None:  # noqa: F811
    await store.write(GROUP, batch((TOPICS.commands, command("c/1", tenant="acme"))))
    runner = web.AppRunner(build_app(store))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    forwarder = SinkForwarder(f"http://127.0.0.1:{port}/")
    try:
        got = await forwarder.status("c/1", "acme")
        assert got.status == 200 and json.loads(got.body)["status"] == "pending"
        missing = await forwarder.status("nope", None)
        assert missing.status == 404 and missing.content_type.startswith("application/problem+json")
    finally:
        await forwarder.close()
        await runner.cleanup()
    # The sink gone: a 503 with Retry-After, as problem details.
    forwarder = SinkForwarder(f"http://127.0.0.1:{free_port()}", timeout=2)
    try:
        down = await forwarder.status("c/1", "acme")
    finally:
        await forwarder.close()
    assert down.status == 503 and down.headers["Retry-After"]
    assert json.loads(down.body)["error"] == "sink_unavailable"


async def test_the_forward_carries_the_callers_token_to_a_sink_that_checks_it(
    store: LedgerStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Under METER_AUTH=jwt the sink checks who asks: without the caller's token the
    forwarded read was a 401 for everyone (found running deploy/k8s's settings)."""
    await store.write(GROUP, batch((TOPICS.commands, command("c/1", tenant="acme"))))
    keys = LocalKeys(tmp_path)
    operator = keys.issue("operator", None, issuer="iss", audience="aud")
    access = Access(
        "jwt", SecretStr("static-secret"), TokenVerifier(str(keys.jwks_path), "iss", "aud")
    )
    runner = web.AppRunner(build_app(store, access=access))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    forwarder = SinkForwarder(f"http://127.0.0.1:{port}")
    try:
        for token in (operator, "static-secret"):
            got = await forwarder.status("c/1", "acme", f"Bearer {token}")
            assert got.status == 200, got.body
            assert json.loads(got.body)["status"] == "pending"
        # No token, or a wrong one: the sink's own refusal, relayed.
        assert (await forwarder.status("c/1", "acme")).status == 401
        assert (await forwarder.status("c/1", "acme", "Bearer wrong")).status == 401
    finally:
        await forwarder.close()
        await runner.cleanup()
