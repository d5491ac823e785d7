"""A tenant's "Communication Credits" page and its sections.

A tenant page's sections are templates of their own (templates/parts/), rendered
whole in the page or alone for htmx (which swaps one section, or polls it). Every
section asks the API it needs; one that is missing or refuses leaves its section
with a short note, never the page broken.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from processor.console import notifications
from processor.console.access import Refused, page_of, signed_in, tenant_of
from processor.console.api import Answer, ApiClient, Unauthorized
from processor.console.app import API, Session, is_htmx, render, t_of
from processor.console.charts import daily_spend_svg, last_days
from processor.console.places import page_places
from processor.console.status import account_badges

__all__ = [
    "ledger_part",
    "recharges_part",
    "section",
    "statement",
    "summary_of",
    "summary_part",
    "tenant_context",
    "tenant_page",
]

SERVICES: Final = ("outbound", "toll_free_inbound", "conferencing_dial_out",
                   "conferencing_toll_free_dial_in", "calls", "conferencing")  # fmt: skip
LEDGER_PAGE: Final = 20


def _month_bounds(today: date) -> tuple[date, date, date]:
    this = today.replace(day=1)
    last = (this - timedelta(days=1)).replace(day=1)
    following = (this + timedelta(days=32)).replace(day=1)
    return last, this, following


def _iso(d: date) -> str:
    return f"{d.isoformat()}T00:00:00Z"


async def summary_of(api: ApiClient, session: Session, tenant_id: str) -> dict[str, Any]:
    answer = await api.account(session.token, tenant_id)
    if answer.status == 403:
        raise Refused()
    account = answer.body if answer.ok else None
    return {
        "account": account,
        "places": page_places(session, tenant_id, account, []),
        "badges": None if account is None else account_badges(account),
        "account_problem": None if answer.ok or answer.status == 404 else answer.problem(),
        "currency": (account or {}).get("currency") or "",
    }


async def _consumption(
    api: ApiClient, session: Session, tenant_id: str, account: dict[str, Any] | None
) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    last, this, following = _month_bounds(today)
    rows: dict[str, dict[str, Any]] = {}
    given = (account or {}).get("consumption")
    months = (this, last)
    if isinstance(given, list) and given:
        # The account view's own: this month and the one before, per service.
        for which, month in zip(("current", "previous"), given, strict=False):
            for service, figures in (month.get("services") or {}).items():
                if figures.get("events"):
                    rows.setdefault(service, {})[which] = figures
        if isinstance(given[0].get("month"), str):
            first = date.fromisoformat(given[0]["month"] + "-01")
            months = (first, (first - timedelta(days=1)).replace(day=1))
    else:
        # Workers without it: the ledger sink's usage, per service, by month.
        current, previous = await asyncio.gather(
            api.usage(session.token, tenant_id, _iso(this), _iso(following), "service"),
            api.usage(session.token, tenant_id, _iso(last), _iso(this), "service"),
        )
        for which, answer in (("current", current), ("previous", previous)):
            if answer.ok:
                for bucket in answer.body.get("buckets", []):
                    rows.setdefault(bucket["key"], {})[which] = bucket
    start = today - timedelta(days=29)
    daily = await api.usage(
        session.token, tenant_id, _iso(start), _iso(today + timedelta(days=1)), "day"
    )
    return {
        "consumption": sorted(
            rows.items(), key=lambda kv: SERVICES.index(kv[0]) if kv[0] in SERVICES else 99
        ),
        "months": months,
        "daily": last_days(daily.body.get("buckets", []), today) if daily.ok else None,
    }


async def _ledger(
    api: ApiClient, session: Session, tenant_id: str, before: str | None
) -> dict[str, Any]:
    answer = await api.ledger(session.token, tenant_id, before, LEDGER_PAGE)
    return {
        "entries": answer.body.get("entries", []) if answer.ok else None,
        "next_cursor": answer.body.get("next_cursor") if answer.ok else None,
        "before": before,
        # The sink's 400 for a `before` it never gave (an edited or stale link).
        "bad_cursor": before is not None and answer.status == 400,
    }


def _entry_amounts(entries: list[dict[str, Any]] | None) -> list[str | None]:
    return [a for e in entries or [] for a in (e.get("amount"), e.get("balance_after"))]


async def _recharges(api: ApiClient, session: Session, tenant_id: str) -> dict[str, Any]:
    answer = await api.recharges(session.token, tenant_id)
    return {"recharges": answer.body.get("recharges", []) if answer.ok else None}


async def tenant_context(
    request: web.Request, session: Session, tenant_id: str, **extra: Any
) -> dict[str, Any]:
    api = request.app[API]
    summary = await summary_of(api, session, tenant_id)
    consumption, ledger, recharges = await asyncio.gather(
        _consumption(api, session, tenant_id, summary["account"]),
        _ledger(api, session, tenant_id, request.query.get("before")),
        _recharges(api, session, tenant_id),
    )
    account = summary["account"] or {}
    ar = account.get("auto_recharge") or {}
    t = t_of(request)
    context: dict[str, Any] = {
        "tenant_id": tenant_id,
        "page": page_of(tenant_id),
        **summary,
        **consumption,
        **ledger,
        **recharges,
        "funds": {"step": "form", "amount": "", "errors": {}},
        "ar_form": {
            "enabled": bool(ar.get("enabled")),
            "mode": ar.get("mode") or "fixed",
            "recharge_amount": t.form_amount(ar.get("recharge_amount")),
            "target_balance": t.form_amount(ar.get("target_balance")),
            "trigger_balance": t.form_amount(ar.get("trigger_balance")),
        },
        "ar_errors": {},
        "ar_saved": False,
        "nf_form": notifications.shown(summary["account"], t),
        "nf_errors": {},
        "nf_saved": False,
        "chart": None,
    }
    amounts = [
        *(f.get("amount") for _, figures in consumption["consumption"] for f in figures.values()),
        *_entry_amounts(ledger["entries"]),
        *(r.get("amount") for r in recharges["recharges"] or []),
        *(d.amount for d in consumption["daily"] or []),
    ]
    places = page_places(session, tenant_id, summary["account"], amounts)
    context["places"] = places
    if consumption["daily"] is not None:
        context["chart"] = daily_spend_svg(
            consumption["daily"], summary["currency"] or "USD", t, places
        )
    context.update(extra)
    return context


async def tenant_page(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    context = await tenant_context(request, session, tenant_id)
    if is_htmx(request) and request.query.get("part") == "ledger":
        return render(request, "parts/ledger.html", **context)
    return render(request, "tenant.html", **context)


async def summary_part(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    summary = await summary_of(request.app[API], session, tenant_id)
    return render(request, "parts/summary.html", tenant_id=tenant_id, **summary)


async def recharges_part(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    summary = await summary_of(request.app[API], session, tenant_id)
    history = await _recharges(request.app[API], session, tenant_id)
    amounts = [r.get("amount") for r in history["recharges"] or []]
    summary["places"] = page_places(session, tenant_id, summary["account"], amounts)
    return render(
        request,
        "parts/recharges.html",
        tenant_id=tenant_id,
        page=page_of(tenant_id),
        **summary,
        **history,
    )


async def ledger_part(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    ledger = await _ledger(request.app[API], session, tenant_id, request.query.get("before"))
    summary = await summary_of(request.app[API], session, tenant_id)
    summary["places"] = page_places(
        session, tenant_id, summary["account"], _entry_amounts(ledger["entries"])
    )
    return render(
        request, "parts/ledger.html", tenant_id=tenant_id, page=page_of(tenant_id),
        **summary, **ledger,
    )  # fmt: skip


async def section(
    request: web.Request,
    session: Session,
    tenant_id: str,
    part: str,
    **extra: Any,
) -> web.StreamResponse:
    """One section alone for htmx, else the whole page around it (no script)."""
    if is_htmx(request):
        summary = await summary_of(request.app[API], session, tenant_id)
        return render(
            request, f"parts/{part}.html", tenant_id=tenant_id, page=page_of(tenant_id),
            **summary, **extra,
        )  # fmt: skip
    context = await tenant_context(request, session, tenant_id, **extra)
    return render(request, "tenant.html", **context)


async def statement(request: web.Request) -> web.StreamResponse:
    """The CSV statement from the sink, streamed through with the user's token."""
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    api = request.app[API]
    headers = {"Authorization": f"Bearer {session.token}"}
    async with api.session.get(api.statement_url(tenant_id), headers=headers) as upstream:
        if upstream.status == 401:
            raise Unauthorized(Answer(401, None, {}))
        if upstream.status != 200:
            return render(request, "refused.html", status=upstream.status)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{tenant_id}-ledger.csv"',
            }
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response
