"""The ledger sink's SQL store: exactly-once batch writes, and the queries.

SQLite (aiosqlite, a file under METER_DATA_DIR) by default, PostgreSQL (asyncpg) when
METER_DATABASE_URL says so; SQLAlchemy 2's async engine either way, the schema made
by Alembic (`migrations/`) when the store opens; its tables are in schema.py.

Exactly once into the database: every row has the key of what it records
(`entry_id`; `request_id` + `attempt`; a command's `command_id`) and is inserted with
ON CONFLICT DO NOTHING, and the Kafka position each batch reached is written in the
same transaction as its rows (`sink_offsets`). The consumer resumes from those
positions, never from Kafka's committed offsets, so a crash at any point either
leaves a batch out entirely (and it is read again) or in entirely (and reading
continues after it).

Money is exact: NUMERIC on PostgreSQL, the decimal text on SQLite (whose NUMERIC
affinity would store a binary float); sums are taken in Python's Decimal, never in
floating point.
"""

from __future__ import annotations

import base64
import binascii
import decimal
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from processor.sink.schema import (
    commands,
    ledger_entries,
    recharge_outcomes,
    recharge_requests,
    sink_offsets,
)
from processor.storage.sql import (
    database_url,
    read_positions,
    safe_url,
    sqlite_pragmas,
    upgrade,
    write_positions,
)
from schemas.types import format_money, format_timestamp

__all__ = [
    "MIGRATIONS",
    "Batch",
    "Cursor",
    "LedgerStore",
    "UsageBucket",
    "database_url",
    "decode_cursor",
    "encode_cursor",
    "safe_url",
]

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
# Decimal arithmetic for sums: wide enough for any sum of contract amounts (18
# integer and 12 fraction digits each), and it raises instead of rounding.
_EXACT: Final = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.Rounded])


# ------------------------------------------------------------------------- cursors


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in a tenant's ledger: its entries' Kafka coordinates."""

    partition: int
    offset: int


def encode_cursor(cursor: Cursor) -> str:
    raw = f"{cursor.partition}.{cursor.offset}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The cursor in `text`; ValueError when it is not one this service made."""
    if not text or len(text) > 64:
        raise ValueError("not a cursor")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor") from None
    partition, dot, offset = raw.partition(".")
    if not dot or not partition.isdigit() or not offset.isdigit():
        raise ValueError("not a cursor")
    return Cursor(int(partition), int(offset))


# -------------------------------------------------------------------------- writes


@dataclass
class Batch:
    """What one poll of the consumer brought: rows per table, and where it ended.

    `positions` maps (topic, partition) to the next offset to read: the offset after
    the last record of the batch, whether that record became a row or not.
    """

    ledger: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    # Added: what each record tells about its tenant (the tenants table), in order.
    events: list[Any] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    # Added: commands seen (pending) and their results, by (tenant_id, command_id).
    pending: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.ledger)
            + len(self.requests)
            + len(self.outcomes)
            + len(self.pending)
            + len(self.results)
        )

    def seen(self, row: dict[str, Any]) -> None:
        """A command on credits.commands: pending, unless it has a status already."""
        self.pending.setdefault((row["tenant_id"], row["command_id"]), row)

    def result(self, row: dict[str, Any]) -> None:
        """A command's result: the first stands, but `applied` supersedes `rejected`."""
        key = (row["tenant_id"], row["command_id"])
        held = self.results.get(key)
        if held is None or supersedes(held["status"], row["status"]):
            self.results[key] = row


def supersedes(held: str, new: str) -> bool:
    """Whether a command's status `new` replaces `held`.

    A result replaces `pending`. Otherwise the first result stands (a replay after a
    crash publishes a rejection again, identical but for its time), except that
    `applied` replaces `rejected`: the same command re-sent and applied later (e.g.
    `meter replay-rejected` once the cause was fixed).
    """
    return held == "pending" or (held == "rejected" and new == "applied")


@dataclass(frozen=True)
class UsageBucket:
    key: str
    currency: str
    events: int
    billed_seconds: int
    amount: Decimal


GroupBy = Literal["day", "service"]


def service_of(cause_topic: str) -> str:
    """`calls` or `conferencing` for a usage topic (any prefix), else the topic."""
    for service in ("calls", "conferencing"):
        if cause_topic == f"usage.{service}" or cause_topic.endswith(f".usage.{service}"):
            return service
    return cause_topic


class LedgerStore:
    """One database: open it with `LedgerStore.open(url)` (migrates), then `close()`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._insert: Any = postgresql_insert if self.dialect == "postgresql" else sqlite_insert

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> LedgerStore:
        engine = create_async_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        store = cls(engine)
        if migrate:
            await store.migrate()
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to Alembic's head revision (a no-op when it is there)."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Sinks starting together migrate one after the other.
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(2126021)"))
            await conn.run_sync(_upgrade)

    async def positions(
        self, group: str, tps: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The next offset to read of each topic-partition the database knows of."""
        return await read_positions(self.engine, sink_offsets, group, tps)

    async def write(self, group: str, batch: Batch) -> None:
        """The batch's rows and its positions, in one transaction."""
        async with self.engine.begin() as conn:
            for table, rows in (
                (ledger_entries, batch.ledger),
                (recharge_requests, batch.requests),
                (recharge_outcomes, batch.outcomes),
            ):
                if rows:
                    await conn.execute(self._insert(table).on_conflict_do_nothing(), rows)
            c = commands.c
            if batch.pending:
                seen = self._insert(commands)
                seen = seen.on_conflict_do_update(
                    index_elements=["tenant_id", "command_id"],
                    # Its result came first: keep it, add when the command occurred.
                    set_={"occurred_at": seen.excluded.occurred_at},
                    where=c.occurred_at.is_(None),
                )
                await conn.execute(seen, list(batch.pending.values()))
            if batch.results:
                stmt = self._insert(commands)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["tenant_id", "command_id"],
                    set_={
                        name: getattr(stmt.excluded, name)
                        for name in ("status", "entry_id", "reason", "detail", "recorded_at")
                    },
                    # The rule of `supersedes`, in SQL.
                    where=(c.status == "pending")
                    | ((c.status == "rejected") & (stmt.excluded.status == "applied")),
                )
                await conn.execute(stmt, list(batch.results.values()))
            if batch.events:
                from processor.sink.tenants import apply_events  # it imports this module

                await apply_events(conn, batch.events)
            await write_positions(conn, self._insert, sink_offsets, group, batch.positions)

    # ------------------------------------------------------------------- queries

    async def ledger_page(
        self,
        tenant_id: str,
        *,
        before: Cursor | None = None,
        limit: int = 100,
        kinds: Sequence[str] = (),
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """Up to `limit` entries, newest first (ledger order), and the next page's cursor."""
        t = ledger_entries.c
        query = sa.select(ledger_entries).where(t.tenant_id == tenant_id)
        if kinds:
            query = query.where(t.kind.in_(list(kinds)))
        if before is not None:
            query = query.where(
                sa.tuple_(t.source_partition, t.source_offset)
                < sa.tuple_(sa.literal(before.partition), sa.literal(before.offset))
            )
        query = query.order_by(t.source_partition.desc(), t.source_offset.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = [dict(m) for m in (await conn.execute(query)).mappings().all()]
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = Cursor(rows[-1]["source_partition"], rows[-1]["source_offset"]) if more else None
        return rows, cursor

    async def statement(
        self, tenant_id: str, *, chunk: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every entry of the tenant, oldest first, in chunks (keyset pages)."""
        t = ledger_entries.c
        after: tuple[int, int] | None = None
        while True:
            query = sa.select(ledger_entries).where(t.tenant_id == tenant_id)
            if after is not None:
                query = query.where(
                    sa.tuple_(t.source_partition, t.source_offset)
                    > sa.tuple_(sa.literal(after[0]), sa.literal(after[1]))
                )
            query = query.order_by(t.source_partition, t.source_offset).limit(chunk)
            async with self.engine.connect() as conn:
                rows = [dict(m) for m in (await conn.execute(query)).mappings().all()]
            if not rows:
                return
            yield rows
            if len(rows) < chunk:
                return
            after = (rows[-1]["source_partition"], rows[-1]["source_offset"])

    async def usage(
        self,
        tenant_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        group_by: GroupBy,
    ) -> list[UsageBucket]:
        """Debits whose usage occurred in [start, end), per UTC day or per service.

        `events` counts the entries (a zero-second call writes none), `billed_seconds`
        and `amount` are their sums, exact.
        """
        t = ledger_entries.c
        query = sa.select(
            t.occurred_at, t.cause_topic, t.currency, t.billed_seconds, t.amount
        ).where(t.tenant_id == tenant_id, t.kind == "debit")
        if start is not None:
            query = query.where(t.occurred_at >= start)
        if end is not None:
            query = query.where(t.occurred_at < end)
        sums: dict[tuple[str, str], list[Any]] = {}
        async with self.engine.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=2000))
            async for occurred_at, cause_topic, currency, billed, amount in result:
                key = (
                    occurred_at.astimezone(UTC).date().isoformat()
                    if group_by == "day"
                    else service_of(cause_topic)
                )
                acc = sums.setdefault((key, currency), [0, 0, Decimal(0)])
                acc[0] += 1
                acc[1] += billed or 0
                acc[2] = _EXACT.add(acc[2], amount)
        return [
            UsageBucket(key, currency, events, billed, amount)
            for (key, currency), (events, billed, amount) in sorted(sums.items())
        ]

    async def totals(self) -> dict[str, tuple[int, Decimal]]:
        """Per tenant: how many entries, and their signed sum (credits minus debits)."""
        t = ledger_entries.c
        out: dict[str, tuple[int, Decimal]] = {}
        async with self.engine.connect() as conn:
            result = await conn.stream(
                sa.select(t.tenant_id, t.kind, t.amount).execution_options(yield_per=5000)
            )
            async for tenant, kind, amount in result:
                count, total = out.get(tenant, (0, Decimal(0)))
                signed = amount if kind == "credit" else -amount
                out[tenant] = (count + 1, _EXACT.add(total, signed))
        return out

    async def command_status(
        self, command_id: str, tenant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The command's row (one per tenant that used the id, at most two when no
        tenant is given), with `entry`: its ledger entry's row when stored."""
        query = sa.select(commands).where(commands.c.command_id == command_id)
        if tenant_id is not None:
            query = query.where(commands.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            rows = [dict(m) for m in (await conn.execute(query.limit(2))).mappings().all()]
            for row in rows:
                row["entry"] = None
                if row["entry_id"] is not None:
                    found = (
                        (
                            await conn.execute(
                                sa.select(ledger_entries).where(
                                    ledger_entries.c.entry_id == row["entry_id"]
                                )
                            )
                        )
                        .mappings()
                        .first()
                    )
                    row["entry"] = None if found is None else dict(found)
        return rows

    async def count(self, table: Literal["ledger", "requests", "outcomes", "commands"]) -> int:
        target = {
            "ledger": ledger_entries,
            "requests": recharge_requests,
            "outcomes": recharge_outcomes,
            "commands": commands,
        }[table]
        async with self.engine.connect() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(target))).scalar_one()
            )


def entry_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored ledger row as the contract's LedgerEntry JSON object."""
    view: dict[str, Any] = {
        "type": "ledger_entry",
        "entry_id": row["entry_id"],
        "tenant_id": row["tenant_id"],
        "kind": row["kind"],
        "amount": format_money(row["amount"]),
        "currency": row["currency"],
        "balance_after": format_money(row["balance_after"]),
        "cause_topic": row["cause_topic"],
        "cause_id": row["cause_id"],
        "occurred_at": _rfc3339(row["occurred_at"]),
        "recorded_at": _rfc3339(row["recorded_at"]),
    }
    if row["kind"] == "debit":
        view["rate_prefix"] = row["rate_prefix"]
        view["rate_per_minute"] = (
            None if row["rate_per_minute"] is None else format_money(row["rate_per_minute"])
        )
        view["billed_seconds"] = row["billed_seconds"]
    if row.get("actor") is not None:
        view["actor"] = row["actor"]
    return view


def _rfc3339(value: datetime) -> str:
    return format_timestamp(value)


def _upgrade(connection: sa.Connection) -> None:
    upgrade(connection, MIGRATIONS)
