"""`meter ledger-sink` on the real broker, into real SQLite and a real PostgreSQL server.

The sink runs as a subprocess, as an operator runs it; the ledger is produced by a
transactional producer (as the workers write it), with an aborted transaction whose
entries must never reach the database. The sink is `kill -9`ed mid-stream twice and
restarted; at the end the database holds each committed entry once (row count, ids
and every tenant's signed sum equal what a read_committed consumer reads from the
topic). The store's own tests (tests/unit/test_sink_store.py) run here again against
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from processor.dev.kafka_local import free_port
from processor.ops.reconcile import read_topic
from processor.sink.service import SinkTopics, group_id
from processor.sink.store import LedgerStore, database_url
from tests.integration.harness import METER, InFlight, eventually
from tests.support.ledger_records import (
    LedgerStream,
    funds_added_auto,
    recharge_failed,
    recharge_request,
)
from tests.support.postgres import LocalPostgres
from tests.support.values import present

# The store's tests, collected here again: `db_url` below points them at PostgreSQL.
from tests.unit.test_sink_store import (  # noqa: F401
    http,
    store,
    test_a_batch_written_twice_is_in_the_database_once,
    test_a_failed_batch_leaves_neither_rows_nor_positions,
    test_a_reason_with_a_nul_is_stored_not_a_poison_record,
    test_an_entry_reads_back_as_the_contract_wrote_it,
    test_http_ledger_pages,
    test_http_statement_csv,
    test_http_usage,
    test_ledger_pages_go_newest_first_and_end,
    test_migrating_again_changes_nothing,
    test_money_is_stored_and_summed_exactly,
    test_positions_never_move_back,
    test_requests_are_keyed_by_request_and_attempt,
    test_usage_per_day_and_per_service,
)
from tests.unit.test_sink_tenants import (  # noqa: F401
    tenants_http,
    tenants_store,
    test_a_batch_read_again_changes_no_tenant,
    test_recharge_requests_come_with_their_outcomes,
    test_the_operator_list_filters_by_status_alert_settings_and_answers,
    test_the_operator_list_pages_by_cursor,
)

PARTITIONS = 3


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


class Sink:
    """One `meter ledger-sink` process of a deployment."""

    def __init__(self, bootstrap: str, app_id: str, root: Path, database: str | None) -> None:
        self.port = free_port()
        self.log_path = root / "sink.log"
        self.env = dict(os.environ)
        self.env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            METER_APP_ID=app_id,
            METER_TOPIC_PREFIX=f"{app_id}.",
            METER_DATA_DIR=str(root / "data"),
            METER_SINK_PORT=str(self.port),
            METER_WEB_HOST="127.0.0.1",
        )
        self.env.pop("METER_DATABASE_URL", None)
        if database is not None:
            self.env["METER_DATABASE_URL"] = database
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [METER, "ledger-sink"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the sink exited {self.proc.returncode}:\n{self.log_tail()}")

    async def get(self, path: str) -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as resp,
        ):
            return resp.status, await resp.read()


async def _count(url: str) -> int:
    db = await LedgerStore.open(url, migrate=False)
    try:
        return await db.count("ledger")
    except Exception:  # the sink has not made the schema yet
        return 0
    finally:
        await db.close()


@pytest.fixture
async def deployment(kafka: Any) -> AsyncIterator[tuple[str, SinkTopics]]:
    app_id = f"sink-{uuid.uuid4().hex[:8]}"
    prefix = f"{app_id}."
    topics = SinkTopics(
        f"{prefix}credits.ledger",
        f"{prefix}credits.recharge-requests",
        f"{prefix}credits.commands",
        f"{prefix}credits.command-results",
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, PARTITIONS, 1) for t in topics.all()], validate_only=False
        )
    finally:
        await admin.close()
    yield app_id, topics


async def _produce_ledger(
    producer: AIOKafkaProducer,
    topic: str,
    stream: LedgerStream,
    count: int,
    per_tx: int,
    committed: list[str] | None = None,
    pause: float = 0.0,
) -> list[str]:
    """`count` entries in committed transactions of `per_tx`, `pause` seconds apart;
    their ids (also added to `committed`, if given, as each transaction commits: the
    entries sent so far)."""
    ids: list[str] = []
    for start in range(0, count, per_tx):
        await producer.begin_transaction()
        batch = []
        for entry in stream.entries(min(per_tx, count - start)):
            await producer.send(topic, entry.to_json(), key=entry.tenant_id.encode())
            batch.append(entry.entry_id)
        await producer.commit_transaction()
        ids.extend(batch)
        if committed is not None:
            committed.extend(batch)
        if pause:
            await asyncio.sleep(pause)  # pacing the load, not waiting for readiness
    return ids


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_kill_9_mid_stream_loses_and_doubles_nothing(
    kafka: Any,
    deployment: tuple[str, SinkTopics],
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    app_id, topics = deployment
    given = None if backend == "sqlite" else request.getfixturevalue("postgres").create_database()
    url = database_url(given, tmp_path / "data")
    stream = LedgerStream(tenants=40, prefix=f"{app_id}.", seed=21)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, transactional_id=f"{app_id}-test", linger_ms=5
    )
    await producer.start()
    try:
        await _produce_ledger(producer, topics.ledger, stream, 20_000, per_tx=1000)
        # An aborted transaction: a read_committed sink never sees these.
        aborted = LedgerStream(tenants=5, prefix=f"{app_id}.", seed=99)
        await producer.begin_transaction()
        aborted_ids = []
        for entry in aborted.entries(300):
            entry = entry.model_copy(update={"entry_id": f"aborted:{entry.entry_id}"})
            aborted_ids.append(entry.entry_id)
            await producer.send(topics.ledger, entry.to_json(), key=entry.tenant_id.encode())
        await producer.abort_transaction()
        # Recharge requests (one re-sent) and billing's answers (one re-sent, one
        # manual top-up, which is no recharge outcome).
        await producer.begin_transaction()
        for i in range(30):
            value = recharge_request(stream.tenant(i), f"req-{i}", 1 + i % 2)
            await producer.send(topics.recharge_requests, value, key=stream.tenant(i).encode())
        await producer.send(topics.recharge_requests, recharge_request(stream.tenant(0), "req-0"))
        for i in range(10):
            t = stream.tenant(i)
            await producer.send(topics.commands, funds_added_auto(t, f"fa-{i}", f"req-{i}"))
            await producer.send(topics.commands, recharge_failed(t, f"rf-{i}", f"req-{i}"))
        await producer.send(topics.commands, recharge_failed(stream.tenant(0), "rf-0", "req-0"))
        await producer.commit_transaction()

        sink = Sink(kafka.bootstrap, app_id, tmp_path, given).start()

        async def reached(n: int) -> bool:
            sink.alive()
            return await _count(url) >= n

        # kill -9 mid-stream, twice; the second time while new entries arrive.
        await eventually(lambda: reached(1000), 90, 0.02, "the sink's first rows")
        sink.kill()
        at_kill = await _count(url)
        assert 0 < at_kill < 20_000, at_kill
        # 20,000 entries committed before the sink started, 10,000 more to come.
        first = InFlight("first kill", done=at_kill, sent=20_000, total=30_000).check()
        sent: list[str] = []
        more = asyncio.create_task(
            # Paced over ~20 s, so that the second kill lands while entries still arrive
            # (unpaced, all 10,000 were in before the sink had restarted).
            _produce_ledger(
                producer, topics.ledger, stream, 10_000, per_tx=250, committed=sent, pause=0.5
            )
        )
        sink = Sink(kafka.bootstrap, app_id, tmp_path, given).start()
        await eventually(lambda: reached(at_kill + 2000), 90, 0.02, "progress after a restart")
        sent_at_kill = 20_000 + len(sent)
        sink.kill()
        second = InFlight(
            "second kill",
            done=await _count(url),
            sent=sent_at_kill,
            total=30_000,
            sent_after=20_000 + len(sent),
        ).check()
        print(f"at the kills: {first}; {second}")
        assert await _count(url) < 30_000
        await more
        sink = Sink(kafka.bootstrap, app_id, tmp_path, given).start()

        topic_ids = [
            json.loads(present(r.value))["entry_id"]
            for r in await read_topic(kafka.bootstrap, topics.ledger)
        ]
        assert len(topic_ids) == len(set(topic_ids)) == 30_000
        await eventually(lambda: reached(30_000), 120, 0.2, "every entry in the database")

        db = await LedgerStore.open(url, migrate=False)
        try:
            # Nothing doubled, nothing missing, nothing aborted: the same ids, the same sums.
            assert await db.count("ledger") == 30_000
            totals = await db.totals()
            assert {t: total for t, (_, total) in totals.items()} == stream.balances
            ids: set[str] = set()
            for tenant in totals:
                async for rows in db.statement(tenant):
                    ids.update(r["entry_id"] for r in rows)
            assert ids == set(topic_ids)
            assert not ids & set(aborted_ids)
            assert await db.count("requests") == 30
            assert await db.count("outcomes") == 20
        finally:
            await db.close()

        # The query API of the running sink answers from the same rows.
        tenant = stream.tenant(3)
        status, body = await sink.get(f"/tenants/{tenant}/ledger.csv")
        assert status == 200
        lines = body.decode().splitlines()
        signed = sum(Decimal(line.split(",")[5]) for line in lines[1:])
        assert signed == stream.balances[tenant]
        assert len(lines) - 1 == totals[tenant][0]
        status, body = await sink.get(f"/tenants/{tenant}/ledger?limit=500&kind=credit,debit")
        assert status == 200
        first = json.loads(body)["entries"][0]
        assert Decimal(first["balance_after"]) == stream.balances[tenant]
        assert sink.stop() == 0, sink.log_tail()
    finally:
        await producer.stop()


async def test_the_sink_resumes_from_the_database_not_from_kafka_offsets(
    kafka: Any, deployment: tuple[str, SinkTopics], tmp_path: Path
) -> None:
    """Kafka's committed offsets of the sink's group are past everything; the database
    is empty. The sink must load every entry (it seeks to the database's positions)."""
    app_id, topics = deployment
    stream = LedgerStream(tenants=5, prefix=f"{app_id}.", seed=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, transactional_id=f"{app_id}-test"
    )
    await producer.start()
    try:
        await _produce_ledger(producer, topics.ledger, stream, 500, per_tx=100)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=group_id(app_id), enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topics.ledger, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: OffsetAndMetadata(ends[tp], "") for tp in tps})
    finally:
        await consumer.stop()

    url = database_url(None, tmp_path / "data")
    sink = Sink(kafka.bootstrap, app_id, tmp_path, None).start()
    try:

        async def loaded() -> bool:
            sink.alive()
            return await _count(url) == 500

        await eventually(loaded, 90, 0.2, "all 500 entries")
    finally:
        assert sink.stop() == 0, sink.log_tail()


async def test_two_sinks_share_the_partitions_and_one_is_killed(
    kafka: Any, deployment: tuple[str, SinkTopics], tmp_path: Path, postgres: LocalPostgres
) -> None:
    """Two sinks of one deployment into one PostgreSQL database split the partitions;
    one is `kill -9`ed mid-stream, the other takes its partitions over from the
    database's positions: every entry once."""
    app_id, topics = deployment
    given = postgres.create_database()
    url = database_url(given, tmp_path)
    stream = LedgerStream(tenants=30, prefix=f"{app_id}.", seed=5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Sink(kafka.bootstrap, app_id, tmp_path / "a", given).start()
    second = Sink(kafka.bootstrap, app_id, tmp_path / "b", given).start()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, transactional_id=f"{app_id}-test", linger_ms=5
    )
    await producer.start()
    try:

        async def both_ready() -> bool:
            first.alive()
            second.alive()
            answers = []
            for sink in (first, second):
                try:
                    answers.append((await sink.get("/ready"))[0])
                except aiohttp.ClientError:
                    return False
            return answers == [200, 200]

        await eventually(both_ready, 90, 0.2, "both sinks with partitions")
        # The load comes in three parts: a steady start, one large transaction, and a
        # steady rest. The kill lands as soon as the large transaction commits, so its
        # entries are in flight whatever the sinks' speed that day.
        sent = await _produce_ledger(producer, topics.ledger, stream, 3_000, per_tx=250)

        async def reached(n: int) -> bool:
            first.alive()
            return await _count(url) >= n

        await eventually(lambda: reached(1000), 90, 0.02, "the first rows")
        sent += await _produce_ledger(producer, topics.ledger, stream, 5_000, per_tx=5_000)
        first.kill()
        # The surviving sink writes on after the kill: the rows read now are at least
        # those written before it.
        done = await _count(url)
        killed = InFlight("first sink killed", done=done, sent=len(sent), total=20_000).check()
        print(f"at the kill: {killed}")
        await _produce_ledger(producer, topics.ledger, stream, 12_000, per_tx=250)

        async def all_in() -> bool:
            second.alive()
            return await _count(url) == 20_000

        await eventually(all_in, 120, 0.2, "every entry, by the surviving sink")
        db = await LedgerStore.open(url, migrate=False)
        try:
            totals = await db.totals()
        finally:
            await db.close()
        assert {t: total for t, (_, total) in totals.items()} == stream.balances
        assert sum(n for n, _ in totals.values()) == 20_000
    finally:
        await producer.stop()
        assert second.stop() == 0, second.log_tail()
