"""The ledger sink's tenants table: one row per tenant, for the operator's list.

No endpoint of the workers lists tenants (each worker knows only its partitions), so
the sink keeps what an operator filters on, from the topics it reads:

- the balance: `balance_after` of the tenant's newest ledger entry (highest offset);
- the status: the `exhausted`/`restored` alert with the highest `status_seq` (the
  contract's rule for consumers; an alert without one counts as older than any
  numbered one), else exhausted while `balance + credit_limit <= 0`;
- auto-recharge suspended: a `recharge_failed` alert suspends, a later settings
  command or manual funds lift it (compared by `occurred_at`: they are on other topics);
- recharges failing: billing's `recharge_failed` answers since its last successful
  auto-recharge funds;
- below the low-balance level: the balance below `notify_below` (else the auto-recharge
  trigger), both from the settings commands the sink reads.

Each event is applied once: a row remembers the last offset it applied from each
topic, and an event at or before it (a batch read again) changes nothing.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from processor.core.status import STATUS_AFTER, STATUS_ALERTS, status_rank, supersedes
from processor.http.views import tenant_id_problem
from processor.sink.schema import tenants
from schemas.types import format_money, format_timestamp

__all__ = [
    "STATUS_FILTERS",
    "TenantEvent",
    "apply_events",
    "decode_tenant_cursor",
    "encode_tenant_cursor",
    "recharge_history",
    "tenant_page",
    "tenant_view",
]

STATUS_FILTERS: Final = ("exhausted", "suspended", "low", "failing")
Source = Literal["ledger", "alerts", "commands"]


@dataclass(frozen=True)
class TenantEvent:
    """One record's effect on its tenant's row, in the order the batch read them."""

    source: Source
    offset: int
    tenant_id: str
    occurred_at: datetime
    kind: str
    fields: dict[str, Any]


def _fresh(tenant_id: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "currency": None,
        "balance": None,
        "status": None,
        "status_seq": None,
        "credit_limit": None,
        "notify_below": None,
        "trigger_balance": None,
        "suspended": False,
        "suspended_changed_at": None,
        "recharge_failures": 0,
        "last_failure_reason": None,
        "exhausted": True,
        "below_low": False,
        "ledger_offset": None,
        "alerts_offset": None,
        "commands_offset": None,
        "updated_at": None,
    }


def _suspend(row: dict[str, Any], value: bool, when: datetime) -> None:
    changed = row["suspended_changed_at"]
    if changed is None or when >= changed:
        row["suspended"] = value
        row["suspended_changed_at"] = when


def _apply(row: dict[str, Any], event: TenantEvent) -> bool:
    """Apply `event` to `row`; False when it was applied before (a batch read again)."""
    mark = f"{event.source}_offset"
    if row[mark] is not None and event.offset <= row[mark]:
        return False
    row[mark] = event.offset
    f = event.fields
    if event.kind == "entry":
        row["balance"] = f["balance_after"]
        row["currency"] = f["currency"]
    elif event.kind == "alert":
        alert = f["alert"]
        row["currency"] = f.get("currency") or row["currency"]
        if alert in STATUS_ALERTS:
            rank = status_rank(f.get("status_seq"))
            if supersedes(rank, row["status_seq"]):
                row["status"] = STATUS_AFTER[alert]
                row["status_seq"] = rank
        elif alert == "recharge_failed":
            _suspend(row, True, event.occurred_at)
            if f.get("reason"):
                row["last_failure_reason"] = f["reason"]
    elif event.kind == "auto_recharge_configured":
        row["trigger_balance"] = f["trigger_balance"]
        _suspend(row, False, event.occurred_at)
    elif event.kind == "tenant_limits_configured":
        for name in ("credit_limit", "notify_below"):
            if name in f:
                row[name] = f[name]
    elif event.kind == "manual_funds":
        _suspend(row, False, event.occurred_at)
    elif event.kind == "recharge_succeeded":
        row["recharge_failures"] = 0
    elif event.kind == "recharge_failed":
        row["recharge_failures"] += 1
        row["last_failure_reason"] = f.get("reason")
    if row["updated_at"] is None or event.occurred_at > row["updated_at"]:
        row["updated_at"] = event.occurred_at
    return True


def _derive(row: dict[str, Any]) -> None:
    balance: Decimal | None = row["balance"]
    if row["status"] is not None:
        row["exhausted"] = row["status"] == "exhausted"
    else:
        limit = row["credit_limit"] or Decimal(0)
        row["exhausted"] = balance is None or balance + limit <= 0
    level = row["notify_below"] if row["notify_below"] is not None else row["trigger_balance"]
    row["below_low"] = balance is not None and level is not None and balance < level


async def apply_events(conn: AsyncConnection, events: list[TenantEvent]) -> None:
    """Merge the batch's events into the rows of their tenants, in this transaction."""
    if not events:
        return
    touched = sorted({e.tenant_id for e in events})
    query = sa.select(tenants).where(tenants.c.tenant_id.in_(touched))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    existing = {m["tenant_id"]: dict(m) for m in (await conn.execute(query)).mappings().all()}
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        row = rows.get(event.tenant_id)
        if row is None:
            row = dict(existing.get(event.tenant_id) or _fresh(event.tenant_id))
            rows[event.tenant_id] = row
        _apply(row, event)
    for row in rows.values():
        _derive(row)
    new = [r for t, r in rows.items() if t not in existing]
    old = [r for t, r in rows.items() if t in existing]
    if new:
        await conn.execute(sa.insert(tenants), new)
    if old:
        # One executemany for the batch's tenants, not a statement per tenant: the
        # sink's throughput (docs/performance.md) depends on it.
        columns = [c.name for c in tenants.c if c.name != "tenant_id"]
        update = (
            sa.update(tenants)
            .where(tenants.c.tenant_id == sa.bindparam("b_tenant_id"))
            .values({name: sa.bindparam(f"b_{name}") for name in columns})
        )
        await conn.execute(
            update, [{f"b_{name}": row[name] for name in ("tenant_id", *columns)} for row in old]
        )


def encode_tenant_cursor(tenant_id: str) -> str:
    return base64.urlsafe_b64encode(tenant_id.encode()).decode().rstrip("=")


def decode_tenant_cursor(text: str) -> str:
    """The tenant id after which the next page starts; ValueError if not a cursor."""
    if not text or len(text) > 100:
        raise ValueError("not a cursor")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor") from None
    if tenant_id_problem(raw) is not None:
        raise ValueError("not a cursor")
    return raw


async def tenant_page(
    conn: AsyncConnection,
    *,
    q: str | None,
    status: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Tenants in id order, filtered; the next page's cursor (None on the last)."""
    t = tenants.c
    query = sa.select(tenants)
    if q:
        escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(sa.func.lower(t.tenant_id).like(f"%{escaped}%", escape="\\"))
    if status == "exhausted":
        query = query.where(t.exhausted.is_(True))
    elif status == "suspended":
        query = query.where(t.suspended.is_(True))
    elif status == "low":
        query = query.where(t.below_low.is_(True))
    elif status == "failing":
        query = query.where(sa.or_(t.recharge_failures > 0, t.suspended.is_(True)))
    if after is not None:
        query = query.where(t.tenant_id > after)
    query = query.order_by(t.tenant_id).limit(limit + 1)
    rows = [dict(m) for m in (await conn.execute(query)).mappings().all()]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_tenant_cursor(rows[-1]["tenant_id"]) if more and rows else None)


def tenant_view(row: dict[str, Any]) -> dict[str, Any]:
    def money(value: Decimal | None) -> str | None:
        return None if value is None else format_money(value)

    return {
        "tenant_id": row["tenant_id"],
        "currency": row["currency"],
        "balance": money(row["balance"]),
        "status": "exhausted" if row["exhausted"] else "active",
        "auto_recharge_suspended": bool(row["suspended"]),
        "below_low_balance": bool(row["below_low"]),
        "low_balance_level": money(
            row["notify_below"] if row["notify_below"] is not None else row["trigger_balance"]
        ),
        "recharge_failures": int(row["recharge_failures"]),
        "last_failure_reason": row["last_failure_reason"],
        "updated_at": None if row["updated_at"] is None else format_timestamp(row["updated_at"]),
    }


async def recharge_history(
    conn: AsyncConnection, tenant_id: str, limit: int
) -> list[dict[str, Any]]:
    """The tenant's newest recharge requests (each attempt), with billing's answers."""
    from processor.sink.schema import recharge_outcomes, recharge_requests

    r, o = recharge_requests.c, recharge_outcomes.c
    requests = (
        await conn.execute(
            sa.select(recharge_requests)
            .where(r.tenant_id == tenant_id)
            .order_by(r.requested_at.desc(), r.attempt.desc())
            .limit(limit)
        )
    ).all()
    ids = sorted({row.request_id for row in requests})
    answers: dict[tuple[str, int | None], dict[str, Any]] = {}
    if ids:
        for answered in (
            await conn.execute(
                sa.select(recharge_outcomes)
                .where(o.tenant_id == tenant_id, o.recharge_request_id.in_(ids))
                .order_by(o.source_partition, o.source_offset)
            )
        ).mappings():
            answers[(answered["recharge_request_id"], answered["attempt"])] = dict(answered)
    out = []
    for row in requests:
        answer = answers.get((row.request_id, row.attempt))
        if answer is None:
            # An answer that names no attempt counts for the request's latest attempt.
            latest = max(x.attempt for x in requests if x.request_id == row.request_id)
            if row.attempt == latest:
                answer = answers.get((row.request_id, None))
        outcome = None
        if answer is not None:
            outcome = "succeeded" if answer["type"] == "funds_added" else "failed"
        out.append(
            {
                "request_id": row.request_id,
                "attempt": row.attempt,
                "amount": format_money(row.amount),
                "currency": row.currency,
                "balance": format_money(row.balance),
                "requested_at": format_timestamp(row.requested_at),
                "outcome": outcome,
                "reason": None if answer is None else answer["reason"],
                "answered_at": None if answer is None else format_timestamp(answer["occurred_at"]),
            }
        )
    return out
