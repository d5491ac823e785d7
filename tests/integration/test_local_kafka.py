"""The local Kafka (4.4, KRaft) does everything the processor needs, via aiokafka 0.14.

Also covers LocalKafka's own lifecycle: restart on the same data, recovery after
SIGKILL, and the detached background mode the CLI uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import OffsetAndMetadata

from processor.dev import kafka_local
from processor.dev.kafka_local import LocalKafka, LocalKafkaError
from processor.dev.simulator import wait_for_topics
from processor.kafka import glue
from tests.integration.conftest import EXTERNAL_ENV, KafkaEndpoint, starts_own_brokers

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPIC_ALREADY_EXISTS = 36
# Generous: the broker is shared with other work on small CI machines.
READ_TIMEOUT = 30.0


# ----------------------------------------------------------------------------- helpers


@asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topics(bootstrap: str, *topics: NewTopic) -> None:
    async with admin_client(bootstrap) as admin:
        response = await admin.create_topics(list(topics))
    errors = {t[0]: t[1:] for t in response.topic_errors if t[1] != 0}
    assert not errors, errors
    # KRaft answers CreateTopics once the controller has the topics; the broker's
    # metadata cache learns of them a moment later, and until then describes them
    # with no partitions.
    missing = await wait_for_topics(
        bootstrap, (t.name for t in topics), wait_seconds=READ_TIMEOUT, poll=0.05
    )
    assert not missing, f"no metadata for {missing}"


@asynccontextmanager
async def producer(bootstrap: str, **config: object) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **config)
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


async def read_to_end(
    bootstrap: str,
    topic: str,
    *,
    isolation_level: str = "read_uncommitted",
    within: float = READ_TIMEOUT,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record a fresh consumer sees from the start of `topic` to its current end.

    "End" is the high watermark even for read_committed: such a consumer only gets
    there once every transaction below it is decided (commit markers are written
    asynchronously after commit_transaction returns), so stopping there proves that
    anything not returned (aborted records) is invisible, not merely late.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + within
        partitions: set[int] | None = None
        while not partitions:  # metadata for a just-created topic may lag a moment
            assert time.monotonic() < deadline, f"no metadata for {topic}"
            cluster = await glue.fetch_metadata(consumer)
            partitions = cluster.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await high_watermarks(bootstrap, tps)

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        records: list[ConsumerRecord[bytes, bytes]] = []
        while await behind():
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            batch = await consumer.getmany(*tps, timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def high_watermarks(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    # A read_uncommitted consumer's end offsets are the high watermarks.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


def values(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[bytes]:
    return [r.value for r in records if r.value is not None]


# ------------------------------------------------------------------ what the processor uses


async def test_admin_creates_topics_with_partitions(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    plain, changelog = topic_name("plain"), topic_name("changelog")
    await create_topics(
        kafka.bootstrap,
        NewTopic(plain, 6, 1),
        # faust's table changelogs are compacted topics
        NewTopic(changelog, 3, 1, topic_configs={"cleanup.policy": "compact"}),
    )
    async with admin_client(kafka.bootstrap) as admin:
        described = await admin.describe_topics([plain, changelog])
        assert {t["topic"]: len(t["partitions"]) for t in described} == {plain: 6, changelog: 3}

        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, changelog, {"cleanup.policy": None})]
        )
        entries = {e[0]: e[1] for r in responses for res in r.resources for e in res[4]}
        assert entries["cleanup.policy"] == "compact"

        # Declaring an existing topic again is reported per topic, not raised.
        again = await admin.create_topics([NewTopic(plain, 6, 1)])
        assert [t[1] for t in again.topic_errors] == [TOPIC_ALREADY_EXISTS]


async def test_auto_topic_creation_is_disabled(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    if isinstance(kafka, LocalKafka):
        assert kafka.server_properties()["auto.create.topics.enable"] == "false"
    missing = topic_name("never-created")
    async with admin_client(kafka.bootstrap) as admin:
        # A metadata request for it (what a producer sends) must not create it.
        await admin.describe_topics([missing])
        assert missing not in await admin.list_topics()


async def test_keyed_produce_and_consume(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("")
    await create_topics(kafka.bootstrap, NewTopic(topic, 4, 1))
    keys = [f"account-{i}".encode() for i in range(5)]
    sent: list[tuple[bytes, bytes]] = [(keys[i % 5], f"{i}".encode()) for i in range(40)]
    async with producer(kafka.bootstrap) as prod:
        partition_of: dict[bytes, set[int]] = {}
        for key, value in sent:
            meta = await prod.send_and_wait(topic, value, key=key)
            partition_of.setdefault(key, set()).add(meta.partition)
    # Same key, same partition: what per-account ordering rests on.
    assert all(len(parts) == 1 for parts in partition_of.values())

    records = await read_to_end(kafka.bootstrap, topic)
    assert len(records) == len(sent)
    for key in keys:
        got = [r.value for r in records if r.key == key]
        assert got == [v for k, v in sent if k == key]  # in order, per key


async def test_idempotent_producer(kafka: KafkaEndpoint, topic_name: Callable[[str], str]) -> None:
    topic = topic_name("")
    await create_topics(kafka.bootstrap, NewTopic(topic, 2, 1))
    async with producer(kafka.bootstrap, enable_idempotence=True) as prod:
        futures = [await prod.send(topic, f"{i}".encode(), key=b"k") for i in range(50)]
        await asyncio.gather(*futures)
    assert values(await read_to_end(kafka.bootstrap, topic)) == [f"{i}".encode() for i in range(50)]


async def test_transactions_commit_visible_abort_invisible(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("")
    await create_topics(kafka.bootstrap, NewTopic(topic, 3, 1))
    async with producer(
        kafka.bootstrap, transactional_id=topic_name("txn"), enable_idempotence=True
    ) as prod:
        async with prod.transaction():
            for key in (b"a", b"b", b"c"):
                await prod.send(topic, b"committed-1", key=key)
        await prod.begin_transaction()
        for key in (b"a", b"b", b"c"):
            await prod.send(topic, b"aborted", key=key)
        await prod.abort_transaction()
        async with prod.transaction():
            await prod.send(topic, b"committed-2", key=b"a")

    committed = values(await read_to_end(kafka.bootstrap, topic, isolation_level="read_committed"))
    assert sorted(committed) == [b"committed-1"] * 3 + [b"committed-2"]
    # The aborted records are in the log, only hidden: read_uncommitted does see them.
    everything = values(await read_to_end(kafka.bootstrap, topic))
    assert everything.count(b"aborted") == 3


async def test_consume_transform_produce_commits_offsets_in_transaction(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    """faust's exactly-once path: output records and input offsets in one transaction."""
    source, sink, group = topic_name("in"), topic_name("out"), topic_name("group")
    await create_topics(kafka.bootstrap, NewTopic(source, 2, 1), NewTopic(sink, 2, 1))
    async with producer(kafka.bootstrap) as prod:
        for i in range(10):
            await prod.send_and_wait(source, f"{i}".encode(), key=f"{i % 3}".encode())

    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        seen: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + READ_TIMEOUT
        while len(seen) < 10:
            assert time.monotonic() < deadline, f"consumed only {len(seen)} of 10"
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                seen.extend(recs)
        offsets = {
            TopicPartition(source, p): OffsetAndMetadata(
                max(r.offset for r in seen if r.partition == p) + 1, ""
            )
            for p in {r.partition for r in seen}
        }
        eos = producer(kafka.bootstrap, transactional_id=topic_name("eos"))
        async with eos as prod, prod.transaction():
            for r in seen:
                await prod.send(sink, (r.value or b"") + b"!", key=r.key)
            await prod.send_offsets_to_transaction(offsets, group)
        # Offsets committed in a transaction become visible once the commit marker
        # reaches __consumer_offsets, which happens just after commit returns.
        deadline = time.monotonic() + READ_TIMEOUT
        for tp, oam in offsets.items():
            while (committed := await consumer.committed(tp)) != oam.offset:
                assert committed is None, f"{tp}: committed {committed}, want {oam.offset}"
                assert time.monotonic() < deadline, f"{tp}: offset commit never became visible"
                await asyncio.sleep(0.05)  # poll interval
    finally:
        await consumer.stop()
    out = values(await read_to_end(kafka.bootstrap, sink, isolation_level="read_committed"))
    assert sorted(out) == sorted(f"{i}!".encode() for i in range(10))


async def test_consumer_group_commit_and_resume(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    topic, group = topic_name(""), topic_name("group")
    await create_topics(kafka.bootstrap, NewTopic(topic, 3, 1))

    def group_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Below Kafka's default 6 s floor: group.min.session.timeout.ms allows it.
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )

    async def consume(consumer: AIOKafkaConsumer, count: int) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + READ_TIMEOUT
        while len(got) < count:
            assert time.monotonic() < deadline, f"consumed only {len(got)} of {count}"
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(values(recs))
        return got

    async with producer(kafka.bootstrap) as prod:
        for i in range(6):
            await prod.send_and_wait(topic, f"first-{i}".encode(), key=f"{i}".encode())
    first = group_consumer()
    await first.start()
    try:
        assert sorted(await consume(first, 6)) == [f"first-{i}".encode() for i in range(6)]
        await first.commit()
    finally:
        await first.stop()

    async with producer(kafka.bootstrap) as prod:
        for i in range(3):
            await prod.send_and_wait(topic, f"second-{i}".encode(), key=f"{i}".encode())
    second = group_consumer()
    await second.start()
    try:
        # Resumes at the committed offsets: only what came after, nothing replayed.
        assert sorted(await consume(second, 3)) == [f"second-{i}".encode() for i in range(3)]
        assert (await second.getmany(timeout_ms=1000)) == {}
    finally:
        await second.stop()


# -------------------------------------------------------------------- LocalKafka lifecycle


async def produce_one(bootstrap: str, topic: str, value: bytes) -> None:
    async with producer(bootstrap) as prod:
        await prod.send_and_wait(topic, value, key=b"k")


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """One broker for the restart tests: never the session broker, which must stay up.

    Shared by the tests below to save a JVM start each; every test starts it itself
    (a no-op when running), so one test leaving it stopped does not break the next.
    """
    if os.environ.get(EXTERNAL_ENV):
        pytest.skip(f"{EXTERNAL_ENV} is set: this session starts no brokers of its own")
    broker = LocalKafka(tmp_path_factory.mktemp("private-kafka"))
    yield broker
    broker.kill()  # throwaway data: no need for a graceful shutdown


async def test_restart_keeps_data(
    private_kafka: LocalKafka, topic_name: Callable[[str], str]
) -> None:
    broker = private_kafka
    await broker.astart()
    bootstrap = broker.bootstrap
    topic = topic_name("")
    await create_topics(bootstrap, NewTopic(topic, 2, 1))
    await produce_one(bootstrap, topic, b"before-restart")

    await broker.astop()
    assert not broker.is_running()
    await broker.astart()

    assert broker.bootstrap == bootstrap  # clients reconnect to the same address
    await produce_one(bootstrap, topic, b"after-restart")
    assert values(await read_to_end(bootstrap, topic)) == [b"before-restart", b"after-restart"]


async def test_hard_kill_then_start_recovers(
    private_kafka: LocalKafka, topic_name: Callable[[str], str]
) -> None:
    broker = private_kafka
    await broker.astart()
    topic = topic_name("")
    await create_topics(broker.bootstrap, NewTopic(topic, 1, 1))
    await produce_one(broker.bootstrap, topic, b"acked-before-kill")
    pid = broker.pid
    assert pid is not None

    broker.kill()
    assert not broker.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(LocalKafkaError):
        await kafka_local.wait_ready(broker.bootstrap, timeout=0.5)

    # No clean-shutdown marker: the broker recovers its logs, and the controller only
    # accepts the new incarnation once the killed one's session has expired.
    await broker.arestart()
    await produce_one(broker.bootstrap, topic, b"after-recovery")
    assert values(await read_to_end(broker.bootstrap, topic)) == [
        b"acked-before-kill",
        b"after-recovery",
    ]


async def test_wait_ready_fails_fast_with_clear_error() -> None:
    port = kafka_local.free_port()
    started = time.monotonic()
    with pytest.raises(LocalKafkaError, match=rf"127\.0\.0\.1:{port}.*did not answer"):
        await kafka_local.wait_ready(f"127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - started < 5


def test_start_failure_reports_broker_log(
    local_kafka_factory: Callable[..., LocalKafka],
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # An explicit port is never swapped for another one, so this start must fail.
        # (The controller port: it is bound first, so the JVM gives up sooner.)
        broker = local_kafka_factory(controller_port=taken)
        started = time.monotonic()
        with pytest.raises(LocalKafkaError) as info:
            broker.start(timeout=45)
    message = str(info.value)
    assert "exited" in message  # noticed the dead JVM instead of waiting out the timeout
    assert time.monotonic() - started < 40
    assert str(broker.log_file) in message
    assert "Address already in use" in message  # the tail names the actual problem
    assert not broker.is_running()


@starts_own_brokers
def test_background_broker_outlives_its_starter(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert kafka_local.status(state_dir) is None
    # Started by a separate process that then exits, as `meter kafka start` would.
    starter = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from processor.dev import kafka_local; "
            "print(kafka_local.start_background(Path(sys.argv[1])))",
            str(state_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert starter.returncode == 0, starter.stderr
    bootstrap = starter.stdout.strip().splitlines()[-1]
    first = kafka_local.status(state_dir)
    try:
        assert first is not None
        assert first["running"] and first["answering"]
        assert first["bootstrap"] == bootstrap
        assert Path(first["data_dir"]) == state_dir.resolve()
        # Idempotent: a second start finds the running broker instead of starting one.
        assert kafka_local.start_background(state_dir) == bootstrap
        second = kafka_local.status(state_dir)
        assert second is not None and second["pid"] == first["pid"]
        assert kafka_local.stop_background(state_dir)
        assert kafka_local.status(state_dir) is None
        assert not kafka_local.stop_background(state_dir)
    finally:
        leftover = kafka_local.status(state_dir)
        if leftover is not None and leftover["running"]:  # never leave a detached JVM behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leftover["pid"], signal.SIGKILL)


def test_server_properties_fit_a_single_local_broker(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path, extra_properties={"log.retention.hours": "1"})
    props = broker.server_properties()
    listeners: Sequence[str] = props["listeners"].split(",")
    assert all("//127.0.0.1:" in listener for listener in listeners)  # loopback only
    assert broker.port != broker.controller_port
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["log.retention.hours"] == "1"


# ----------------------------------------------------------------------- jars and tools


@starts_own_brokers
def test_ensure_jars_is_cheap_once_fetched() -> None:
    libs = kafka_local.ensure_jars()  # the session broker already needed them
    started = time.monotonic()
    assert kafka_local.ensure_jars() == libs
    assert time.monotonic() - started < 1  # no Maven run when nothing changed
    assert (libs / ".complete.json").is_file()
    assert any(p.name.startswith("kafka_2.13-4.") for p in libs.glob("*.jar"))


@starts_own_brokers
def test_libs_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    libs = kafka_local.ensure_jars()
    monkeypatch.setenv(kafka_local.LIBS_ENV, str(libs))
    assert kafka_local.ensure_jars(tmp_path) == libs  # no pom needed, no Maven run
    monkeypatch.setenv(kafka_local.LIBS_ENV, str(tmp_path))
    with pytest.raises(LocalKafkaError, match=kafka_local.LIBS_ENV):
        kafka_local.ensure_jars()


def fake_checkout(tmp_path: Path) -> Path:
    """A repo root whose jars were never fetched."""
    pom = tmp_path / "repo" / "deploy" / "kafka" / "pom.xml"
    pom.parent.mkdir(parents=True)
    pom.write_text(REPO_ROOT.joinpath("deploy", "kafka", "pom.xml").read_text())
    return tmp_path / "repo"


@starts_own_brokers
def test_missing_maven_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(kafka_local.java_executable())
    monkeypatch.delenv(kafka_local.LIBS_ENV, raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(LocalKafkaError, match=r"Maven \(`mvn`\)"):
        kafka_local.ensure_jars(fake_checkout(tmp_path))


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(kafka_local.LIBS_ENV, raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalKafkaError, match="Java 17"):
        kafka_local.ensure_jars(fake_checkout(tmp_path))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))
    with pytest.raises(LocalKafkaError, match="JAVA_HOME"):
        kafka_local.java_executable()
