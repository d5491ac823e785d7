"""`meter notifier`'s consumer and delivery loop.

Three loops in one process, none of which imports Faust:

- **Settings** (`SettingsBook`, settings_book.py): every notifier reads
  `credits.notification-settings` (compacted, keyed by tenant) whole, from the
  beginning, with no consumer group, and keeps the latest settings of every tenant in
  memory.
- **Consumer** (`Notifier.consume`): group `<METER_APP_ID>-notifier`, read_committed,
  on `credits.alerts`. Each poll becomes, in one database transaction, the
  deliveries its alerts make (one per channel the tenant configured for the event)
  and the positions the poll reached; on assignment the consumer seeks to the
  positions the database holds, as the ledger sink does. Before a poll's rows are
  made, the settings book catches up with the settings topic's end (its last stable
  offset): settings committed before an alert are applied to it.
- **Delivery** (`Notifier.deliver`): takes due rows from the outbox with a lease, each
  sent by its own task (at most `concurrency`, at most `per_tenant` per tenant, so a
  tenant whose endpoint hangs holds a few slots for one timeout, never the others'),
  marks each `sent` after its 2xx/250, or schedules the next try with exponential
  back-off (`backoff` x 2^(tries-1), at most an hour) until `give_up` after the row
  was made.

Scaling: run several notifiers in one group against one PostgreSQL database; Kafka
shares the alert partitions between them, and the outbox's leases share the sending.
A rebalance changes only who reads: a partition's new owner resumes from the
positions in the database (a batch written by the old owner is never read again,
one read twice adds nothing: rows are keyed), and rows already in the outbox are
sent by whichever notifier takes them. With SQLite (the default), run one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from processor.kafka.stored_positions import SeekToStored
from processor.notifier.channels import EmailChannel, Failure, WebhookChannel
from processor.notifier.events import notification_of, selected
from processor.notifier.settings_book import SettingsBook
from processor.notifier.store import PENDING, Delivery, OutboxStore
from processor.observability import metrics

__all__ = ["Notifier", "NotifierConfig", "group_id"]

log = logging.getLogger("processor.notifier")


def group_id(app_id: str) -> str:
    """The notifiers' consumer group, beside the workers' `<app id>`."""
    return f"{app_id}-notifier"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NotifierConfig:
    # Each try's limit (METER_NOTIFY_TIMEOUT_SECONDS).
    timeout: float = 10.0
    # The first retry's wait; each next one doubles, at most `max_backoff`.
    backoff: float = 5.0
    max_backoff: float = 3600.0
    # Retries stop this long after the delivery was made (METER_NOTIFY_GIVE_UP_HOURS);
    # an alert already older than this when read is not sent at all.
    give_up: timedelta = timedelta(hours=24)
    concurrency: int = 32
    per_tenant: int = 4
    poll_seconds: float = 0.5

    @property
    def lease(self) -> timedelta:
        """How long a taken row is this notifier's: past one try and its bookkeeping,
        so only a notifier that died mid-try lets it go to another."""
        return timedelta(seconds=2 * self.timeout + 5)

    def retry_after(self, tries: int) -> timedelta:
        return timedelta(seconds=min(self.backoff * 2 ** max(0, tries - 1), self.max_backoff))


# ---------------------------------------------------------------------------- notifier


@dataclass
class NotifierStats:
    records: int = 0
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class Notifier:
    def __init__(
        self,
        store: OutboxStore,
        book: SettingsBook,
        bootstrap: str,
        alerts_topic: str,
        group: str,
        *,
        email: EmailChannel | None,
        webhook: WebhookChannel,
        config: NotifierConfig | None = None,
        client_options: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.book = book
        self.topic = alerts_topic
        self.group = group
        self.email = email
        self.webhook = webhook
        self.config = config or NotifierConfig()
        self.clock = clock
        # Who holds a lease: this process, however many share the database.
        self.owner = f"{uuid.uuid4()}"
        self.stats = NotifierStats()
        self.writing = asyncio.Lock()
        self.assigned_once = asyncio.Event()
        self._wake = asyncio.Event()
        self._busy: dict[str, int] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "auto_offset_reset": "earliest",
            "metadata_max_age_ms": 5000,
            **dict(client_options or {}),
        }
        self.consumer: Any = None

    @property
    def ready(self) -> bool:
        return self.assigned_once.is_set() and self.book.loaded.is_set()

    # ---- the whole service ---------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.book.start(stop)
        self.consumer = AIOKafkaConsumer(**self._options)
        await self.consumer.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            self.consumer.subscribe([self.topic], listener=SeekToStored(self, "notifier"))
            tasks = [
                asyncio.create_task(self.book.run(stop), name="notifier-settings"),
                asyncio.create_task(self.consume(stop), name="notifier-consume"),
                asyncio.create_task(self.deliver(stop), name="notifier-deliver"),
            ]
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            for task in done:
                if task is not stopping and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *self.inflight, return_exceptions=True)
            await self.consumer.stop()
            await self.book.stop()
            await self.webhook.close()

    # ---- consuming -----------------------------------------------------------------

    async def consume(self, stop: asyncio.Event) -> None:
        await self.book.loaded.wait()
        while not stop.is_set():
            records = await self.consumer.getmany(timeout_ms=500, max_records=1000)
            if not records:
                continue
            async with self.writing:
                await self.book.caught_up(stop)
                rows, positions = self.rows_of(records)
                await self.store.write(self.group, rows, positions)
            self.stats.rows += len(rows)
            if rows:
                self._wake.set()
            with contextlib.suppress(KafkaError):
                await self.consumer.commit(
                    {TopicPartition(t, p): o for (t, p), o in positions.items()}
                )

    def rows_of(
        self, records: Mapping[TopicPartition, Sequence[Any]]
    ) -> tuple[list[dict[str, Any]], dict[tuple[str, int], int]]:
        rows: list[dict[str, Any]] = []
        positions: dict[tuple[str, int], int] = {}
        now = self.clock()
        for tp, items in records.items():
            if not items:
                continue
            for record in items:
                self.stats.records += 1
                try:
                    rows += self._rows_of(tp, record, now)
                except Exception as exc:  # one bad record must never stop the notifier
                    self.stats.skip("invalid")
                    log.warning(
                        "notifier: %s[%d]@%d is not an alert, nothing sent: %s",
                        tp.topic,
                        tp.partition,
                        record.offset,
                        str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
                    )
            positions[(tp.topic, tp.partition)] = items[-1].offset + 1
        return rows, positions

    def _rows_of(self, tp: TopicPartition, record: Any, now: datetime) -> list[dict[str, Any]]:
        notification = notification_of(record.value)
        if notification is None:
            self.stats.skip("not_notified")
            return []
        settings = self.book.get(notification.tenant_id)
        if settings is None or not selected(settings, notification.event):
            self.stats.skip("not_selected")
            return []
        if notification.occurred_at < now - self.config.give_up:
            self.stats.skip("too_old")
            return []
        body = notification.body()
        base = {
            "output_id": notification.output_id,
            "tenant_id": notification.tenant_id,
            "event": notification.event,
            "payload": body,
            "occurred_at": notification.occurred_at,
            "created_at": now,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "source_partition": tp.partition,
            "source_offset": record.offset,
        }
        rows = []
        if settings.emails:
            if self.email is None:
                self.stats.skip("smtp_not_configured")
            else:
                rows.append(
                    {
                        **base,
                        "delivery_id": f"{notification.output_id}/email",
                        "channel": "email",
                        "target": ",".join(settings.emails),
                        "sealed_secret": None,
                    }
                )
        if settings.webhook_url is not None:
            rows.append(
                {
                    **base,
                    "delivery_id": f"{notification.output_id}/webhook",
                    "channel": "webhook",
                    "target": settings.webhook_url,
                    "sealed_secret": settings.webhook_secret_sealed,
                }
            )
        return rows

    # ---- delivering ----------------------------------------------------------------

    async def deliver(self, stop: asyncio.Event) -> None:
        cfg = self.config
        gauge = metrics.NOTIFICATION_OUTBOX.labels("pending")
        last_depth = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            free = cfg.concurrency - len(self.inflight)
            if free > 0:
                now = self.clock()
                taken = await self.store.claim(
                    self.owner, now, now + cfg.lease, free, self._busy, cfg.per_tenant
                )
                for delivery in taken:
                    self._start(delivery)
            if loop.time() - last_depth >= 2.0:
                gauge.set(await self.store.depth())
                last_depth = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), cfg.poll_seconds)
            self._wake.clear()

    def _start(self, delivery: Delivery) -> None:
        self._busy[delivery.tenant_id] = self._busy.get(delivery.tenant_id, 0) + 1
        task = asyncio.create_task(self._send(delivery))
        self.inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.inflight.discard(t)
            left = self._busy.get(delivery.tenant_id, 1) - 1
            if left:
                self._busy[delivery.tenant_id] = left
            else:
                self._busy.pop(delivery.tenant_id, None)
            if not t.cancelled() and t.exception() is not None:
                log.error("notifier: delivery %s: %r", delivery.delivery_id, t.exception())
            self._wake.set()

        task.add_done_callback(done)

    async def _send(self, delivery: Delivery) -> None:
        cfg = self.config
        now = self.clock()
        try:
            # A hard stop beyond the channel's own timeout, so no try holds a slot longer.
            async with asyncio.timeout(cfg.timeout + 5):
                if delivery.channel == "email":
                    if self.email is None:
                        raise Failure("email: METER_SMTP_HOST is not set")
                    await self.email.send(delivery)
                else:
                    await self.webhook.send(delivery, now)
        except (Failure, TimeoutError) as exc:
            error = str(exc) or f"no answer within {cfg.timeout + 5:g} s"
            await self._failed(delivery, error, now)
            return
        except Exception as exc:
            await self._failed(delivery, f"internal_error: {type(exc).__name__}", now)
            raise
        done_at = self.clock()
        await self.store.sent(delivery.delivery_id, self.owner, done_at)
        metrics.NOTIFICATIONS.labels(delivery.channel, "sent").inc()
        metrics.NOTIFICATION_LATENCY.labels(delivery.channel).observe(
            max(0.0, (done_at - delivery.occurred_at).total_seconds())
        )
        log.info(
            "notifier: %s %s to tenant %s sent (try %d)",
            delivery.event,
            delivery.channel,
            delivery.tenant_id,
            delivery.attempts + 1,
            extra={"tenant_id": delivery.tenant_id, "delivery_id": delivery.delivery_id},
        )

    async def _failed(self, delivery: Delivery, error: str, now: datetime) -> None:
        tries = delivery.attempts + 1
        next_at = now + self.config.retry_after(tries)
        if next_at > delivery.created_at + self.config.give_up:
            await self.store.failed(delivery.delivery_id, error, None)
            metrics.NOTIFICATIONS.labels(delivery.channel, "gave_up").inc()
            log.warning(
                "notifier: %s %s to tenant %s given up after %d tries: %s",
                delivery.event,
                delivery.channel,
                delivery.tenant_id,
                tries,
                error,
            )
            return
        await self.store.failed(delivery.delivery_id, error, next_at)
        metrics.NOTIFICATIONS.labels(delivery.channel, "retry").inc()
        log.info(
            "notifier: %s %s to tenant %s failed (try %d, next in %.1f s): %s",
            delivery.event,
            delivery.channel,
            delivery.tenant_id,
            tries,
            (next_at - now).total_seconds(),
            error,
        )
