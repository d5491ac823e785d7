"""The notifier's durable outbox: what to tell whom, and how far the consumer read.

The same engine choice as the ledger sink (`processor.sink.store`): SQLite in
METER_DATA_DIR by default (`notifier.sqlite3`), PostgreSQL with METER_DATABASE_URL
(its own tables and Alembic version table, so it may share the sink's database).

At least once, and never twice on purpose:

- a consumed batch's deliveries and the consumer's positions go into one
  transaction (`write`); a delivery's key is `<output id>/<channel>`, inserted with
  ON CONFLICT DO NOTHING, so a batch read again (after a crash or a rebalance) adds
  nothing;
- the delivery loop takes due rows with a lease (`claim`): a conditional UPDATE, so
  two notifiers sharing a database never send one row at once, and a notifier killed
  mid-delivery leaves a lease that runs out, after which the row is sent again with
  the same ids;
- a row is marked `sent` after the receiver's 2xx (or the SMTP server's 250) and is
  never taken again; `gave_up` once its retries pass the give-up time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from processor.storage.sql import (
    UtcDateTime,
    read_positions,
    sqlite_pragmas,
    upgrade,
    write_positions,
)

__all__ = ["MIGRATIONS", "SQLITE_FILE", "Delivery", "OutboxStore"]

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
SQLITE_FILE: Final = "notifier.sqlite3"

PENDING: Final = "pending"
SENT: Final = "sent"
GAVE_UP: Final = "gave_up"

metadata: Final = sa.MetaData()

outbox: Final = sa.Table(
    "notifier_outbox",
    metadata,
    sa.Column("delivery_id", sa.Text, primary_key=True),
    sa.Column("output_id", sa.Text, nullable=False),
    sa.Column("tenant_id", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    # The webhook URL, or the email recipients (comma-separated), as configured when
    # the alert was read.
    sa.Column("target", sa.Text, nullable=False),
    # The webhook secret as the admin API sealed it; opened only to sign.
    sa.Column("sealed_secret", sa.Text),
    # The notification's JSON (the webhook body), the same bytes on every try.
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("occurred_at", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("claimed_by", sa.Text),
    sa.Column("claimed_until", UtcDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("sent_at", UtcDateTime),
    sa.Column("source_partition", sa.Integer, nullable=False),
    sa.Column("source_offset", sa.BigInteger, nullable=False),
)

offsets: Final = sa.Table(
    "notifier_offsets",
    metadata,
    sa.Column("consumer_group", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Delivery:
    """One row taken for sending."""

    delivery_id: str
    output_id: str
    tenant_id: str
    event: str
    channel: str
    target: str
    sealed_secret: str | None
    payload: str
    occurred_at: datetime
    created_at: datetime
    attempts: int

    @classmethod
    def of(cls, m: Any) -> Delivery:
        """From a row's mapping (`Result.mappings()`)."""
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


class OutboxStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._insert: Any = postgresql_insert if self.dialect == "postgresql" else sqlite_insert

    @classmethod
    async def open(cls, url: str) -> OutboxStore:
        engine = create_async_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        store = cls(engine)
        async with engine.begin() as conn:
            if store.dialect == "postgresql":
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(2126022)"))
            await conn.run_sync(upgrade, MIGRATIONS)
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    async def positions(
        self, group: str, tps: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        return await read_positions(self.engine, offsets, group, tps)

    async def write(
        self, group: str, rows: Sequence[dict[str, Any]], positions: dict[tuple[str, int], int]
    ) -> None:
        """A consumed batch's deliveries and the positions it reached, together."""
        async with self.engine.begin() as conn:
            if rows:
                await conn.execute(self._insert(outbox).on_conflict_do_nothing(), list(rows))
            await write_positions(conn, self._insert, offsets, group, positions)

    async def claim(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        busy: dict[str, int] | None = None,
        per_tenant: int = 4,
    ) -> list[Delivery]:
        """Take up to `limit` due rows for `owner` until `lease_until`.

        At most `per_tenant` rows of one tenant are in flight (`busy` counts this
        notifier's), so one tenant's failing endpoint cannot take every slot.
        """
        t = outbox.c
        free = sa.or_(t.claimed_until.is_(None), t.claimed_until <= now)
        query = (
            sa.select(outbox)
            .where(t.status == PENDING, t.next_attempt_at <= now, free)
            .order_by(t.next_attempt_at)
            .limit(limit * 4)
        )
        taken: list[Delivery] = []
        counts = dict(busy or {})
        async with self.engine.begin() as conn:
            candidates = [Delivery.of(m) for m in (await conn.execute(query)).mappings().all()]
            for row in candidates:
                if len(taken) >= limit:
                    break
                if counts.get(row.tenant_id, 0) >= per_tenant:
                    continue
                result = await conn.execute(
                    sa.update(outbox)
                    .where(t.delivery_id == row.delivery_id, t.status == PENDING, free)
                    .values(claimed_by=owner, claimed_until=lease_until)
                )
                if result.rowcount == 1:
                    taken.append(row)
                    counts[row.tenant_id] = counts.get(row.tenant_id, 0) + 1
        return taken

    async def sent(self, delivery_id: str, owner: str, now: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.delivery_id == delivery_id)
                .values(
                    status=SENT,
                    sent_at=now,
                    attempts=outbox.c.attempts + 1,
                    claimed_by=None,
                    claimed_until=None,
                    last_error=None,
                )
            )

    async def failed(self, delivery_id: str, error: str, next_attempt_at: datetime | None) -> None:
        """A try failed: due again at `next_attempt_at`, or given up (None)."""
        values: dict[str, Any] = {
            "attempts": outbox.c.attempts + 1,
            "claimed_by": None,
            "claimed_until": None,
            "last_error": error[:1000],
        }
        if next_attempt_at is None:
            values["status"] = GAVE_UP
        else:
            values["next_attempt_at"] = next_attempt_at
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(outbox).where(outbox.c.delivery_id == delivery_id).values(**values)
            )

    async def depth(self) -> int:
        """Deliveries not yet sent nor given up: the outbox's queue depth."""
        async with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status == PENDING)
            return int((await conn.execute(query)).scalar_one())

    async def rows(self) -> list[dict[str, Any]]:
        """Every row, for tests and operators."""
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.select(outbox).order_by(outbox.c.created_at))
            return [dict(m) for m in result.mappings().all()]
