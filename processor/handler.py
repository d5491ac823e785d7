"""One input record through the processor: decode, route, apply, publish, count.

No Faust here: the agents hand over plain `Record`s and the outputs leave through a
`Publisher`, so the whole path runs in unit tests with an in-memory publisher.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson

from processor import metrics
from processor.codec import dump_output, dump_tick, load_tick
from processor.core import account as acc
from processor.core.engine import Engine, Outcome, Status, TimerTick, Usage
from processor.core.stored import OutboxEntry, Position
from processor.routing import partition_for
from processor.topics import TopicNames
from schemas import (
    CallUsage,
    Command,
    ConferenceUsage,
    DecodeError,
    decode_call,
    decode_command,
    decode_conference,
)
from schemas.types import format_timestamp

log = logging.getLogger(__name__)

# Headers that carry a re-routed record's origin, so its ledger entry and any
# rejection still name the topic, partition and offset it first arrived at.
H_SOURCE = "meter-source"
H_TOPIC = "meter-source-topic"
H_PARTITION = "meter-source-partition"
H_OFFSET = "meter-source-offset"
H_KEY = "meter-source-key"  # absent when the original record had no key
# Kafka's default max.message.bytes is 1 MiB; base64 grows a payload by a third.
MAX_REJECTED_PAYLOAD = 256 * 1024


class Source(StrEnum):
    CALLS = "calls"
    CONFERENCING = "conferencing"
    COMMANDS = "commands"


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    # The consumer group generation the record was fetched in: what the account value
    # written for it is stamped with (core/stored.py), however late it is processed.
    generation: int = 0

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def position(self) -> Position:
        return Position(f"{self.topic}:{self.partition}", self.offset)


class Publisher(Protocol):
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        """Queue one record; the awaitable completes when the broker has it."""
        ...


@dataclass
class MemoryPublisher:
    """Collects what would be produced; for tests and dry runs."""

    sent: list[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]] | None]] = field(
        default_factory=list
    )

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        self.sent.append((topic, key, value, headers))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v, _ in self.sent if t == topic]


@dataclass(frozen=True, slots=True)
class Due:
    at: datetime
    request_id: str
    attempt: int


def utcnow() -> datetime:
    return datetime.now(UTC)


class Deliveries:
    """Which outbox entries are safely in Kafka, so account values can drop them.

    An entry is delivered once the broker acknowledged all its outputs, or once the
    offset of the record that caused it is committed (Faust flushes the producer
    before it commits, and this also holds for entries written before a restart).
    """

    def __init__(self, committed: Callable[[str], int | None] = lambda _tp: None) -> None:
        self._committed = committed
        self._acked: set[tuple[str, int]] = set()

    def track(self, tenant: str, seq: int, sends: Sequence[Awaitable[object]]) -> None:
        futures = [asyncio.ensure_future(s) for s in sends]
        if not futures:
            return
        remaining = len(futures)

        def one_done(fut: asyncio.Future[object]) -> None:
            nonlocal remaining
            if fut.cancelled() or fut.exception() is not None:
                return  # not delivered: the entry stays for a replay to publish again
            remaining -= 1
            if remaining == 0:
                self._acked.add((tenant, seq))

        for fut in futures:
            fut.add_done_callback(one_done)

    def __call__(self, tenant: str, entry: OutboxEntry) -> bool:
        key = (tenant, entry.seq)
        if key in self._acked:
            # Asked once per write; an entry found delivered is dropped from the value.
            self._acked.discard(key)
            return True
        committed = self._committed(entry.position.tp)
        return committed is not None and entry.position.offset < committed


class RecordHandler:
    def __init__(
        self,
        engine: Engine,
        names: TopicNames,
        partitions: int,
        publisher: Publisher,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.names = names
        self.partitions = partitions
        self.publisher = publisher
        self.clock = clock
        self.currency = engine.card.currency
        self.deliveries = Deliveries()
        engine.delivered = self.deliveries
        self._decoders: dict[Source, Callable[[bytes | None], Usage | Command]] = {
            Source.CALLS: decode_call,
            Source.CONFERENCING: decode_conference,
            Source.COMMANDS: decode_command,
        }
        self._topics = {
            Source.CALLS: names.calls,
            Source.CONFERENCING: names.conferencing,
            Source.COMMANDS: names.commands,
        }
        self._output_topics: dict[type, str] = {
            acc.LedgerOut: names.ledger,
            acc.AlertOut: names.alerts,
            acc.RechargeOut: names.recharge_requests,
        }
        # When each owned tenant's pending recharge next needs the timer.
        self.due: dict[str, Due] = {}
        self._topic_labels = {
            names.ledger: "ledger",
            names.alerts: "alerts",
            names.recharge_requests: "recharge_requests",
            names.rejected: "rejected",
            names.reroute: "reroute",
            names.timer: "timer",
        }

    # ---- entry points (one per kind of input topic) ---------------------------

    async def handle(self, source: Source, rec: Record) -> str:
        """A record from one of the contract's input topics."""
        return await self._process(source, rec, origin=rec, rerouted=False)

    async def handle_rerouted(self, rec: Record) -> str:
        raw_source = rec.header(H_SOURCE)
        try:
            source = Source((raw_source or b"").decode())
            origin = Record(
                topic=(rec.header(H_TOPIC) or b"").decode(),
                partition=int(rec.header(H_PARTITION) or b"-1"),
                offset=int(rec.header(H_OFFSET) or b"-1"),
                # A rejection names the key the producer used, not the tenant's.
                key=rec.header(H_KEY),
                value=rec.value,
            )
        except (ValueError, UnicodeDecodeError):
            await self._reject(rec, "invalid_event", "re-routed record without its origin headers")
            return "rejected"
        return await self._process(source, rec, origin=origin, rerouted=True)

    async def handle_tick(self, rec: Record) -> str:
        started = time.perf_counter()
        try:
            tick = load_tick(rec.value or b"")
        except (ValueError, KeyError, TypeError) as exc:
            await self._reject(rec, "invalid_event", f"unreadable timer tick: {exc!r}")
            return "rejected"
        self.engine.generation = rec.generation
        outcome = self.engine.timer(tick, self.names.timer, rec.position)
        await self._finish("timer", outcome, rec, started)
        return outcome.status.value

    # ---- the path ------------------------------------------------------------

    async def _process(self, source: Source, rec: Record, origin: Record, rerouted: bool) -> str:
        started = time.perf_counter()
        label = source.value
        try:
            event = self._decoders[source](rec.value)
        except DecodeError as err:
            await self._reject(origin, err.reason, err.detail)
            metrics.RECORDS.labels(label, "rejected").inc()
            return "rejected"
        tenant = event.tenant_id
        if not rerouted and rec.partition != partition_for(tenant, self.partitions):
            await self._reroute(source, rec, tenant)
            metrics.RECORDS.labels(label, "rerouted").inc()
            return "rerouted"
        cause_topic = self._topics[source]
        now = self.clock()
        # A re-routed record is applied at its position in the re-route topic.
        position = rec.position
        self.engine.generation = rec.generation  # no await until the engine is done
        try:
            if isinstance(event, CallUsage | ConferenceUsage):
                outcome = self.engine.usage(event, cause_topic, now, position)
            else:
                outcome = self.engine.command(event, cause_topic, now, position)
        except Exception as exc:
            # A bug must cost one record a trip to credits.rejected, not the stream:
            # Faust would ack and drop a record whose handler raised.
            log.exception(
                "internal error on %s[%d]@%d",
                rec.topic,
                rec.partition,
                rec.offset,
                extra={"tenant_id": tenant, **_coordinates(rec)},
            )
            await self._reject(origin, "internal_error", f"{type(exc).__name__}: {exc}")
            metrics.RECORDS.labels(label, "rejected").inc()
            return "rejected"
        if outcome.status is Status.APPLIED:
            metrics.EVENT_LAG.observe(max(0.0, (now - event.occurred_at).total_seconds()))
        if log.isEnabledFor(logging.DEBUG):
            record_id = getattr(event, "event_id", None) or getattr(event, "command_id", None)
            log.debug(
                "%s %s for %s: %s",
                label,
                record_id,
                tenant,
                outcome.status.value,
                extra={"tenant_id": tenant, "event_id": record_id, **_coordinates(rec)},
            )
        await self._finish(label, outcome, origin, started)
        return outcome.status.value

    async def _finish(self, label: str, outcome: Outcome, origin: Record, started: float) -> None:
        if outcome.status is Status.REJECTED:
            assert outcome.rejection is not None
            await self._reject(origin, outcome.rejection.reason, outcome.rejection.detail)
        key = outcome.tenant_id.encode()
        sends = []
        for out in outcome.outputs:
            sends.append(
                await self._send(
                    self._output_topics[type(out)], key, dump_output(out, self.currency)
                )
            )
            if outcome.status is Status.APPLIED:
                self._count_output(out)
        if outcome.seq and outcome.status is Status.APPLIED:
            self.deliveries.track(outcome.tenant_id, outcome.seq, sends)
        for what in outcome.recharge:
            metrics.RECHARGE_OUTCOMES.labels(what).inc()
        if outcome.account is not None:
            self._track_due(outcome.account)
        metrics.RECORDS.labels(label, outcome.status.value).inc()
        metrics.PROCESSING.observe(time.perf_counter() - started)

    async def _reroute(self, source: Source, rec: Record, tenant: str) -> None:
        headers = [
            (H_SOURCE, source.value.encode()),
            (H_TOPIC, rec.topic.encode()),
            (H_PARTITION, str(rec.partition).encode()),
            (H_OFFSET, str(rec.offset).encode()),
        ]
        if rec.key is not None:
            headers.append((H_KEY, rec.key))
        await self._send(self.names.reroute, tenant.encode(), rec.value or b"", headers)

    async def _reject(self, rec: Record, reason: str, detail: str) -> None:
        body: dict[str, Any] = {
            "type": "rejected",
            "reason": reason,
            "detail": detail,
            "source_topic": rec.topic,
            "source_partition": rec.partition,
            "source_offset": rec.offset,
            "key": None,
            "payload": None,
            "rejected_at": format_timestamp(self.clock()),
        }
        body["key"], key_b64 = _as_text(rec.key)
        if key_b64:
            body["key_encoding"] = "base64"
        if rec.value is not None:
            value = rec.value
            if len(value) > MAX_REJECTED_PAYLOAD:
                # The original stays at its source offset; a copy this large would be
                # refused by the broker and the rejection itself would be lost.
                value = value[:MAX_REJECTED_PAYLOAD]
                body["payload_truncated"] = True
                body["payload_size"] = len(rec.value)
            body["payload"], payload_b64 = _as_text(value)
            if payload_b64:
                body["payload_encoding"] = "base64"
        # Keyed like the original, so a replay lands where the original would have.
        await self._send(self.names.rejected, rec.key, orjson.dumps(body))
        metrics.REJECTED.labels(reason).inc()
        log.info(
            "rejected %s[%d]@%d: %s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            reason,
            detail,
            extra={"reason": reason, **_coordinates(rec)},
        )

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        sent = await self.publisher.send(topic, key, value, headers)
        metrics.OUTPUTS.labels(self._topic_labels.get(topic, "other")).inc()
        return sent

    def _count_output(self, out: acc.Output) -> None:
        if isinstance(out, acc.LedgerOut):
            metrics.MONEY.labels(self.currency, out.kind).inc(float(out.amount))
        elif isinstance(out, acc.AlertOut):
            metrics.ALERTS.labels(out.alert.value).inc()
        else:
            metrics.RECHARGE_REQUESTS.labels("first" if out.attempt == 1 else "retry").inc()

    # ---- the recharge timer ----------------------------------------------------

    def _track_due(self, account: acc.Account) -> None:
        at = acc.next_due(account, self.engine.policy)
        if at is None or account.pending is None:
            self.due.pop(account.tenant_id, None)
        else:
            self.due[account.tenant_id] = Due(
                at, account.pending.request_id, account.pending.attempt
            )

    def rebuild_due(self, owned: Callable[[str], bool]) -> None:
        """After a rebalance: index the pending requests of the tenants now owned here."""
        self.due.clear()
        for tenant, stored in list(self.engine.accounts.items()):
            if stored.account.pending is not None and owned(tenant):
                self._track_due(stored.account)

    async def fire_due(self) -> int:
        """Send a tick for every request whose timeout or retry time has come.

        A tick goes through the timer topic to the tenant's owner like any other input,
        so the state change happens inside normal processing; repeats are harmless.
        """
        now = self.clock()
        fired = 0
        for tenant, due in list(self.due.items()):
            if due.at > now:
                continue
            tick = TimerTick(
                tick_id=f"{due.request_id}#{due.attempt}@{int(now.timestamp())}",
                tenant_id=tenant,
                request_id=due.request_id,
                attempt=due.attempt,
                at=now,
            )
            await self._send(self.names.timer, tenant.encode(), dump_tick(tick))
            fired += 1
        return fired


def _coordinates(rec: Record) -> dict[str, object]:
    return {
        "source_topic": rec.topic,
        "source_partition": rec.partition,
        "source_offset": rec.offset,
    }


def _as_text(raw: bytes | None) -> tuple[str | None, bool]:
    """The bytes as text when they are UTF-8, else base64 (and say so)."""
    if raw is None:
        return None, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True
