"""The ledger sink's query API (aiohttp, port METER_SINK_PORT, default 6070).

    GET /tenants/{id}/ledger?before=<cursor>&limit=<n>&kind=debit,credit
    GET /tenants/{id}/usage?from=<RFC 3339>&to=<RFC 3339>&group_by=day|service
    GET /tenants/{id}/ledger.csv
    GET /tenants?q=&status=exhausted|suspended|low|failing&cursor=&limit=   (added)
    GET /tenants/{id}/recharges?limit=                                       (added)
    GET /commands/{command_id}[?tenant_id=<id>]   (added: a command's status)
    GET /health, GET /ready (200 once the consumer has its partitions, else 503)
    GET /metrics (added: meter_build_info and the process and Python collectors)

With METER_AUTH=jwt the tenant paths take a token as the workers' do (processor/http/auth.py).

Every answer comes from the database the sink writes (so it trails Kafka by the
sink's lag). A tenant id that breaks the contract's pattern is a 400
`invalid_tenant_id` before anything else, never echoed; a bad query parameter is a
400 `invalid_query` naming it. Money is a decimal string, as on the topics.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from processor.http import auth
from processor.http.auth import Access
from processor.http.problems import RETRY_AFTER_SECONDS, as_is, problem, problem_middleware
from processor.http.views import tenant_id_problem
from processor.observability.metrics import service_registry
from processor.sink.store import (
    Cursor,
    LedgerStore,
    decode_cursor,
    encode_cursor,
    entry_view,
)
from processor.sink.tenants import (
    STATUS_FILTERS,
    decode_tenant_cursor,
    recharge_history,
    tenant_page,
    tenant_view,
)
from schemas.types import ID_PATTERN, format_money, format_timestamp, parse_timestamp

__all__ = ["CSV_COLUMNS", "DEFAULT_LIMIT", "MAX_LIMIT", "build_app"]

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500
KINDS: Final = ("debit", "credit", "expiry")
GROUPS: Final = ("day", "service")
CSV_COLUMNS: Final = (
    "entry_id",
    "recorded_at",
    "occurred_at",
    "kind",
    "amount",
    "signed_amount",
    "currency",
    "balance_after",
    "cause_topic",
    "cause_id",
    "rate_prefix",
    "rate_per_minute",
    "billed_seconds",
    # Added: who caused the entry (a command's actor); last, so columns keep places.
    "actor",
)
STORE: Final = web.AppKey("store", LedgerStore)
READY: Final = web.AppKey[Callable[[], bool]]("ready")
REGISTRY: Final = web.AppKey("registry", CollectorRegistry)
_COMMAND_ID: Final = re.compile(ID_PATTERN)


class _BadQuery(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, code: str, detail: str, tenant_id: str | None) -> web.Response:
    # RFC 9457 problem details (processor/http/problems.py), with the promised fields.
    return problem(status, code, detail, tenant_id=tenant_id)


def _tenant(request: web.Request) -> str:
    tenant_id = request.match_info["tenant_id"]
    problem = tenant_id_problem(tenant_id)
    if problem is not None:
        raise _BadQuery("invalid_tenant_id", problem)
    return tenant_id


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise _BadQuery("invalid_query", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _kinds(request: web.Request) -> list[str]:
    raw = request.query.get("kind")
    if raw is None:
        return []
    kinds = [k.strip() for k in raw.split(",")]
    if not kinds or any(k not in KINDS for k in kinds):
        raise _BadQuery(
            "invalid_query", "kind must be a comma-separated subset of debit, credit, expiry"
        )
    return sorted(set(kinds))


def _cursor(request: web.Request) -> Cursor | None:
    raw = request.query.get("before")
    if raw is None:
        return None
    try:
        return decode_cursor(raw)
    except ValueError:
        raise _BadQuery(
            "invalid_cursor", "before must be a next_cursor this API returned"
        ) from None


def _when(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_timestamp(raw)
    except (ValueError, TypeError):
        raise _BadQuery(
            "invalid_query", f"{name} must be an RFC 3339 time with an offset"
        ) from None


def _csv_text(value: str | None) -> str:
    # A cell a spreadsheet would run as a formula (CSV injection) is quoted as text.
    if value and value[0] in "=+-@\t\r":
        return "'" + value
    return value or ""


def _csv_row(row: dict[str, Any]) -> list[str]:
    amount: Decimal = row["amount"]
    # A debit and an expiry take from the balance.
    signed = amount if row["kind"] == "credit" else -amount
    rate = row["rate_per_minute"]
    return [
        _csv_text(row["entry_id"]),
        format_timestamp(row["recorded_at"]),
        format_timestamp(row["occurred_at"]),
        row["kind"],
        format_money(amount),
        format_money(signed),
        row["currency"],
        format_money(row["balance_after"]),
        _csv_text(row["cause_topic"]),
        _csv_text(row["cause_id"]),
        _csv_text(row["rate_prefix"]),
        "" if rate is None else format_money(rate),
        "" if row["billed_seconds"] is None else str(row["billed_seconds"]),
        _csv_text(row.get("actor")),
    ]


def _lines(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except _BadQuery as exc:
        tenant = None if exc.code == "invalid_tenant_id" else request.match_info.get("tenant_id")
        return _error(400, exc.code, exc.detail, tenant)


async def health(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


async def ready_page(request: web.Request) -> web.Response:
    if request.app[READY]():
        return _json(200, {"status": "ready"})
    # A probe's answer, not an error: the contract's body, and like every 503 a
    # Retry-After.
    response = _json(503, {"status": "not_ready", "detail": "partitions not assigned yet"})
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return as_is(response)


async def metrics_page(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[REGISTRY]),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def ledger(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    limit, kinds, before = _limit(request), _kinds(request), _cursor(request)
    rows, following = await request.app[STORE].ledger_page(
        tenant_id, before=before, limit=limit, kinds=kinds
    )
    return _json(
        200,
        {
            "tenant_id": tenant_id,
            "entries": [entry_view(row) for row in rows],
            "next_cursor": None if following is None else encode_cursor(following),
        },
    )


async def usage(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    start, end = _when(request, "from"), _when(request, "to")
    if start is not None and end is not None and start >= end:
        raise _BadQuery("invalid_query", "from must be before to")
    group_by = request.query.get("group_by", "day")
    if group_by not in GROUPS:
        raise _BadQuery("invalid_query", "group_by must be day or service")
    buckets = await request.app[STORE].usage(
        tenant_id,
        start=start,
        end=end,
        group_by="day" if group_by == "day" else "service",
    )
    return _json(
        200,
        {
            "tenant_id": tenant_id,
            "group_by": group_by,
            "from": None if start is None else format_timestamp(start),
            "to": None if end is None else format_timestamp(end),
            "buckets": [
                {
                    "key": b.key,
                    "currency": b.currency,
                    "events": b.events,
                    "billed_seconds": b.billed_seconds,
                    "amount": format_money(b.amount),
                }
                for b in buckets
            ],
        },
    )


async def statement(request: web.Request) -> web.StreamResponse:
    tenant_id = _tenant(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            # The tenant id's characters (A-Z a-z 0-9 . _ : -) need no quoting.
            "Content-Disposition": f'attachment; filename="{tenant_id}-ledger.csv"',
        }
    )
    await response.prepare(request)
    await response.write(_lines([list(CSV_COLUMNS)]))
    async for rows in request.app[STORE].statement(tenant_id):
        await response.write(_lines([_csv_row(row) for row in rows]))
    await response.write_eof()
    return response


async def tenant_list(request: web.Request) -> web.Response:
    """Added: every tenant the sink has seen, in id order, searched and filtered."""
    limit = _limit(request)
    q = request.query.get("q", "").strip()
    if len(q) > 64:
        raise _BadQuery("invalid_query", "q is at most 64 characters")
    status = request.query.get("status") or None
    if status is not None and status not in STATUS_FILTERS:
        raise _BadQuery("invalid_query", f"status must be one of {', '.join(STATUS_FILTERS)}")
    raw = request.query.get("cursor")
    after = None
    if raw is not None:
        try:
            after = decode_tenant_cursor(raw)
        except ValueError:
            raise _BadQuery(
                "invalid_cursor", "cursor must be a next_cursor this API returned"
            ) from None
    async with request.app[STORE].engine.connect() as conn:
        rows, following = await tenant_page(
            conn, q=q or None, status=status, after=after, limit=limit
        )
    return _json(200, {"tenants": [tenant_view(row) for row in rows], "next_cursor": following})


async def recharges(request: web.Request) -> web.Response:
    """Added: the tenant's newest recharge requests and billing's answers to them."""
    tenant_id = _tenant(request)
    limit = _limit(request)
    async with request.app[STORE].engine.connect() as conn:
        history = await recharge_history(conn, tenant_id, limit)
    return _json(200, {"tenant_id": tenant_id, "recharges": history})


def command_view(row: dict[str, Any]) -> dict[str, Any]:
    """A stored command row as the contract's CommandStatus JSON object."""
    return {
        "command_id": row["command_id"],
        "tenant_id": row["tenant_id"],
        "command_type": row["command_type"],
        "status": row["status"],
        "entry_id": row["entry_id"],
        "entry": None if row.get("entry") is None else entry_view(row["entry"]),
        "reason": row["reason"],
        "detail": row["detail"],
        "occurred_at": None if row["occurred_at"] is None else format_timestamp(row["occurred_at"]),
        "recorded_at": None if row["recorded_at"] is None else format_timestamp(row["recorded_at"]),
    }


async def command_status(request: web.Request) -> web.Response:
    command_id = request.match_info["command_id"]
    if not _COMMAND_ID.fullmatch(command_id):
        raise _BadQuery("invalid_command_id", "must be 1 to 128 printable ASCII characters")
    tenant_id = request.query.get("tenant_id")
    if tenant_id is not None and tenant_id_problem(tenant_id) is not None:
        raise _BadQuery("invalid_tenant_id", f"tenant_id {tenant_id_problem(tenant_id)}")
    rows = await request.app[STORE].command_status(command_id, tenant_id)
    if not rows:
        return _error(
            404,
            "unknown_command",
            "no command with this id has reached the sink (never sent, or the sink is "
            "behind: see its lag)",
            tenant_id,
        )
    if len(rows) > 1:
        return _error(
            409,
            "ambiguous_command_id",
            "several tenants sent a command with this id (ids are unique per tenant): "
            "add ?tenant_id=",
            None,
        )
    return _json(200, command_view(rows[0]))


def build_app(
    store: LedgerStore, ready: Callable[[], bool] = lambda: True, access: Access | None = None
) -> web.Application:
    # METER_AUTH=jwt: the tenant endpoints need a token allowing them (processor/http/auth.py).
    guard = auth.middleware(access or Access("token", None))
    app = web.Application(middlewares=[problem_middleware, guard, _errors])
    app[STORE] = store
    app[READY] = ready
    app[REGISTRY] = service_registry()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready_page)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/tenants/{tenant_id}/ledger", ledger)
    app.router.add_get("/tenants/{tenant_id}/ledger.csv", statement)
    app.router.add_get("/tenants/{tenant_id}/usage", usage)
    app.router.add_get("/tenants", tenant_list)
    app.router.add_get("/tenants/{tenant_id}/recharges", recharges)
    app.router.add_get("/commands/{command_id}", command_status)
    return app
