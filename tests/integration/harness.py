"""Real worker processes and Kafka clients for the integration tests.

Workers run as `meter worker` subprocesses, exactly as an operator runs them, each
with its own data dir and HTTP port. Waiting is always polling for a condition with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from processor.dev.kafka_local import free_port
from processor.kafka import glue

# now_rfc3339 is re-exported: the integration tests import it from here.
from tests.support.events import now_rfc3339 as now_rfc3339

METER = str(Path(sys.executable).with_name("meter"))


async def eventually(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last and not (isinstance(last, str) and last.startswith("not yet")):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


@dataclass
class Deployment:
    """One logical processor deployment: an app id and a topic prefix of its own."""

    bootstrap: str
    root: Path
    partitions: int = 4
    app_id: str = field(default_factory=lambda: f"meter-{uuid.uuid4().hex[:8]}")
    env_extra: dict[str, str] = field(default_factory=dict)
    # The workers started for it, which the test's fixture stops (and prints) at the end.
    workers: list[Worker] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.app_id}."

    def topic(self, logical: str) -> str:
        return f"{self.prefix}{logical}"

    def env(self, index: int, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            METER_APP_ID=self.app_id,
            METER_TOPIC_PREFIX=self.prefix,
            METER_DATA_DIR=str(self.root / f"worker-{index}"),
            METER_WEB_PORT=str(port),
            METER_PARTITIONS=str(self.partitions),
            METER_TIMER_INTERVAL_SECONDS="0.5",
            METER_SESSION_TIMEOUT_SECONDS="6",
            METER_LOG_LEVEL="info",
        )
        env.update(self.env_extra)
        return env


class Worker:
    def __init__(self, deployment: Deployment, index: int) -> None:
        self.deployment = deployment
        self.index = index
        self.port = free_port()
        self.log_path = deployment.root / f"worker-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [METER, "worker"],
            env=self.deployment.env(self.index, self.port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as resp:
            body = await resp.read()
            try:
                return resp.status, json.loads(body)
            except ValueError:
                return resp.status, body.decode(errors="replace")

    async def wait_ready(self, timeout: float = 90.0) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker {self.index} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _ = await self.get("/ready")
            except aiohttp.ClientError:
                return False
            return status == 200

        try:
            await eventually(ready, timeout, what=f"worker {self.index} ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.log_tail()}") from None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL: a Faust worker can hang in shutdown."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextlib.asynccontextmanager
async def running(d: Deployment, index: int = 0, log_lines: int = 80) -> AsyncIterator[Worker]:
    """One worker of `d`, ready; stopped afterwards, with its log's tail printed (pytest
    shows it only when the test failed)."""
    w = Worker(d, index).start()
    try:
        await w.wait_ready()
        yield w
    finally:
        w.stop()
        print(f"--- worker log ---\n{w.log_tail(log_lines)}")


class Client:
    """Produces contract JSON and reads whole output topics."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, linger_ms=2)

    async def __aenter__(self) -> Client:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(
        self,
        logical: str,
        value: Mapping[str, Any] | bytes,
        key: bytes | str | None = "auto",
    ) -> None:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        if key == "auto":
            key = value["tenant_id"] if isinstance(value, Mapping) else None
        k = key.encode() if isinstance(key, str) else key
        await self.producer.send_and_wait(self.d.topic(logical), raw, key=k)

    async def send_all(self, logical: str, values: Iterable[Mapping[str, Any]]) -> None:
        futures = []
        for v in values:
            futures.append(
                await self.producer.send(
                    self.d.topic(logical), json.dumps(v).encode(), key=v["tenant_id"].encode()
                )
            )
        await asyncio.gather(*futures)

    async def read_all(self, logical: str) -> list[dict[str, Any]]:
        """Every record now in the topic, decoded (committed ones only)."""
        records = await self.read_records(self.d.topic(logical))
        return [json.loads(r.value) for r in records if r.value is not None]

    async def read_records(self, topic: str) -> list[Any]:
        """Every record now in the topic, as read (tombstones too; committed ones only)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.d.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            cluster = await glue.fetch_metadata(consumer)
            partitions = cluster.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                return []
            consumer.assign(tps)
            start = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, start[tp])
            # Done when every partition has delivered up to the end offset seen at the
            # start (read_committed may skip control records, so compare offsets).
            todo = {tp for tp in tps if end[tp] > start[tp]}
            out: list[Any] = []
            deadline = time.monotonic() + 30
            while todo and time.monotonic() < deadline:
                batch = await consumer.getmany(*todo, timeout_ms=500)
                for tp, records in batch.items():
                    out.extend(records)
                    if records and records[-1].offset + 1 >= end[tp]:
                        todo.discard(tp)
                for tp in list(todo):
                    if await consumer.position(tp) >= end[tp]:
                        todo.discard(tp)
            if todo:
                raise AssertionError(f"could not read {topic} to its end: {todo}")
            return out
        finally:
            await consumer.stop()


def signed_sum(entries: Iterable[Mapping[str, Any]], tenant: str) -> Any:
    from decimal import Decimal

    total = Decimal(0)
    for e in entries:
        if e["tenant_id"] == tenant:
            amount = Decimal(e["amount"])
            total += amount if e["kind"] == "credit" else -amount
    return total


# ---- evidence that a fault struck mid-load -------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """What a fault test records at the moment it kills (or freezes) a process, so that
    it can assert the strike landed while work was in flight: a kill before the load
    began, or after everything was already processed, would pass without testing
    anything.

    `done` is the work the victim had finished (input records its group had committed,
    rows its database held, deliveries made), `sent` the work handed to it by then
    (input records produced), `total` all the test hands it. Mid-load means some work
    was handed over and not finished (`done < sent`) and, when the load is still
    running (`more_to_come`), that more was still to come (`sent < total`, with `sent`
    read again after the strike if it could be); when everything was handed over
    before the strike (`more_to_come=False`), that some had already been finished.
    """

    what: str
    done: int
    sent: int
    total: int
    sent_after: int | None = None
    more_to_come: bool = True

    def check(self) -> InFlight:
        assert self.done < self.sent, f"{self}: nothing was in flight (done >= sent)"
        if self.more_to_come:
            last = self.sent if self.sent_after is None else self.sent_after
            assert last < self.total, f"{self}: the load had ended (sent == total)"
        else:
            assert self.done > 0, f"{self}: the work had not begun (nothing done yet)"
        return self

    def __str__(self) -> str:
        after = "" if self.sent_after is None else f" ({self.sent_after} just after)"
        return f"{self.what}: {self.done} done, {self.sent} sent{after}, of {self.total} in all"


INPUTS = ("credits.commands", "usage.calls", "usage.conferencing")


async def input_offsets(d: Deployment) -> tuple[int, int]:
    """The input records the deployment's consumer group has committed, and those
    produced, each summed over every input partition."""
    tps = [TopicPartition(d.topic(t), p) for t in INPUTS for p in range(d.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=d.bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(d.app_id)
        ends = await consumer.end_offsets(tps)
        done = sum(max(committed[tp].offset, 0) for tp in tps if tp in committed)
        return done, sum(ends.values())
    finally:
        await consumer.stop()
        await admin.close()


async def strike(
    d: Deployment,
    action: Callable[[], object],
    *,
    total: int,
    what: str,
    broker_up_after: bool = True,
) -> InFlight:
    """Kill or freeze a process of `d` with `action`, and assert (see `InFlight`) that
    it struck mid-load: the group's committed input offsets and the input end offsets
    are read just before, and the end offsets again just after (unless the strike
    took the broker away), while the load runs on. `total`: every input record the
    test produces."""
    done, sent = await input_offsets(d)
    action()
    after = (await input_offsets(d))[1] if broker_up_after else None
    return InFlight(what, done=done, sent=sent, total=total, sent_after=after).check()
