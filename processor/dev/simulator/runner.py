"""The simulator's Kafka I/O: the topics' existence, producing traffic, answering billing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient

from processor.dev.simulator.billing import BillingBook
from processor.dev.simulator.config import SimulatorConfig, SimulatorStats
from processor.dev.simulator.contract import (
    ALERTS,
    COMMANDS,
    RECHARGE_REQUESTS,
    SIMULATOR_TOPICS,
    rfc3339,
    utcnow,
)
from processor.dev.simulator.events import OutRecord, encode
from processor.dev.simulator.gate import CallGate
from processor.dev.simulator.tenants import TenantProfile, generate_tenants
from processor.dev.simulator.traffic import DuplicateScheduler, TokenBucket, TrafficGenerator

# The simulator's one logger, named for the package as it always was.
log = logging.getLogger("processor.dev.simulator")


async def wait_for_topics(
    bootstrap: str,
    topics: Iterable[str],
    wait_seconds: float,
    poll: float = 1.0,
    **client_options: Any,
) -> set[str]:
    """Wait until ``topics`` exist; returns those still missing after ``wait_seconds``.

    Asks for *all* topics' metadata: a metadata request naming a topic would make a
    broker with auto.create.topics.enable create it with the default partitions.
    """
    wanted = set(topics)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **client_options)
    await client.bootstrap()
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            cluster = await client.fetch_all_metadata()
            missing = {t for t in wanted if not cluster.partitions_for_topic(t)}
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(poll)
    finally:
        await client.close()


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(64)
        # Traffic and billing get separate streams so billing's pace (set by the
        # processor's requests) does not change the traffic a seed produces.
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self._billing_rng = random.Random(seed ^ 0x5EED)  # noqa: S311
        self.run_tag = uuid.uuid4().hex[:8]
        tenants = generate_tenants(config.tenants, self._rng)
        self.gate = CallGate(t.tenant_id for t in tenants) if config.gate_calls else None
        self.traffic = TrafficGenerator(
            config,
            self._rng,
            self.run_tag,
            tenants=tenants,
            allows=self.gate.allows if self.gate is not None else None,
        )
        self.billing = BillingBook(failure_ratio=config.failure_ratio, rng=self._billing_rng)
        self.duplicates = DuplicateScheduler(config.duplicate_ratio, self._rng)
        self.stats = SimulatorStats()
        self._answers: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self._billing_ready = asyncio.Event()
        self._gate_ready = asyncio.Event()
        self._error_logged = 0

    @property
    def tenants(self) -> list[TenantProfile]:
        return self.traffic.tenants

    async def run(self) -> None:
        cfg = self.config
        if cfg.topic_wait_seconds is not None:
            gated = (ALERTS,) if self.gate is not None else ()
            wanted = [cfg.topic(t) for t in (*SIMULATOR_TOPICS, *gated)]
            missing = await wait_for_topics(
                cfg.bootstrap, wanted, cfg.topic_wait_seconds, **cfg.client_options
            )
            if missing:
                raise RuntimeError(
                    f"topics {sorted(missing)} do not exist after {cfg.topic_wait_seconds}s;"
                    " start the processor first (it creates them), or skip this check with"
                    " --topic-wait -1 (topic_wait_seconds=None)"
                )
        producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            client_id="credits-meter-simulator",
            acks="all",
            # Only deliberate duplicates: producer retries must not add their own.
            enable_idempotence=True,
            linger_ms=5,
            **cfg.client_options,
        )
        consumer = AIOKafkaConsumer(
            cfg.topic(RECHARGE_REQUESTS),
            bootstrap_servers=cfg.bootstrap,
            client_id="credits-meter-simulator-billing",
            group_id=cfg.group_id,
            auto_offset_reset="latest",
            enable_auto_commit=True,
            # A transactional processor may abort a request; billing must not pay it.
            isolation_level="read_committed",
            **cfg.client_options,
        )
        # The gate reads every status alert from the start, outside any group: it
        # needs each tenant's newest status, not a share of the partitions.
        alerts = (
            AIOKafkaConsumer(
                cfg.topic(ALERTS),
                bootstrap_servers=cfg.bootstrap,
                client_id="credits-meter-simulator-telephony",
                group_id=None,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                **cfg.client_options,
            )
            if self.gate is not None
            else None
        )
        await producer.start()
        try:
            await consumer.start()
            try:
                if alerts is not None:
                    await alerts.start()
                try:
                    await self._run_tasks(producer, consumer, alerts)
                finally:
                    if alerts is not None:
                        await alerts.stop()
            finally:
                await consumer.stop()
        finally:
            with contextlib.suppress(Exception):
                await producer.flush()
            await producer.stop()
            log.info("simulator stopped: %s", self.stats.summary())

    async def _run_tasks(
        self,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        alerts: AIOKafkaConsumer | None,
    ) -> None:
        billing_in = asyncio.create_task(self._billing_consume(consumer), name="sim-billing-in")
        billing_out = asyncio.create_task(self._billing_answer(producer), name="sim-billing-out")
        traffic = asyncio.create_task(self._traffic(producer), name="sim-traffic")
        tasks = [billing_in, billing_out, traffic]
        if alerts is not None and self.gate is not None:
            following = self._follow_alerts(alerts, self.gate)
            tasks.append(asyncio.create_task(following, name="sim-gate"))
        else:
            self._gate_ready.set()
        if self.config.stats_log_seconds:
            tasks.append(asyncio.create_task(self._log_stats(self.config.stats_log_seconds)))
        try:
            done, _ = await asyncio.wait(
                tasks, timeout=self.config.duration_seconds, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                task.result()  # re-raise a crashed loop
            # Duration elapsed: stop making traffic, but answer the requests billing
            # already accepted, or they would sit unanswered until the processor's
            # recharge timeout.
            traffic.cancel()
            billing_in.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._answers.join(), timeout=self.config.billing_delay_seconds + 10
                )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, producer: AIOKafkaProducer, record: OutRecord) -> None:
        # send() only enqueues into the batch; delivery is checked in a callback so
        # the loop never waits for one round trip per record.
        fut = await producer.send(
            self.config.topic(record.topic), value=record.value, key=record.key
        )
        fut.add_done_callback(self._on_delivery)

    def _on_delivery(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.stats.send_errors += 1
            if self._error_logged < 10:
                self._error_logged += 1
                log.warning("simulator: delivery failed: %r", exc)

    async def _traffic(self, producer: AIOKafkaProducer) -> None:
        cfg = self.config
        # Billing must be listening before the first request can exist: it starts
        # from the latest offset and would miss earlier ones.
        await _ready_or_warn(
            self._billing_ready, "billing consumer got no partitions yet; starting anyway"
        )
        # Tenants exhausted before this run must not get calls from its first tick.
        await _ready_or_warn(
            self._gate_ready, "the call gate has not read credits.alerts yet; calling anyway"
        )
        if cfg.setup:
            for record in self.traffic.setup_records(utcnow()):
                await self._send(producer, record)
                self.stats.commands_sent += 1
        bucket = TokenBucket(cfg.rate_per_second)
        admin_rate = cfg.admin_actions_per_minute / 60.0
        next_admin = (
            time.monotonic() + self._rng.expovariate(admin_rate) if admin_rate > 0 else None
        )
        while True:
            n = await bucket.take()
            now = utcnow()
            mono = time.monotonic()
            for _ in range(n):
                sent, kind = self.traffic.next_traffic(now)
                if sent is None:
                    self.stats.calls_blocked += 1
                    continue
                await self._send(producer, sent)
                if kind == "garbage":
                    self.stats.garbage_sent += 1
                else:
                    self.stats.usage_sent += 1
                    if kind == "miskeyed":
                        self.stats.miskeyed_sent += 1
                    self.duplicates.offer(sent, mono)
            for record in self.duplicates.due(mono):
                await self._send(producer, record)
                self.stats.duplicates_sent += 1
            if next_admin is not None and mono >= next_admin:
                await self._send(producer, self.traffic.admin_action(now))
                self.stats.commands_sent += 1
                next_admin = mono + self._rng.expovariate(admin_rate)

    async def _billing_consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            if not self._billing_ready.is_set() and consumer.assignment():
                # Resolve "latest" now, so requests produced from here on are seen.
                for tp in consumer.assignment():
                    await consumer.position(tp)
                self._billing_ready.set()
            for messages in batches.values():
                for message in messages:
                    self._on_request(message.value)

    async def _follow_alerts(self, alerts: AIOKafkaConsumer, gate: CallGate) -> None:
        """Feed every status alert to the gate; ready once the alerts published before
        the start have been read."""
        ends: dict[TopicPartition, int] | None = None
        while True:
            batches = await alerts.getmany(timeout_ms=500, max_records=1000)
            for messages in batches.values():
                for message in messages:
                    alert = _decoded(message.value)
                    if alert is not None:
                        gate.observe(alert)
            if self._gate_ready.is_set():
                continue
            assigned = alerts.assignment()
            if not assigned:
                continue
            if ends is None:
                ends = await alerts.end_offsets(list(assigned))
            if all([await alerts.position(tp) >= end for tp, end in ends.items()]):
                self._gate_ready.set()

    def _on_request(self, raw: bytes | None) -> None:
        request = _decoded(raw)
        if request is None:
            log.warning("simulator: billing ignored an undecodable recharge request")
            return
        self.stats.recharge_requests_seen += 1
        answer = self.billing.answer(request, utcnow())
        if answer is None:
            self.stats.requests_ignored += 1
            return
        self._answers.put_nowait((time.monotonic() + self.config.billing_delay_seconds, answer))

    async def _billing_answer(self, producer: AIOKafkaProducer) -> None:
        while True:
            due, command = await self._answers.get()
            try:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                command["occurred_at"] = rfc3339(utcnow())
                record = OutRecord(COMMANDS, command["tenant_id"].encode(), encode(command))
                await self._send(producer, record)
                if command["type"] == "funds_added":
                    self.stats.funds_answered += 1
                else:
                    self.stats.failures_answered += 1
            finally:
                self._answers.task_done()

    async def _log_stats(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            log.info("simulator: %s", self.stats.summary())


async def _ready_or_warn(ready: asyncio.Event, otherwise: str, within: float = 30.0) -> None:
    """Wait for `ready`, at most `within` seconds; log `otherwise` if it did not come."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ready.wait(), timeout=within)
    if not ready.is_set():
        log.warning("simulator: %s", otherwise)


def _decoded(raw: bytes | None) -> dict[str, Any] | None:
    """A record's JSON object, or None for anything else."""
    try:
        value = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
