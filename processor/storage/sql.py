"""What the ledger sink and the notifier share in SQL: the engine's URL (SQLite by
default, PostgreSQL when configured), exact money and UTC instants as column types,
SQLite's pragmas, Alembic upgrades, and the Kafka positions each service stores in
the same transaction as the rows they produced (so that it resumes from them, never
from Kafka's committed offsets)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.types import format_money

__all__ = [
    "SQLITE_FILE",
    "Money",
    "UtcDateTime",
    "database_url",
    "read_positions",
    "safe_url",
    "sqlite_pragmas",
    "upgrade",
    "write_positions",
]

SQLITE_FILE: Final = "ledger.sqlite3"


class Money(sa.types.TypeDecorator[Decimal]):
    """An exact decimal: NUMERIC on PostgreSQL, its fixed-point text elsewhere."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.Numeric(asdecimal=True))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return format_money(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(str(value))


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A UTC instant: timestamptz on PostgreSQL, naive UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        # SQLite's DATETIME text has no offset: keep every value in UTC, so text order
        # is time order.
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def database_url(raw: str | None, data_dir: Path, file: str = SQLITE_FILE) -> str:
    """The SQLAlchemy URL for METER_DATABASE_URL (unset: SQLite `file` under `data_dir`).

    `postgresql://` (or `postgres://`) becomes `postgresql+asyncpg://`, `sqlite:///`
    becomes `sqlite+aiosqlite:///`; anything else is a ValueError naming what is
    allowed.
    """
    if not raw:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(data_dir / file).resolve()}"
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise ValueError("a URL such as postgresql://user:password@host:5432/db")
    drivers = {
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
    }
    driver = drivers.get(scheme.lower())
    if driver is None:
        raise ValueError("a postgresql:// or sqlite:/// URL")
    return f"{driver}://{rest}"


def safe_url(url: str) -> str:
    """The URL with its password hidden, for logs."""
    return make_url(url).render_as_string(hide_password=True)


async def read_positions(
    engine: AsyncEngine, table: sa.Table, group: str, tps: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The next offset to read of each topic-partition `table` (shaped like
    sink_offsets) holds for `group`."""
    wanted = set(tps)
    if not wanted:
        return {}
    topics = sorted({topic for topic, _ in wanted})
    query = sa.select(table.c.topic, table.c.partition, table.c.next_offset).where(
        table.c.consumer_group == group, table.c.topic.in_(topics)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {(t, p): int(o) for t, p, o in rows if (t, p) in wanted}


async def write_positions(
    conn: Any, insert: Any, table: sa.Table, group: str, positions: Mapping[tuple[str, int], int]
) -> None:
    """Upsert `positions` into `table` inside the caller's transaction, never backwards."""
    if not positions:
        return
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["consumer_group", "topic", "partition"],
        set_={"next_offset": stmt.excluded.next_offset},
        # Never backwards: a batch written late (by a consumer that lost the partition
        # meanwhile) must not move the position back.
        where=table.c.next_offset < stmt.excluded.next_offset,
    )
    await conn.execute(
        stmt,
        [
            {"consumer_group": group, "topic": t, "partition": p, "next_offset": o}
            for (t, p), o in sorted(positions.items())
        ],
    )


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: the query API reads while the consumer writes. synchronous=NORMAL in WAL
    # mode loses nothing when the process is killed; a power cut may lose the last
    # transactions, rows and positions together, which are then read again.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def upgrade(connection: sa.Connection, migrations: Path) -> None:
    """Alembic's upgrade to head of the migrations in `migrations` (whose env.py takes
    the connection from the config's attributes)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
