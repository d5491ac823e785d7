"""The ledger sink's store, decoding and query API, against SQLite.

tests/integration/test_ledger_sink.py runs these same tests against a real
PostgreSQL server (it overrides the `db_url` fixture).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition
from alembic.config import Config
from alembic.script import ScriptDirectory

from processor.dev.kafka_local import free_port
from processor.sink.http import CSV_COLUMNS, build_app
from processor.sink.service import SinkStats, SinkTopics, rows_of
from processor.sink.store import (
    MIGRATIONS,
    Batch,
    Cursor,
    LedgerStore,
    database_url,
    decode_cursor,
    encode_cursor,
    entry_view,
)
from schemas.ledger_api import LedgerPage, UsageReport
from schemas.outputs import LedgerEntry
from tests.support.ledger_records import (
    T0,
    LedgerStream,
    funds_added_auto,
    recharge_failed,
    recharge_request,
)

TOPICS = SinkTopics("credits.ledger", "credits.recharge-requests", "credits.commands")
GROUP = "meter-ledger-sink"
METER = str(Path(sys.executable).with_name("meter"))


@dataclass
class Rec:
    offset: int
    value: bytes | None


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return database_url(None, tmp_path)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[LedgerStore]:
    s = await LedgerStore.open(database_url(db_url, Path()))
    try:
        yield s
    finally:
        await s.close()


def batch_of(
    entries: list[Any], partition: int = 0, first_offset: int = 0, topic: str = TOPICS.ledger
) -> Batch:
    records = {
        TopicPartition(topic, partition): [
            Rec(first_offset + i, e if isinstance(e, bytes) else e.to_json())
            for i, e in enumerate(entries)
        ]
    }
    return rows_of(records, TOPICS, SinkStats())


# ------------------------------------------------------------------ exactly once


async def test_a_batch_written_twice_is_in_the_database_once(store: LedgerStore) -> None:
    stream = LedgerStream(tenants=3)
    batch = batch_of(list(stream.entries(50)))
    await store.write(GROUP, batch)
    await store.write(GROUP, batch)
    assert await store.count("ledger") == 50
    totals = await store.totals()
    assert {t: total for t, (_, total) in totals.items()} == stream.balances
    assert await store.positions(GROUP, [(TOPICS.ledger, 0)]) == {(TOPICS.ledger, 0): 50}


async def test_positions_never_move_back(store: LedgerStore) -> None:
    stream = LedgerStream()
    await store.write(GROUP, batch_of(list(stream.entries(10)), first_offset=100))
    # A batch written late by a consumer that has lost the partition meanwhile.
    await store.write(GROUP, batch_of(list(stream.entries(10)), first_offset=20))
    assert await store.positions(GROUP, [(TOPICS.ledger, 0)]) == {(TOPICS.ledger, 0): 110}
    # Positions are per consumer group.
    assert await store.positions("other-group", [(TOPICS.ledger, 0)]) == {}


async def test_a_failed_batch_leaves_neither_rows_nor_positions(store: LedgerStore) -> None:
    stream = LedgerStream()
    good = batch_of(list(stream.entries(5)))
    await store.write(GROUP, good)
    bad = batch_of(list(stream.entries(5)), first_offset=5)
    # The last table of the transaction refuses a row: the whole batch rolls back.
    bad.outcomes.append({"command_id": "x", "tenant_id": None})
    with pytest.raises(sa.exc.IntegrityError):
        await store.write(GROUP, bad)
    assert await store.count("ledger") == 5
    assert await store.positions(GROUP, [(TOPICS.ledger, 0)]) == {(TOPICS.ledger, 0): 5}
    # The positions refused: the rows of the batch roll back with them.
    bad = batch_of(list(stream.entries(5)), first_offset=5)
    # assignment: a position the database refuses is the test
    bad.positions[(TOPICS.ledger, 0)] = None  # type: ignore[assignment]
    with pytest.raises(sa.exc.IntegrityError):
        await store.write(GROUP, bad)
    assert await store.count("ledger") == 5


async def test_migrating_again_changes_nothing(store: LedgerStore) -> None:
    await store.write(GROUP, batch_of(list(LedgerStream().entries(3))))
    await store.migrate()
    async with store.engine.connect() as conn:
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    # The head revision, whichever migration is the newest.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None and [tuple(v) for v in version] == [(head,)]
    assert await store.count("ledger") == 3


# ------------------------------------------------------------------------ money


async def test_money_is_stored_and_summed_exactly(store: LedgerStore) -> None:
    stream = LedgerStream(tenants=1)
    tenant = stream.tenant(0)
    big = Decimal("123456789012345678.123456789012")
    entries = [
        stream.entry(tenant, kind="credit", amount=big),
        stream.entry(tenant, kind="debit", amount=Decimal("0.1000")),
        stream.entry(tenant, kind="debit", amount=Decimal("0.2000")),
    ]
    await store.write(GROUP, batch_of(entries))
    rows, _ = await store.ledger_page(tenant)
    assert [r["amount"] for r in rows] == [Decimal("0.2000"), Decimal("0.1000"), big]
    assert [entry_view(r)["balance_after"] for r in rows] == [
        "123456789012345677.823456789012",
        "123456789012345678.023456789012",
        "123456789012345678.123456789012",
    ]
    ((_, total),) = (await store.totals()).values()
    assert str(total) == "123456789012345677.823456789012"
    (bucket,) = await store.usage(tenant, start=None, end=None, group_by="service")
    assert str(bucket.amount) == "0.3000"


async def test_an_entry_reads_back_as_the_contract_wrote_it(store: LedgerStore) -> None:
    stream = LedgerStream()
    debit = stream.entry(kind="debit")
    credit = stream.entry(kind="credit")
    await store.write(GROUP, batch_of([debit, credit]))
    for entry in (debit, credit):
        rows, _ = await store.ledger_page(entry.tenant_id, kinds=[entry.kind])
        assert [entry_view(r) for r in rows] == [json.loads(entry.to_json())]


# ---------------------------------------------------------------------- decoding


def test_records_that_are_no_contract_record_become_no_row_but_advance() -> None:
    stats = SinkStats()
    entry = LedgerStream().entry()
    records = {
        TopicPartition(TOPICS.ledger, 2): [
            Rec(7, b"not json"),
            Rec(8, None),
            Rec(9, entry.to_json()),
            Rec(10, b'{"type": "ledger_entry"}'),
        ]
    }
    batch = rows_of(records, TOPICS, stats)
    assert [r["entry_id"] for r in batch.ledger] == [entry.entry_id]
    assert batch.ledger[0]["source_partition"] == 2
    assert batch.ledger[0]["source_offset"] == 9
    assert batch.positions == {(TOPICS.ledger, 2): 11}
    assert (stats.records, stats.skipped) == (4, 3)


def test_a_bug_on_one_record_skips_it_and_the_sink_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = list(LedgerStream().entries(3))
    real = LedgerEntry.model_validate_json

    def flaky(value: bytes) -> LedgerEntry:
        if value == entries[1].to_json():
            raise TypeError("a bug")
        return real(value)

    monkeypatch.setattr(LedgerEntry, "model_validate_json", flaky)
    stats = SinkStats()
    records = {
        TopicPartition(TOPICS.ledger, 0): [Rec(i, e.to_json()) for i, e in enumerate(entries)]
    }
    batch = rows_of(records, TOPICS, stats)
    assert [r["entry_id"] for r in batch.ledger] == [entries[0].entry_id, entries[2].entry_id]
    assert batch.positions == {(TOPICS.ledger, 0): 3}
    assert stats.by_reason == {"internal_error": 1}


def test_recharge_requests_and_outcomes_become_rows() -> None:
    records = {
        TopicPartition(TOPICS.recharge_requests, 0): [
            Rec(0, recharge_request("acme", "r1", 1)),
            Rec(1, recharge_request("acme", "r1", 2)),
        ],
        TopicPartition(TOPICS.commands, 1): [
            Rec(0, funds_added_auto("acme", "c1", "r1", 2)),
            Rec(1, recharge_failed("acme", "c2", "r1", 1)),
            # Manual funds and settings are no recharge outcome.
            Rec(
                2,
                json.dumps(
                    {
                        "type": "funds_added",
                        "command_id": "c3",
                        "tenant_id": "acme",
                        "occurred_at": "2026-11-25T10:00:00Z",
                        "amount": "5.00",
                        "currency": "USD",
                        "source": "manual",
                    }
                ).encode(),
            ),
            Rec(3, b"{}"),
        ],
    }
    stats = SinkStats()
    batch = rows_of(records, TOPICS, stats)
    assert [(r["request_id"], r["attempt"]) for r in batch.requests] == [("r1", 1), ("r1", 2)]
    assert [(r["command_id"], r["type"], r["attempt"]) for r in batch.outcomes] == [
        ("c1", "funds_added", 2),
        ("c2", "recharge_failed", 1),
    ]
    assert batch.outcomes[0]["amount"] == Decimal("25.00")
    assert batch.outcomes[1]["reason"] == "card declined"
    assert batch.positions == {(TOPICS.recharge_requests, 0): 2, (TOPICS.commands, 1): 4}
    assert stats.skipped == 1


async def test_requests_are_keyed_by_request_and_attempt(store: LedgerStore) -> None:
    records = {
        TopicPartition(TOPICS.recharge_requests, 0): [
            Rec(0, recharge_request("acme", "r1", 1)),
            Rec(1, recharge_request("acme", "r1", 2)),
            Rec(2, recharge_request("acme", "r1", 2)),
        ],
        TopicPartition(TOPICS.commands, 0): [
            Rec(0, recharge_failed("acme", "c2", "r1", 1)),
            Rec(1, recharge_failed("acme", "c2", "r1", 1)),
        ],
    }
    await store.write(GROUP, rows_of(records, TOPICS, SinkStats()))
    assert await store.count("requests") == 2
    assert await store.count("outcomes") == 1


async def test_a_reason_with_a_nul_is_stored_not_a_poison_record(store: LedgerStore) -> None:
    """PostgreSQL refuses NUL in text; billing's free-text reason may carry one (JSON
    "\\u0000" is valid). Without care the batch fails again on every restart."""
    value = json.dumps(
        {
            "type": "recharge_failed",
            "command_id": "c-nul",
            "tenant_id": "acme",
            "occurred_at": "2026-11-25T10:00:00Z",
            "recharge_request_id": "r1",
            "reason": "declined\u0000 caf\u00e9",
        }
    ).encode()
    records = {TopicPartition(TOPICS.commands, 0): [Rec(0, value)]}
    await store.write(GROUP, rows_of(records, TOPICS, SinkStats()))
    async with store.engine.connect() as conn:
        reason = (await conn.execute(sa.text("SELECT reason FROM recharge_outcomes"))).scalar()
    assert reason == "declined\\u0000 caf\u00e9"


# ----------------------------------------------------------------------- queries


async def test_ledger_pages_go_newest_first_and_end(store: LedgerStore) -> None:
    stream = LedgerStream(tenants=2)
    entries = list(stream.entries(60))
    await store.write(GROUP, batch_of(entries))
    tenant = stream.tenant(0)
    mine = [e.entry_id for e in reversed(entries) if e.tenant_id == tenant]
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        rows, cursor = await store.ledger_page(tenant, before=cursor, limit=7)
        seen.extend(r["entry_id"] for r in rows)
        if cursor is None:
            break
    assert seen == mine
    debits, _ = await store.ledger_page(tenant, kinds=["debit"], limit=500)
    assert [r["entry_id"] for r in debits] == [
        e.entry_id for e in reversed(entries) if e.tenant_id == tenant and e.kind == "debit"
    ]


def test_cursors_are_opaque_and_checked() -> None:
    cursor = Cursor(3, 123456)
    assert decode_cursor(encode_cursor(cursor)) == cursor
    for bad in ("", "!!", "bm90IGEgY3Vyc29y", "x" * 65, "My54"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


async def test_usage_per_day_and_per_service(store: LedgerStore) -> None:
    stream = LedgerStream(tenants=1)
    tenant = stream.tenant(0)
    day = timedelta(days=1)
    entries = [
        stream.entry(tenant, kind="credit", amount=Decimal("100.0000"), occurred_at=T0),
        stream.entry(
            tenant, kind="debit", amount=Decimal("0.1320"), occurred_at=T0,
            cause_topic="usage.calls",
        ),
        stream.entry(
            tenant, kind="debit", amount=Decimal("0.0200"), occurred_at=T0 + day,
            cause_topic="usage.conferencing",
        ),
        stream.entry(
            tenant, kind="debit", amount=Decimal("1.0000"), occurred_at=T0 + 2 * day,
            cause_topic="usage.calls",
        ),
    ]  # fmt: skip
    await store.write(GROUP, batch_of(entries))
    by_day = await store.usage(tenant, start=T0, end=T0 + 2 * day, group_by="day")
    assert [(b.key, b.events, b.billed_seconds, str(b.amount)) for b in by_day] == [
        ("2026-11-25", 1, entries[1].billed_seconds, "0.1320"),
        ("2026-11-26", 1, entries[2].billed_seconds, "0.0200"),
    ]
    by_service = await store.usage(tenant, start=None, end=None, group_by="service")
    assert [(b.key, b.events, str(b.amount)) for b in by_service] == [
        ("calls", 2, "1.1320"),
        ("conferencing", 1, "0.0200"),
    ]


def test_database_urls() -> None:
    assert (
        database_url("postgresql://u:p@h:5432/db", Path()) == "postgresql+asyncpg://u:p@h:5432/db"
    )
    assert database_url("postgres://h/db", Path()) == "postgresql+asyncpg://h/db"
    assert database_url("sqlite:////x/y.db", Path()) == "sqlite+aiosqlite:////x/y.db"
    for bad in ("mysql://h/db", "nonsense"):
        with pytest.raises(ValueError):
            database_url(bad, Path())


# ----------------------------------------------------------------------- HTTP


@pytest.fixture
async def http(store: LedgerStore) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(store))) as client:
        yield client


async def test_http_ledger_pages(store: LedgerStore, http: TestClient[Any, Any]) -> None:
    stream = LedgerStream(tenants=1)
    entries = list(stream.entries(12))
    await store.write(GROUP, batch_of(entries))
    tenant = stream.tenant(0)
    got: list[dict[str, Any]] = []
    url = f"/tenants/{tenant}/ledger?limit=5"
    while True:
        resp = await http.get(url)
        assert resp.status == 200
        body = await resp.json()
        assert body["tenant_id"] == tenant
        LedgerPage.model_validate_json(await resp.read())  # what docs/openapi.json says
        got.extend(body["entries"])
        if body["next_cursor"] is None:
            break
        url = f"/tenants/{tenant}/ledger?limit=5&before={body['next_cursor']}"
    assert got == [json.loads(e.to_json()) for e in reversed(entries)]
    resp = await http.get(f"/tenants/{tenant}/ledger?kind=credit")
    kinds = {e["kind"] for e in (await resp.json())["entries"]}
    assert kinds <= {"credit"}
    resp = await http.get("/tenants/nobody/ledger")
    assert (resp.status, await resp.json()) == (
        200,
        {"tenant_id": "nobody", "entries": [], "next_cursor": None},
    )


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/tenants/a%20b/ledger", "invalid_tenant_id"),
        ("/tenants/" + "x" * 65 + "/usage", "invalid_tenant_id"),
        ("/tenants/a%2Fb/ledger.csv", "invalid_tenant_id"),
        ("/tenants/acme/ledger?limit=501", "invalid_query"),
        ("/tenants/acme/ledger?limit=0", "invalid_query"),
        ("/tenants/acme/ledger?limit=ten", "invalid_query"),
        ("/tenants/acme/ledger?kind=refund", "invalid_query"),
        ("/tenants/acme/ledger?before=nonsense", "invalid_cursor"),
        ("/tenants/acme/usage?group_by=hour", "invalid_query"),
        ("/tenants/acme/usage?from=yesterday", "invalid_query"),
        ("/tenants/acme/usage?from=2026-11-25T10:00:00", "invalid_query"),
        (
            "/tenants/acme/usage?from=2026-11-26T00:00:00Z&to=2026-11-25T00:00:00Z",
            "invalid_query",
        ),
    ],
)
async def test_http_refuses_bad_requests(http: TestClient[Any, Any], path: str, error: str) -> None:
    resp = await http.get(path)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == error
    assert body["tenant_id"] == (None if error == "invalid_tenant_id" else "acme")


async def test_http_usage(store: LedgerStore, http: TestClient[Any, Any]) -> None:
    stream = LedgerStream(tenants=1)
    tenant = stream.tenant(0)
    entries = [stream.entry(tenant, kind="debit", occurred_at=T0) for _ in range(3)]
    await store.write(GROUP, batch_of(entries))
    resp = await http.get(
        f"/tenants/{tenant}/usage?from=2026-11-25T00:00:00Z&to=2026-11-26T00:00:00%2B00:00"
    )
    assert resp.status == 200
    body = await resp.json()
    UsageReport.model_validate_json(await resp.read())  # what docs/openapi.json says
    assert body["group_by"] == "day"
    assert (body["from"], body["to"]) == ("2026-11-25T00:00:00Z", "2026-11-26T00:00:00Z")
    total = sum((e.amount for e in entries), Decimal(0))
    assert body["buckets"] == [
        {
            "key": "2026-11-25",
            "currency": "USD",
            "events": 3,
            "billed_seconds": sum(e.billed_seconds or 0 for e in entries),
            "amount": str(total),
        }
    ]


async def test_http_statement_csv(store: LedgerStore, http: TestClient[Any, Any]) -> None:
    stream = LedgerStream(tenants=1)
    tenant = stream.tenant(0)
    entries = [*stream.entries(2500)]
    # A cause id a spreadsheet would take for a formula is written as text.
    entries.append(
        stream.entry(tenant, kind="credit").model_copy(update={"cause_id": "=HYPERLINK(1)"})
    )
    await store.write(GROUP, batch_of(entries))
    resp = await http.get(f"/tenants/{tenant}/ledger.csv")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert tenant in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(await resp.text())))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == 1 + len(entries)
    assert [r[0] for r in rows[1:]] == [e.entry_id for e in entries]
    first = dict(zip(rows[0], rows[1], strict=True))
    e = entries[0]
    assert first["amount"] == str(e.amount)
    assert first["signed_amount"] == str(e.amount if e.kind == "credit" else -e.amount)
    assert first["balance_after"] == str(e.balance_after)
    assert first["occurred_at"] == e.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rows[-1][CSV_COLUMNS.index("cause_id")] == "'=HYPERLINK(1)"
    signed = sum(Decimal(r[CSV_COLUMNS.index("signed_amount")]) for r in rows[1:])
    assert (
        signed == stream.balances[tenant] == Decimal(rows[-1][CSV_COLUMNS.index("balance_after")])
    )


async def test_the_actor_is_stored_shown_and_the_csvs_last_column(
    store: LedgerStore, http: TestClient[Any, Any]
) -> None:
    stream = LedgerStream(tenants=1)
    tenant = stream.tenant(0)
    signed = stream.entry(tenant, kind="credit").model_copy(update={"actor": "alice@billing"})
    usage = stream.entry(tenant, kind="debit")
    await store.write(GROUP, batch_of([signed, usage]))
    page = await (await http.get(f"/tenants/{tenant}/ledger")).json()
    by_id = {e["entry_id"]: e for e in page["entries"]}
    assert by_id[signed.entry_id]["actor"] == "alice@billing"
    assert "actor" not in by_id[usage.entry_id]
    rows = list(
        csv.reader(io.StringIO(await (await http.get(f"/tenants/{tenant}/ledger.csv")).text()))
    )
    assert rows[0][-1] == "actor" and CSV_COLUMNS[-1] == "actor"
    assert [r[-1] for r in rows[1:]] == ["alice@billing", ""]


async def test_http_health(http: TestClient[Any, Any]) -> None:
    resp = await http.get("/health")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})


async def test_http_ready_once_partitions_are_assigned(store: LedgerStore) -> None:
    assigned = False
    async with TestClient(TestServer(build_app(store, lambda: assigned))) as client:
        resp = await client.get("/ready")
        assert resp.status == 503
        assigned = True
        resp = await client.get("/ready")
        assert (resp.status, await resp.json()) == (200, {"status": "ready"})


def test_the_sink_paths_are_in_the_openapi_document_with_their_server() -> None:
    from processor.http import openapi

    document = json.loads(openapi.render())
    for path in ("/ledger", "/usage", "/ledger.csv"):
        operation = document["paths"][f"/tenants/{{tenant_id}}{path}"]["get"]
        assert operation["servers"][0]["url"].endswith(":6070")
        assert {"200", "400"} <= set(operation["responses"])
    limit = next(
        p
        for p in document["paths"]["/tenants/{tenant_id}/ledger"]["get"]["parameters"]
        if p["name"] == "limit"
    )
    assert limit["schema"]["maximum"] == 500


def _meter(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("METER_", "KAFKA_"))}
    environ.update(env)
    return subprocess.run(
        [METER, *argv], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_database_url_of_another_kind_is_exit_2_and_its_password_hidden() -> None:
    result = _meter("ledger-sink", METER_DATABASE_URL="mysql://meter:s3cret@db/ledger")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert "METER_DATABASE_URL=(hidden) is not allowed: it must be a postgresql://" in (
        result.stderr
    )
    result = _meter("ledger-sink", METER_SINK_PORT="70000")
    assert result.returncode == 2
    assert "METER_SINK_PORT='70000' is not allowed: it must be at most 65535" in result.stderr


def test_an_unreachable_database_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = _meter(
        "ledger-sink",
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        METER_DATA_DIR=str(tmp_path),
        METER_DATABASE_URL=f"postgresql://meter:s3cret@127.0.0.1:{port}/ledger",
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert f"meter ledger-sink: database postgresql+asyncpg://meter:***@127.0.0.1:{port}" in (
        result.stderr
    )


def test_the_sink_imports_no_faust() -> None:
    code = (
        "import sys, processor.ops.cli, processor.sink.service, processor.sink.http, "
        "processor.kafka.topics, processor.kafka.options; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'mode')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


async def test_http_expiry_entries_count_negative(
    store: LedgerStore, http: TestClient[Any, Any]
) -> None:
    stream = LedgerStream(tenants=1)
    tenant = stream.tenant(0)
    credit = stream.entry(tenant, kind="credit", amount=Decimal("10.0000"))
    spent = stream.entry(tenant, kind="debit", amount=Decimal("2.5000"))
    expired = stream.expiry(credit, Decimal("7.5000"))
    await store.write(GROUP, batch_of([credit, spent, expired]))
    resp = await http.get(f"/tenants/{tenant}/ledger?kind=expiry")
    assert resp.status == 200
    assert [e["entry_id"] for e in (await resp.json())["entries"]] == [expired.entry_id]
    resp = await http.get(f"/tenants/{tenant}/ledger?kind=credit,expiry")
    assert len((await resp.json())["entries"]) == 2
    resp = await http.get(f"/tenants/{tenant}/ledger.csv")
    rows = list(csv.reader(io.StringIO(await resp.text())))
    last = dict(zip(rows[0], rows[-1], strict=True))
    assert (last["kind"], last["signed_amount"]) == ("expiry", "-7.5000")
    assert last["cause_id"] == credit.entry_id
    assert stream.balances[tenant] == Decimal("0.0000") == Decimal(last["balance_after"])
    signed = sum(Decimal(r[CSV_COLUMNS.index("signed_amount")]) for r in rows[1:])
    assert signed == stream.balances[tenant]
