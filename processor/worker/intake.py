"""Intake: one input record through the engine: decode, route, apply, reject, reroute.

Each `stage*` takes one record without waiting on anything: its outputs go to the
flusher (`send`), its account value and seen mark to the staged views the engine was
given, and the flusher lands them (processor/worker/flusher.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson

from processor.core.engine import Engine
from processor.core.outcome import Outcome, Status
from processor.core.outputs import AlertOut, LedgerOut, NotificationsOut, RechargeOut
from processor.core.usage import UsageEvent
from processor.kafka import wire
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.kafka.usage_wire import read_call, read_conference
from processor.kafka.wire import dump_output, load_tick
from processor.observability.worker_hooks import WorkerHooks
from processor.worker import sizing
from processor.worker.due import DueIndex
from processor.worker.records import (
    H_FORCE_TOO_OLD,
    H_KEY,
    H_KEY_SHA256,
    H_KEY_SIZE,
    H_OFFSET,
    H_PARTITION,
    H_REPLAY_OF,
    H_SOURCE,
    H_TOPIC,
    Out,
    Record,
    Source,
    utcnow,
)
from processor.worker.sizing import KeyFacts, Limits
from schemas import Command, DecodeError, decode_command
from schemas.inputs import COMMAND_TYPES
from schemas.types import ID_PATTERN, TENANT_ID_PATTERN

log = logging.getLogger(__name__)
_TENANT_RE = re.compile(TENANT_ID_PATTERN.removeprefix("^").removesuffix("$"))
_COMMAND_ID_RE = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))


class Intake:
    """Decodes, routes and applies records, staging what each one causes."""

    def __init__(
        self,
        engine: Engine,
        names: TopicNames,
        partitions: int,
        send: Callable[[Out], None],
        due: DueIndex,
        hooks: WorkerHooks,
        clock: Callable[[], datetime] = utcnow,
        limits: Limits | None = None,
    ) -> None:
        self.engine = engine
        self.names = names
        self.partitions = partitions
        self._send_out = send
        self.due = due
        self.hooks = hooks
        self.clock = clock
        self.currency = engine.card.currency
        # The largest record each output topic takes (processor/worker/sizing.py).
        self.limits = limits or Limits()
        # The partition number of the record being processed: its outputs' transaction.
        self._owner = -1
        self._decoders: dict[Source, Callable[[bytes | None], UsageEvent | Command]] = {
            Source.CALLS: read_call,
            Source.CONFERENCING: read_conference,
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
            self.reject(rec, "invalid_event", "re-routed record without its origin headers")
            return "rejected"
        force = rec.header(H_FORCE_TOO_OLD) == b"1"  # set by `_reroute`, and only there
        return self._process(source, rec, origin=origin, rerouted=True, force_too_old=force)

    def stage_tick(self, rec: Record) -> str:
        started = time.perf_counter()
        self._owner = rec.partition
        try:
            tick = load_tick(rec.value or b"")
        except (ValueError, KeyError, TypeError) as exc:
            self.reject(rec, "invalid_event", f"unreadable timer tick: {exc!r}")
            return "rejected"
        outcome = self.engine.timer(tick, self.names.timer, rec.position, rec.generation)
        self._finish("timer", outcome, rec, started)
        return outcome.status

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
        # A StrEnum member is a str equal to its value: `.value` would cost a call of
        # enum's descriptor, interpreted, on every record.
        label: str = source
        try:
            event = self._decoders[source](rec.value)
        except DecodeError as err:
            self.reject(origin, err.reason, err.detail)
            if source is Source.COMMANDS:
                self._undecoded_result(rec.value, err.reason, err.detail)
            self.hooks.record(label, "rejected")
            return "rejected"
        tenant = event.tenant_id
        if not rerouted and rec.partition != partition_for(tenant, self.partitions):
            if not self._reroute(source, rec, tenant, force_too_old):
                self.hooks.record(label, "rejected")
                return "rejected"
            self.hooks.record(label, "rerouted")
            return "rerouted"
        cause_topic = self._topics[source]
        now = self.clock()
        # A re-routed record is applied at its position in the re-route topic.
        position = rec.position
        generation = rec.generation
        try:
            if isinstance(event, UsageEvent):
                outcome = self.engine.usage(
                    event, cause_topic, now, position, force_too_old, generation
                )
            else:
                outcome = self.engine.command(
                    event, cause_topic, now, position, force_too_old, generation
                )
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
            self.reject(origin, "internal_error", detail, tenant)
            if not isinstance(event, UsageEvent):
                self._command_result(event, "rejected", None, "internal_error", detail)
            self.hooks.record(label, "rejected")
            return "rejected"
        if outcome.status is Status.APPLIED:
            lag = (now - event.occurred_at).total_seconds()
            self.hooks.event_lag(max(0.0, lag))
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
        if not isinstance(event, UsageEvent):
            self._result_of(event, outcome)
        return outcome.status

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
            self.reject(
                origin, outcome.rejection.reason, outcome.rejection.detail, outcome.tenant_id
            )
        key = outcome.tenant_id.encode()
        for out in outcome.outputs:
            self._send(self._output_topics[type(out)], key, dump_output(out, self.currency))
            if outcome.status is Status.APPLIED:
                self.hooks.applied_output(out)
        for what in outcome.recharge:
            self.hooks.recharge_outcome(what)
        if outcome.account is not None:
            self.due.track(outcome.account)
        self.hooks.record(label, outcome.status)
        self.hooks.processing(time.perf_counter() - started)

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
            self.reject(
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

    def reject(self, rec: Record, reason: str, detail: str, tenant: str | None = None) -> None:
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
        self.hooks.rejected(reason)
        log.info(
            "rejected %s[%d]@%d: %s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            reason,
            detail[:500],
            extra={"reason": reason, **_coordinates(rec)},
        )

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        self._send_out(Out(topic, key, value, headers, owner=self._owner))


def minimal_rejection(names: TopicNames, clock: Callable[[], datetime], out: Out) -> Out | None:
    """What to produce instead of `out` when the broker refused it for its size.

    A rejection or a re-route becomes a minimal rejection (reason, a short
    detail, coordinates, sizes, hashes; no key, no payload: the original is at
    its source offset); any other output has no stand-in (None). The publisher's
    fallback (processor/worker/publisher.py), given `names` and `clock` beforehand.
    """
    if out.topic == names.rejected and out.value is not None:
        value = sizing.minimal_from_rejection(out.value)
        return None if value is None else Out(names.rejected, None, value)
    if out.topic == names.reroute:
        headers = dict(out.headers or ())
        try:
            partition = int(headers.get(H_PARTITION, b"-1"))
            offset = int(headers.get(H_OFFSET, b"-1"))
            topic = headers.get(H_TOPIC, b"").decode()
        except (ValueError, UnicodeDecodeError):
            return None
        body = wire.refused_reroute(names.reroute, topic, partition, offset, clock())
        if H_KEY_SIZE in headers and H_KEY_SHA256 in headers:
            body["key_size"] = int(headers[H_KEY_SIZE])
            body["key_sha256"] = headers[H_KEY_SHA256].decode("ascii", "replace")
        elif H_KEY in headers:
            body["key_size"] = len(headers[H_KEY])
            body["key_sha256"] = sizing.sha256_hex(headers[H_KEY])
        return Out(names.rejected, None, sizing.minimal_value(body, out.value))
    return None


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
