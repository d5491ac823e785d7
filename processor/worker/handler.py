"""One input record through the processor: decode, route, apply, publish, count.

No Faust here: the agents hand over plain `Record`s and the outputs leave through a
`Publisher`, so the whole path runs in unit tests with an in-memory publisher.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import orjson

from processor.core.engine import EXPIRY_TICK, Engine, Outcome, Status, TimerTick, Usage
from processor.core.lots import next_expiry_due
from processor.core.outputs import AlertOut, LedgerOut, NotificationsOut, Output, RechargeOut
from processor.core.recharge import next_due
from processor.core.state import Account
from processor.core.stored import Mark, OutboxEntry, Position, StoredAccount
from processor.core.values import fast_init
from processor.kafka import wire
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.kafka.wire import dump_output, dump_tick, load_tick
from processor.observability import metrics
from processor.worker import sizing
from processor.worker.sizing import KeyFacts, Limits
from processor.worker.staged import Staged
from schemas import (
    CallUsage,
    Command,
    ConferenceUsage,
    DecodeError,
    decode_call,
    decode_command,
    decode_conference,
)
from schemas.inputs import COMMAND_TYPES
from schemas.types import ID_PATTERN, TENANT_ID_PATTERN

log = logging.getLogger(__name__)
_TENANT_RE = re.compile(TENANT_ID_PATTERN.removeprefix("^").removesuffix("$"))
_COMMAND_ID_RE = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))

# Headers that carry a re-routed record's origin, so its ledger entry and any
# rejection still name the topic, partition and offset it first arrived at.
H_SOURCE = "meter-source"
H_TOPIC = "meter-source-topic"
H_PARTITION = "meter-source-partition"
H_OFFSET = "meter-source-offset"
H_KEY = "meter-source-key"  # absent when the original record had no key
# A key over sizing.KEY_BOUND travels as its prefix (H_KEY) with its size and SHA-256.
H_KEY_SIZE = "meter-source-key-size"
H_KEY_SHA256 = "meter-source-key-sha256"
# `meter replay-rejected --force-too-old` sets both on a record it re-sends: an event
# older than the dedupe window is then applied on the operator's word (docs/contract.md).
# Honoured only with H_REPLAY_OF beside it, and carried along by a re-route.
H_FORCE_TOO_OLD = "meter-force-too-old"
H_REPLAY_OF = "meter-replay-of"
# Kafka's default max.message.bytes is 1 MiB; base64 grows a payload by a third.
MAX_REJECTED_PAYLOAD = sizing.MAX_REJECTED_PAYLOAD
# How long after firing a tenant's expiry tick the timer fires it again if the tick
# has not been applied by then (it was lost with a crash, or is still queued).
EXPIRY_REFIRE = timedelta(seconds=60)
# The timer indexes only the tenants whose lots are due within this of its last
# rebuild (most lots are months away: indexing every tenant with lots would cost
# ~170 bytes each), and rebuilds from the tally when half of it has passed.
EXPIRY_HORIZON = timedelta(hours=12)


class Source(StrEnum):
    CALLS = "calls"
    CONFERENCING = "conferencing"
    COMMANDS = "commands"


@fast_init
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
    # Set when `key` holds only a prefix of the original key (a re-routed record's
    # origin): the original's size and SHA-256, for its rejection.
    key_facts: KeyFacts | None = None

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def position(self) -> Position:
        return Position(f"{self.topic}:{self.partition}", self.offset)


@fast_init
@dataclass(frozen=True, slots=True)
class Out:
    """One record to produce."""

    topic: str
    key: bytes | None
    # None: a tombstone (a forgotten dedupe mark).
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] | None = None
    # None: the key's partition by Kafka's default partitioner (any, for no key).
    partition: int | None = None
    # A changelog record of the processor's own state, not an output of the contract.
    state: bool = False
    # The partition number whose transaction carries the record: that of the input
    # record that caused it, or of the tenant a timer tick or a state record is for.
    owner: int = -1


class Publisher(Protocol):
    # Whether `publish` lands its records all together or not at all (a transaction):
    # then a batch's outputs and state go in one round, else outputs first.
    atomic: bool

    async def publish(self, records: Sequence[Out]) -> None:
        """Produce every record; return once the broker has acknowledged all of them.

        Raises if any record could not be delivered.
        """
        ...


@dataclass
class MemoryPublisher:
    """Collects what would be produced (outputs in `sent`, state in `state`); for tests."""

    sent: list[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]] | None]] = field(
        default_factory=list
    )
    state: list[Out] = field(default_factory=list)
    atomic: bool = False

    async def publish(self, records: Sequence[Out]) -> None:
        for r in records:
            if r.state:
                self.state.append(r)
            else:
                assert r.value is not None, "only state records are tombstones"
                self.sent.append((r.topic, r.key, r.value, r.headers))

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v, _ in self.sent if t == topic]


@dataclass(frozen=True, slots=True)
class Changelog:
    """Where a table's batch writes go besides its local store: its changelog topic.

    The handler produces the changelog records itself (the engine is given the table's
    store, not the table), so that a batch costs one record per touched key, sent after
    the batch's outputs.
    """

    topic: str
    encode: Callable[[Any], bytes]
    tenant_of: Callable[[str], str]


@fast_init
@dataclass(frozen=True, slots=True)
class Due:
    at: datetime
    request_id: str
    attempt: int


def utcnow() -> datetime:
    return datetime.now(UTC)


class Deliveries:
    """Which outbox entries are safely in Kafka, so account values can drop them.

    Only values written before outputs preceded state hold entries (core/stored.py).
    An entry is delivered once the offset of the record that caused it is committed:
    everything a record caused is acknowledged before its offset is.
    """

    def __init__(self, committed: Callable[[str], int | None] = lambda _tp: None) -> None:
        self._committed = committed

    def __call__(self, tenant: str, entry: OutboxEntry) -> bool:
        committed = self._committed(entry.position.tp)
        return committed is not None and entry.position.offset < committed


class RecordHandler:
    """Stages records into a batch, then flushes it: outputs first, state after.

    `stage*` decode, route and apply one record without waiting on anything; `flush`
    produces the batch's outputs, waits for the broker to acknowledge them, and only
    then produces the account values and dedupe marks the batch wrote, one record per
    touched key (docs/guarantees.md). `handle*` do both for a single record.
    """

    def __init__(
        self,
        engine: Engine,
        names: TopicNames,
        partitions: int,
        publisher: Publisher,
        clock: Callable[[], datetime] = utcnow,
        changelogs: tuple[Changelog, Changelog] | None = None,
        batch_max: int = 2000,
        limits: Limits | None = None,
    ) -> None:
        self.engine = engine
        # The largest record each output topic takes (processor/worker/sizing.py).
        self.limits = limits or Limits()
        self.batch_max = batch_max
        self.names = names
        self.partitions = partitions
        self.publisher = publisher
        self.clock = clock
        self.currency = engine.card.currency
        self.deliveries = Deliveries()
        engine.delivered = self.deliveries
        # The engine sees its tables through the batch in progress.
        self.accounts: Staged[str, StoredAccount] = Staged(engine.accounts)
        self.seen: Staged[str, Mark] = Staged(engine.seen)
        engine.accounts, engine.seen = self.accounts, self.seen
        self.changelogs = changelogs
        self._outputs: list[Out] = []
        # The partition number of the record being processed: its outputs' transaction.
        self._owner = -1
        # Batches taken whose outputs are still to be sent; batches whose outputs are
        # in and whose state is still to be sent; and the task that sends both.
        self._unsent: list[_Flush] = []
        self._unwritten: list[_Flush] = []
        self._flusher: asyncio.Future[None] | None = None
        # What the caller holds for each record staged since the last take (its input
        # message), handed back through `landed` once the record's flush has landed.
        self._held: list[Any] = []
        self.landed: Callable[[list[Any], Exception | None], None] = _ignore
        self._took: asyncio.Future[None] | None = None
        # Set when a state write failed: the local stores stop at the batch before it,
        # and every later flush fails too (the worker restarts and replays them).
        self._broken: Exception | None = None
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
            LedgerOut: names.ledger,
            AlertOut: names.alerts,
            RechargeOut: names.recharge_requests,
            NotificationsOut: names.notification_settings,
        }
        # When each owned tenant's pending recharge next needs the timer.
        self.due: dict[str, Due] = {}
        # When each owned tenant's lots next need the timer (an expiry or an expiring
        # notice), and the same as a heap, soonest first, so a timer tick looks only at
        # the tenants due (entries the dict no longer holds are skipped as stale).
        self.expiry_due: dict[str, datetime] = {}
        self._expiry_heap: list[tuple[datetime, str]] = []
        # Until when the index holds every tenant due (None: it holds every tenant with
        # lots, as before the first rebuild); later times are left to the next rebuild.
        self.expiry_horizon: datetime | None = None
        # Labelled metric children by (metric, labels): `labels()` costs microseconds
        # on every record otherwise.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        # The records' metric updates, applied once per batch taken (`_take`).
        self._metrics = metrics.Batched()
        self._topic_labels = {
            names.ledger: "ledger",
            names.alerts: "alerts",
            names.recharge_requests: "recharge_requests",
            names.rejected: "rejected",
            names.reroute: "reroute",
            names.timer: "timer",
            names.command_results: "command_results",
            names.notification_settings: "notification_settings",
        }

    # ---- single records: staged and flushed at once ------------------------------

    async def handle(self, source: Source, rec: Record) -> str:
        """A record from one of the contract's input topics."""
        status = self.stage(source, rec)
        await self.flush()
        return status

    async def handle_rerouted(self, rec: Record) -> str:
        status = self.stage_rerouted(rec)
        await self.flush()
        return status

    async def handle_tick(self, rec: Record) -> str:
        status = self.stage_tick(rec)
        await self.flush()
        return status

    # ---- staging (one per kind of input topic) ------------------------------------

    def stage(self, source: Source, rec: Record) -> str:
        # Only a record `meter replay-rejected --force-too-old` re-sent says both.
        force = bool(rec.headers) and (
            rec.header(H_FORCE_TOO_OLD) == b"1" and rec.header(H_REPLAY_OF) is not None
        )
        return self._process(source, rec, origin=rec, rerouted=False, force_too_old=force)

    def stage_rerouted(self, rec: Record) -> str:
        self._owner = rec.partition
        raw_source = rec.header(H_SOURCE)
        try:
            source = Source((raw_source or b"").decode())
            size, digest = rec.header(H_KEY_SIZE), rec.header(H_KEY_SHA256)
            origin = Record(
                topic=(rec.header(H_TOPIC) or b"").decode(),
                partition=int(rec.header(H_PARTITION) or b"-1"),
                offset=int(rec.header(H_OFFSET) or b"-1"),
                # A rejection names the key the producer used, not the tenant's.
                key=rec.header(H_KEY),
                value=rec.value,
                key_facts=(
                    None
                    if size is None or digest is None
                    else KeyFacts(int(size), digest.decode("ascii"))
                ),
            )
        except (ValueError, UnicodeDecodeError):
            self._reject(rec, "invalid_event", "re-routed record without its origin headers")
            return "rejected"
        force = rec.header(H_FORCE_TOO_OLD) == b"1"  # set by `_reroute`, and only there
        return self._process(source, rec, origin=origin, rerouted=True, force_too_old=force)

    def stage_tick(self, rec: Record) -> str:
        started = time.perf_counter()
        self._owner = rec.partition
        try:
            tick = load_tick(rec.value or b"")
        except (ValueError, KeyError, TypeError) as exc:
            self._reject(rec, "invalid_event", f"unreadable timer tick: {exc!r}")
            return "rejected"
        self.engine.generation = rec.generation
        outcome = self.engine.timer(tick, self.names.timer, rec.position)
        self._finish("timer", outcome, rec, started)
        return outcome.status.value

    # ---- flushing ---------------------------------------------------------------

    async def flush(self) -> None:
        """Produce what was staged: the outputs, then (once they are in) the state."""
        await self.start_flush()

    def start_flush(self) -> asyncio.Future[None]:
        """Take what was staged now; done once it (and everything before) is in Kafka.

        One flusher produces everything, one publish at a time (aiokafka keeps one
        request in flight per broker anyway): each round sends the outputs of every
        batch taken since the last round, and with them the state of every batch whose
        outputs the last round saw acknowledged (the newest value per key). So a value
        never reaches the changelog before the outputs of the records it applied,
        outputs keep the order they were staged in, and the local stores settle in
        batch order. A batch taken with nothing staged is a barrier: done once every
        batch before it has landed.

        With an atomic publisher (the worker's: Kafka transactions) a round sends the
        outputs and the state of every batch taken since the last round together, and
        they land together or not at all.
        """
        flush = self._take()
        self._wake()
        return flush.done

    def hold(self, token: Any) -> None:
        """Keep `token` for the record just staged, and have the flusher take it.

        Records staged while a round is in flight go out together in the next one, so
        a worker under load sends large rounds and an idle one sends a batch as soon
        as it is staged; `landed(tokens, None)` hands the tokens back when they landed.
        """
        self._held.append(token)
        self._wake()

    def full(self) -> bool:
        """Whether `batch_max` records wait for the next round: stage no more."""
        return len(self._held) >= self.batch_max

    async def room(self) -> None:
        """Wait until the flusher has taken what waits (or failed)."""
        while self.full() and self._broken is None:
            if self._took is None:
                self._took = asyncio.get_running_loop().create_future()
            self._wake()
            await asyncio.shield(self._took)

    def forget_marks(self, keys: Iterable[str]) -> int:
        """Forget dedupe marks past their window: each goes to the changelog as a
        tombstone with the next flush, and leaves the store once that has landed. A key
        a batch in progress writes again is kept (its new mark has a new window)."""
        forget = self.seen.forget
        forgotten = sum(1 for key in keys if forget(key))
        if forgotten:
            metrics.MARKS_FORGOTTEN.inc(forgotten)
        return forgotten

    def _take(self) -> _Flush:
        self._metrics.apply()
        loop = asyncio.get_running_loop()
        outputs, self._outputs = self._outputs, []
        held, self._held = self._held, []
        accounts, marks = self.accounts.take(), self.seen.take()
        flush = _Flush(outputs, accounts, marks, held, loop.create_future(), time.perf_counter())
        # A failure nobody waits on is reported through `landed`.
        flush.done.add_done_callback(_retrieve)
        took, self._took = self._took, None
        if took is not None and not took.done():
            took.set_result(None)
        if self._broken is not None:
            self._fail(flush, self._broken)
        else:
            self._unsent.append(flush)
        return flush

    def _staged(self) -> bool:
        return bool(self._outputs or self._held or self.accounts.pending or self.seen.pending)

    def _wake(self) -> None:
        if self._flusher is None and self._broken is None:
            self._flusher = asyncio.ensure_future(self._run_flusher())

    async def _run_flusher(self) -> None:
        try:
            while True:
                if self._staged():
                    self._take()
                if not (self._unsent or self._unwritten):
                    break
                sending, self._unsent = self._unsent, []
                landing, self._unwritten = self._unwritten, []
                if self.publisher.atomic:
                    # Outputs and state land together or not at all: one round each.
                    landing += sending
                    sending = []
                    records = [out for flush in landing for out in flush.outputs]
                else:
                    # A batch with no outputs, behind no batch whose outputs are in
                    # flight, may write its state in this round already.
                    while sending and not sending[0].outputs:
                        landing.append(sending.pop(0))
                    records = [out for flush in sending for out in flush.outputs]
                records += self._state_of(landing)
                try:
                    if records:
                        await self.publisher.publish(records)
                    for flush in landing:
                        self.accounts.settle(flush.accounts)
                        self.seen.settle(flush.marks)
                except BaseException as exc:
                    # Reported through each flush's own future, to its caller; the local
                    # stores stop at the batch before the first that failed.
                    self._broken = failed = _failure(exc)
                    for flush in [*landing, *sending, *self._unsent]:
                        self._fail(flush, failed)
                    self._unsent = []
                    if self._took is not None and not self._took.done():
                        self._took.set_result(None)
                    return
                now = time.perf_counter()
                for flush in landing if self.publisher.atomic else sending:
                    metrics.FLUSH.labels("outputs").observe(now - flush.started)
                for flush in landing:
                    metrics.FLUSH.labels("state").observe(now - flush.started)
                    if not flush.done.done():  # a caller may have cancelled its wait
                        flush.done.set_result(None)
                    if flush.held:
                        self.landed(flush.held, None)
                self._unwritten = sending
        finally:
            self._flusher = None

    def _fail(self, flush: _Flush, failed: Exception) -> None:
        if not flush.done.done():
            flush.done.set_exception(failed)
        if flush.held:
            self.landed(flush.held, failed)

    def _state_of(self, flushes: list[_Flush]) -> list[Out]:
        if self.changelogs is None or not flushes:
            return []
        accounts: dict[str, StoredAccount | None] = {}
        marks: dict[str, Mark | None] = {}
        for flush in flushes:  # oldest first: the newest value per key wins
            accounts.update(flush.accounts)
            marks.update(flush.marks)
        return self._state_records(accounts, marks)

    def _state_records(
        self,
        accounts: Mapping[str, StoredAccount | None],
        marks: Mapping[str, Mark | None],
    ) -> list[Out]:
        assert self.changelogs is not None
        records = []
        for log_, values in zip(self.changelogs, (accounts, marks), strict=True):
            for key, value in values.items():
                # Faust reads a table's partition p from its changelog's p.
                partition = partition_for(log_.tenant_of(key), self.partitions)
                records.append(
                    Out(
                        log_.topic,
                        key.encode(),
                        None if value is None else log_.encode(value),
                        partition=partition,
                        state=True,
                        owner=partition,
                    )
                )
        return records

    # ---- the path ------------------------------------------------------------

    def _process(
        self,
        source: Source,
        rec: Record,
        origin: Record,
        rerouted: bool,
        force_too_old: bool = False,
    ) -> str:
        started = time.perf_counter()
        self._owner = rec.partition
        label = source.value
        try:
            event = self._decoders[source](rec.value)
        except DecodeError as err:
            self._reject(origin, err.reason, err.detail)
            if source is Source.COMMANDS:
                self._undecoded_result(rec.value, err.reason, err.detail)
            self._metrics.inc(self._child(metrics.RECORDS, label, "rejected"))
            return "rejected"
        tenant = event.tenant_id
        if not rerouted and rec.partition != partition_for(tenant, self.partitions):
            if not self._reroute(source, rec, tenant, force_too_old):
                self._metrics.inc(self._child(metrics.RECORDS, label, "rejected"))
                return "rejected"
            self._metrics.inc(self._child(metrics.RECORDS, label, "rerouted"))
            return "rerouted"
        cause_topic = self._topics[source]
        now = self.clock()
        # A re-routed record is applied at its position in the re-route topic.
        position = rec.position
        self.engine.generation = rec.generation
        try:
            if isinstance(event, CallUsage | ConferenceUsage):
                outcome = self.engine.usage(event, cause_topic, now, position, force_too_old)
            else:
                outcome = self.engine.command(event, cause_topic, now, position, force_too_old)
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
            detail = f"{type(exc).__name__}: {exc}"
            self._reject(origin, "internal_error", detail, tenant)
            if not isinstance(event, CallUsage | ConferenceUsage):
                self._command_result(event, "rejected", None, "internal_error", detail)
            self._metrics.inc(self._child(metrics.RECORDS, label, "rejected"))
            return "rejected"
        if outcome.status is Status.APPLIED:
            lag = (now - event.occurred_at).total_seconds()
            self._metrics.observe(metrics.EVENT_LAG, max(0.0, lag))
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
        self._finish(label, outcome, origin, started)
        if not isinstance(event, CallUsage | ConferenceUsage):
            self._result_of(event, outcome)
        return outcome.status.value

    # ---- command results (added: credits.command-results) -------------------------

    def _result_of(self, cmd: Command, outcome: Outcome) -> None:
        """Stage what became of `cmd`, beside its other outputs (one transaction).

        Nothing for a duplicate (the first result stands) nor for a record replayed
        after a crash (its round, result included, is in already)."""
        status = outcome.status
        if status is Status.APPLIED:
            entry = next(
                (
                    out.entry_id
                    for out in outcome.outputs
                    if isinstance(out, LedgerOut) and out.cause_id == cmd.command_id
                ),
                None,
            )
            self._command_result(cmd, "applied", entry)
        elif status is Status.REJECTED:
            assert outcome.rejection is not None
            rejection = outcome.rejection
            self._command_result(cmd, "rejected", None, rejection.reason, rejection.detail)
        elif status is Status.IGNORED:
            note = outcome.note or "ignored"
            self._command_result(cmd, "ignored", None, note, f"nothing changed: {note}")

    def _command_result(
        self,
        cmd: Command,
        outcome: str,
        entry_id: str | None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        self._result(cmd.command_id, cmd.tenant_id, cmd.type, outcome, entry_id, reason, detail)

    def _result(
        self,
        command_id: str,
        tenant_id: str,
        command_type: str,
        outcome: str,
        entry_id: str | None,
        reason: str | None,
        detail: str | None,
    ) -> None:
        value = wire.command_result(
            command_id, tenant_id, command_type, outcome, entry_id, reason, detail, self.clock()
        )
        self._send(self.names.command_results, tenant_id.encode(), value)

    def _undecoded_result(self, value: bytes | None, reason: str, detail: str) -> None:
        """A command that could not be decoded is rejected in its result too, when it
        names a valid command_id, tenant_id and command type (else it has no id to be
        asked about)."""
        try:
            body = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict):
            return
        command_id, tenant, kind = body.get("command_id"), body.get("tenant_id"), body.get("type")
        if (
            isinstance(command_id, str)
            and _COMMAND_ID_RE.fullmatch(command_id)
            and isinstance(tenant, str)
            and _TENANT_RE.fullmatch(tenant)
            and kind in COMMAND_TYPES
        ):
            self._result(command_id, tenant, kind, "rejected", None, reason, detail)

    def _finish(self, label: str, outcome: Outcome, origin: Record, started: float) -> None:
        if outcome.status is Status.REJECTED:
            assert outcome.rejection is not None
            self._reject(
                origin, outcome.rejection.reason, outcome.rejection.detail, outcome.tenant_id
            )
        key = outcome.tenant_id.encode()
        for out in outcome.outputs:
            self._send(self._output_topics[type(out)], key, dump_output(out, self.currency))
            if outcome.status is Status.APPLIED:
                self._count_output(out)
        for what in outcome.recharge:
            self._metrics.inc(self._child(metrics.RECHARGE_OUTCOMES, what))
        if outcome.account is not None:
            self._track_due(outcome.account)
        self._metrics.inc(self._child(metrics.RECORDS, label, outcome.status.value))
        self._metrics.observe(metrics.PROCESSING, time.perf_counter() - started)

    def _reroute(self, source: Source, rec: Record, tenant: str, force_too_old: bool) -> bool:
        """Send the record to its tenant's partition; False: rejected, as too large."""
        headers = [
            (H_SOURCE, source.value.encode()),
            (H_TOPIC, rec.topic.encode()),
            (H_PARTITION, str(rec.partition).encode()),
            (H_OFFSET, str(rec.offset).encode()),
        ]
        key, facts = sizing.clip_key(rec.key)
        if key is not None:
            headers.append((H_KEY, key))
        if facts is not None:
            headers.append((H_KEY_SIZE, str(facts.size).encode()))
            headers.append((H_KEY_SHA256, facts.sha256.encode()))
        if force_too_old:
            headers.append((H_FORCE_TOO_OLD, b"1"))
        out_key, value = tenant.encode(), rec.value or b""
        size = sizing.record_size(out_key, value, headers)
        limit = self.limits.limit(self.names.reroute)
        if size > limit:
            self._reject(
                rec,
                "too_large",
                f"the record belongs to partition {partition_for(tenant, self.partitions)} "
                f"(tenant {tenant}); re-routed there it would take {size} bytes, over the "
                f"{limit} bytes {self.names.reroute} takes: send it keyed by its tenant_id",
                tenant,
            )
            return False
        self._send(self.names.reroute, out_key, value, headers)
        return True

    def _reject(self, rec: Record, reason: str, detail: str, tenant: str | None = None) -> None:
        """Stage a rejection of `rec`, built to fit what credits.rejected takes.

        `tenant`: the tenant the record's body names, when known; the rejection's key
        when the record's own key is too long to reuse (processor/worker/sizing.py).
        """
        body = wire.rejection(reason, detail, rec.topic, rec.partition, rec.offset, self.clock())
        if rec.key_facts is None and (rec.key is None or len(rec.key) <= sizing.KEY_BOUND):
            # Keyed like the original, so a replay lands where the original would have.
            out_key = rec.key
        else:
            out_key = sizing.rejection_key(rec.key, rec.key_facts, tenant or _tenant_in(rec.value))
        value = sizing.rejection_value(
            body,
            key=rec.key,
            key_facts=rec.key_facts,
            value=rec.value,
            out_key=out_key,
            limit=self.limits.limit(self.names.rejected),
        )
        self._send(self.names.rejected, out_key, value)
        self._metrics.inc(self._child(metrics.REJECTED, reason))
        log.info(
            "rejected %s[%d]@%d: %s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            reason,
            detail[:500],
            extra={"reason": reason, **_coordinates(rec)},
        )

    def minimal_rejection(self, out: Out) -> Out | None:
        """What to produce instead of `out` when the broker refused it for its size.

        A rejection or a re-route becomes a minimal rejection (reason, a short
        detail, coordinates, sizes, hashes; no key, no payload: the original is at
        its source offset); any other output has no stand-in (None).
        """
        if out.topic == self.names.rejected and out.value is not None:
            value = sizing.minimal_from_rejection(out.value)
            return None if value is None else Out(self.names.rejected, None, value)
        if out.topic == self.names.reroute:
            headers = dict(out.headers or ())
            try:
                partition = int(headers.get(H_PARTITION, b"-1"))
                offset = int(headers.get(H_OFFSET, b"-1"))
                topic = headers.get(H_TOPIC, b"").decode()
            except (ValueError, UnicodeDecodeError):
                return None
            body = wire.refused_reroute(self.names.reroute, topic, partition, offset, self.clock())
            if H_KEY_SIZE in headers and H_KEY_SHA256 in headers:
                body["key_size"] = int(headers[H_KEY_SIZE])
                body["key_sha256"] = headers[H_KEY_SHA256].decode("ascii", "replace")
            elif H_KEY in headers:
                body["key_size"] = len(headers[H_KEY])
                body["key_sha256"] = sizing.sha256_hex(headers[H_KEY])
            return Out(self.names.rejected, None, sizing.minimal_value(body, out.value))
        return None

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        self._outputs.append(Out(topic, key, value, headers, owner=self._owner))
        self._metrics.inc(self._child(metrics.OUTPUTS, self._topic_labels.get(topic, "other")))

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _count_output(self, out: Output) -> None:
        if isinstance(out, LedgerOut):
            self._metrics.inc(
                self._child(metrics.MONEY, self.currency, out.kind), float(out.amount)
            )
        elif isinstance(out, AlertOut):
            self._metrics.inc(self._child(metrics.ALERTS, out.alert.value))
        elif isinstance(out, NotificationsOut):
            pass
        else:
            self._metrics.inc(
                self._child(metrics.RECHARGE_REQUESTS, "first" if out.attempt == 1 else "retry")
            )

    # ---- the recharge timer ----------------------------------------------------

    def _track_due(self, account: Account) -> None:
        at = next_due(account, self.engine.policy)
        if at is None or account.pending is None:
            self.due.pop(account.tenant_id, None)
        else:
            self.due[account.tenant_id] = Due(
                at, account.pending.request_id, account.pending.attempt
            )
        if account.lots:
            expiry_at = next_expiry_due(account, self.engine.expiry)
            if expiry_at is not None:
                self._expire_at(account.tenant_id, expiry_at)
        elif self.expiry_due:
            self.expiry_due.pop(account.tenant_id, None)

    def _expire_at(self, tenant: str, at: datetime) -> None:
        horizon = self.expiry_horizon
        if horizon is not None and at > horizon:
            self.expiry_due.pop(tenant, None)  # the rebuild that moves the horizon finds it
            return
        if self.expiry_due.get(tenant) != at:
            self.expiry_due[tenant] = at
            heapq.heappush(self._expiry_heap, (at, tenant))

    def rebuild_due(
        self,
        pending: Iterable[str],
        owned: Callable[[str], bool],
        expiring: Iterable[tuple[str, int]] = (),
    ) -> None:
        """After a rebalance: index the open requests of the tenants now owned here.

        `pending`: the owned tenants whose stored value has a request open; the batch
        being staged or flushed may have opened more. `expiring`: the owned tenants
        with lots and their first lot's expiry (epoch seconds), indexed without
        decoding their values: at the earliest its notice could be due, so at worst
        one tick finds nothing to do and indexes the tenant's exact time. Only those
        due within EXPIRY_HORIZON are indexed; `expiry_rebuild_due` says when to call
        this again for the next ones (also without a rebalance).
        """
        self.due.clear()
        self.expiry_due.clear()
        self._expiry_heap.clear()
        horizon = self.expiry_horizon = self.clock() + EXPIRY_HORIZON
        notice = self.engine.expiry.notice
        # Compared in epoch seconds: a datetime only for the few within the horizon.
        last = horizon.timestamp() + notice.total_seconds()
        for tenant, first in expiring:
            if first <= last and owned(tenant):
                self._expire_at(tenant, datetime.fromtimestamp(first, UTC) - notice)
        for tenant in dict.fromkeys([*pending, *self.accounts.staged_keys()]):
            stored = self.accounts.get(tenant)
            timed = stored is not None and (stored.account.pending or stored.account.lots)
            if stored is not None and timed and owned(tenant):
                self._track_due(stored.account)

    def fire_due(self) -> int:
        """Stage a tick for every request whose timeout or retry time has come.

        A tick goes through the timer topic to the tenant's owner like any other input,
        so the state change happens inside normal processing; repeats are harmless.
        """
        now = self.clock()
        fired = 0
        for tenant, due in list(self.due.items()):
            if due.at > now:
                continue
            self._owner = partition_for(tenant, self.partitions)
            tick = TimerTick(
                tick_id=f"{due.request_id}#{due.attempt}@{int(now.timestamp())}",
                tenant_id=tenant,
                request_id=due.request_id,
                attempt=due.attempt,
                at=now,
            )
            self._send(self.names.timer, tenant.encode(), dump_tick(tick))
            fired += 1
        return fired + self._fire_expiry(now)

    def expiry_rebuild_due(self) -> bool:
        """Whether half the expiry index's horizon has passed: time to rebuild it."""
        horizon = self.expiry_horizon
        return horizon is not None and self.clock() >= horizon - EXPIRY_HORIZON / 2

    def _fire_expiry(self, now: datetime) -> int:
        """Stage an expiry tick for every tenant whose lots are due (heap order).

        A fired tenant is looked at again after EXPIRY_REFIRE unless its tick was
        applied first (which indexes its next time): a tick lost with a crash is sent
        again, and a repeat finds nothing left to do.
        """
        heap, fired = self._expiry_heap, 0
        while heap and heap[0][0] <= now:
            at, tenant = heapq.heappop(heap)
            if self.expiry_due.get(tenant) != at:
                continue  # stale: re-indexed since
            self._owner = partition_for(tenant, self.partitions)
            tick = TimerTick(
                tick_id=f"expiry@{int(now.timestamp())}",
                tenant_id=tenant,
                request_id="",
                attempt=0,
                at=now,
                kind=EXPIRY_TICK,
            )
            self._send(self.names.timer, tenant.encode(), dump_tick(tick))
            self._expire_at(tenant, now + EXPIRY_REFIRE)
            fired += 1
        return fired


@fast_init
@dataclass(frozen=True, slots=True)
class _Flush:
    """A batch taken for flushing: its outputs, its account values and marks."""

    outputs: list[Out]
    accounts: dict[str, StoredAccount | None]
    marks: dict[str, Mark | None]
    held: list[Any]
    done: asyncio.Future[None]
    started: float


def _failure(exc: BaseException) -> Exception:
    return exc if isinstance(exc, Exception) else RuntimeError(f"flush stopped: {exc!r}")


def _ignore(tokens: list[Any], failure: Exception | None) -> None:
    pass


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _coordinates(rec: Record) -> dict[str, object]:
    return {
        "source_topic": rec.topic,
        "source_partition": rec.partition,
        "source_offset": rec.offset,
    }


def _tenant_in(value: bytes | None) -> str | None:
    """The tenant_id a record's body names, if it is a JSON object naming a valid one.

    Only for rejections of records whose key is too long to reuse (rare): a parse."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    tenant = body.get("tenant_id") if isinstance(body, dict) else None
    if isinstance(tenant, str) and _TENANT_RE.fullmatch(tenant):
        return tenant
    return None
