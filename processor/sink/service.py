"""The ledger sink's consumer: Kafka's committed outputs into the SQL store, exactly once.

A plain aiokafka consumer in its own group (`<METER_APP_ID>-ledger-sink`), reading
`read_committed` (the processor writes its outputs in transactions; an aborted copy
is never seen) from `credits.ledger`, `credits.recharge-requests`, `credits.commands`
(for the recharge outcomes: `funds_added` from auto-recharge and `recharge_failed`;
and, added, every command as pending), `credits.command-results` (added: each
command's outcome, served as `GET /commands/{command_id}`) and `credits.alerts`
(added: with the ledger and the commands, they keep the tenants table,
processor/sink/tenants.py). Each poll becomes one database transaction holding its
rows and the position it reached (`LedgerStore.write`); whenever partitions are
assigned, the consumer seeks to the positions the database holds, so Kafka's
committed offsets (committed too, after the database, for lag monitoring only) are
never what it resumes from.

A record that is not what the contract says (a foreign producer on the topic, a
command the processor rejects) becomes no row: it is logged with its coordinates and
counted, and its position is still written, so it never stops the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from processor.kafka.stored_positions import SeekToStored
from processor.sink.store import Batch, LedgerStore
from processor.sink.tenants import TenantEvent
from schemas.inputs import (
    AutoRechargeConfigured,
    DecodeError,
    FundsAdded,
    RechargeFailed,
    TenantLimitsConfigured,
    decode_command,
)
from schemas.outputs import BalanceAlert, CommandResult, LedgerEntry, RechargeRequested

__all__ = ["LedgerSink", "SinkStats", "SinkTopics", "group_id", "rows_of", "storable"]

log = logging.getLogger("processor.sink")


def group_id(app_id: str) -> str:
    """The sink's consumer group: its own, beside the workers' `<app id>`."""
    return f"{app_id}-ledger-sink"


@dataclass(frozen=True)
class SinkTopics:
    ledger: str
    recharge_requests: str
    commands: str
    # Added: each command's outcome (GET /commands/{command_id}).
    command_results: str = "credits.command-results"
    # Added: the alerts feed the tenants table (status, suspension); None reads none.
    alerts: str | None = None

    def all(self) -> tuple[str, ...]:
        alerts = () if self.alerts is None else (self.alerts,)
        return (
            self.ledger,
            self.recharge_requests,
            self.commands,
            self.command_results,
            *alerts,
        )


@dataclass
class SinkStats:
    batches: int = 0
    records: int = 0
    rows: int = 0
    skipped: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


def storable(text: str) -> str:
    """`text` as every database stores it: PostgreSQL refuses NUL in text, and no
    driver encodes a lone surrogate (which JSON's "\\ud800" decodes to)."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def rows_of(
    records: Mapping[TopicPartition, Sequence[Any]], topics: SinkTopics, stats: SinkStats
) -> Batch:
    """The rows, and the positions reached, of one poll's records."""
    batch = Batch()
    for tp, items in records.items():
        if not items:
            continue
        for record in items:
            stats.records += 1
            try:
                _add(batch, tp, record, topics)
            except Exception as exc:  # one bad record must never stop the sink
                if isinstance(exc, ValidationError | DecodeError | ValueError):
                    reason = "invalid"
                else:
                    reason = "internal_error"
                stats.skipped += 1
                stats.by_reason[reason] = stats.by_reason.get(reason, 0) + 1
                log.warning(
                    "ledger-sink: %s[%d]@%d is not a contract record, no row: %s",
                    tp.topic,
                    tp.partition,
                    record.offset,
                    str(exc).splitlines()[0][:300],
                )
        batch.positions[(tp.topic, tp.partition)] = items[-1].offset + 1
    return batch


def _add(batch: Batch, tp: TopicPartition, record: Any, topics: SinkTopics) -> None:
    where = {"source_partition": tp.partition, "source_offset": record.offset}
    value = record.value
    if value is None:
        raise ValueError("a null value (tombstone)")
    if tp.topic == topics.ledger:
        entry = LedgerEntry.model_validate_json(value)
        batch.ledger.append(
            {
                "entry_id": entry.entry_id,
                "tenant_id": entry.tenant_id,
                "kind": entry.kind,
                "amount": entry.amount,
                "currency": entry.currency,
                "balance_after": entry.balance_after,
                "cause_topic": storable(entry.cause_topic),
                "cause_id": entry.cause_id,
                "occurred_at": entry.occurred_at,
                "recorded_at": entry.recorded_at,
                "rate_prefix": entry.rate_prefix,
                "rate_per_minute": entry.rate_per_minute,
                "billed_seconds": entry.billed_seconds,
                "actor": entry.actor,
                **where,
            }
        )
        batch.events.append(
            TenantEvent(
                "ledger",
                record.offset,
                entry.tenant_id,
                entry.recorded_at,
                "entry",
                {"balance_after": entry.balance_after, "currency": entry.currency},
            )
        )
    elif tp.topic == topics.alerts:
        alert = BalanceAlert.model_validate_json(value)
        batch.events.append(
            TenantEvent(
                "alerts",
                record.offset,
                alert.tenant_id,
                alert.occurred_at,
                "alert",
                {
                    "alert": alert.alert,
                    "currency": alert.currency,
                    "status_seq": alert.status_seq,
                    "reason": None if alert.reason is None else storable(alert.reason),
                },
            )
        )
    elif tp.topic == topics.recharge_requests:
        request = RechargeRequested.model_validate_json(value)
        batch.requests.append(
            {
                "request_id": request.request_id,
                "attempt": request.attempt,
                "tenant_id": request.tenant_id,
                "amount": request.amount,
                "currency": request.currency,
                "trigger_balance": request.trigger_balance,
                "balance": request.balance,
                "requested_at": request.requested_at,
                **where,
            }
        )
    elif tp.topic == topics.command_results:
        result = CommandResult.model_validate_json(value)
        batch.result(
            {
                "tenant_id": result.tenant_id,
                "command_id": result.command_id,
                "command_type": result.command_type,
                "status": result.outcome,
                "entry_id": result.entry_id,
                "reason": result.reason,
                "detail": None if result.detail is None else storable(result.detail),
                "occurred_at": None,
                "recorded_at": result.recorded_at,
            }
        )
    elif tp.topic == topics.commands:
        command = decode_command(value)
        _command_event(batch, record.offset, command)
        # Every command is pending until its result arrives (added).
        batch.seen(
            {
                "tenant_id": command.tenant_id,
                "command_id": command.command_id,
                "command_type": command.type,
                "status": "pending",
                "entry_id": None,
                "reason": None,
                "detail": None,
                "occurred_at": command.occurred_at,
                "recorded_at": None,
            }
        )
        if isinstance(command, FundsAdded) and command.source == "auto_recharge":
            assert command.recharge_request_id is not None  # the model's rule
            batch.outcomes.append(
                {
                    "command_id": command.command_id,
                    "tenant_id": command.tenant_id,
                    "type": command.type,
                    "recharge_request_id": command.recharge_request_id,
                    "attempt": command.attempt,
                    "amount": command.amount,
                    "currency": command.currency,
                    "reason": None,
                    "occurred_at": command.occurred_at,
                    **where,
                }
            )
        elif isinstance(command, RechargeFailed):
            batch.outcomes.append(
                {
                    "command_id": command.command_id,
                    "tenant_id": command.tenant_id,
                    "type": command.type,
                    "recharge_request_id": command.recharge_request_id,
                    "attempt": command.attempt,
                    "amount": None,
                    "currency": None,
                    "reason": storable(command.reason),
                    "occurred_at": command.occurred_at,
                    **where,
                }
            )
        # Other commands (manual funds, settings) are no recharge outcome: no row.


def _command_event(batch: Batch, offset: int, command: Any) -> None:
    """What a command tells the tenants table (settings, limits, billing's answers)."""
    fields: dict[str, Any] = {}
    if isinstance(command, AutoRechargeConfigured):
        kind = "auto_recharge_configured"
        fields["trigger_balance"] = command.trigger_balance
    elif isinstance(command, TenantLimitsConfigured):
        kind = "tenant_limits_configured"
        fields = {
            name: getattr(command, name)
            for name in ("credit_limit", "notify_below")
            if name in command.model_fields_set
        }
    elif isinstance(command, FundsAdded):
        kind = "recharge_succeeded" if command.source == "auto_recharge" else "manual_funds"
    elif isinstance(command, RechargeFailed):
        kind = "recharge_failed"
        fields["reason"] = storable(command.reason)
    else:
        return
    batch.events.append(
        TenantEvent("commands", offset, command.tenant_id, command.occurred_at, kind, fields)
    )


class LedgerSink:
    def __init__(
        self,
        store: LedgerStore,
        bootstrap: str,
        topics: SinkTopics,
        group: str,
        *,
        client_options: Mapping[str, Any] | None = None,
        max_records: int = 5000,
    ) -> None:
        self.store = store
        self.topics = topics
        self.group = group
        self.max_records = max_records
        self.stats = SinkStats()
        self.writing = asyncio.Lock()
        self.assigned_once = asyncio.Event()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            # Topics the workers have not created yet are picked up within seconds.
            metadata_max_age_ms=5000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **dict(client_options or {}),
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.start()
        try:
            seeker = SeekToStored(self, "ledger-sink")
            self.consumer.subscribe(list(self.topics.all()), listener=seeker)
            while not stop.is_set():
                records = await self.consumer.getmany(timeout_ms=500, max_records=self.max_records)
                if not records:
                    continue
                async with self.writing:
                    batch = rows_of(records, self.topics, self.stats)
                    await self.store.write(self.group, batch)
                self.stats.batches += 1
                self.stats.rows += len(batch)
                # Only for lag monitoring: the sink resumes from the database.
                with contextlib.suppress(KafkaError):
                    await self.consumer.commit(
                        {TopicPartition(t, p): o for (t, p), o in batch.positions.items()}
                    )
        finally:
            await self.consumer.stop()


async def serve(
    store: LedgerStore,
    sink: LedgerSink,
    host: str,
    port: int,
    stop: asyncio.Event,
    access: Any = None,
) -> None:
    """The consumer and the query API until `stop` is set (or the consumer fails).

    `access`: who may query (processor/http/auth.py); None: anyone, as before.
    """
    from aiohttp import web

    from processor.sink.http import build_app

    app = build_app(store, sink.assigned_once.is_set, access)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("ledger-sink: query API on http://%s:%d", host, port)
        await sink.run(stop)
    finally:
        await runner.cleanup()
