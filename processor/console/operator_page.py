"""The operator's page: every tenant, searched and filtered by status, a page at a time."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from processor.console.access import signed_in
from processor.console.app import API, is_htmx, render

__all__ = ["operator_page"]

STATUS_FILTERS: Final = ("exhausted", "suspended", "low", "failing")


async def operator_page(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    if not session.principal.sees_all:
        return render(request, "refused.html", status=403)
    q = request.query.get("q", "").strip()[:64]
    status = request.query.get("status", "")
    status = status if status in STATUS_FILTERS else ""
    cursor = request.query.get("cursor") or None
    answer = await request.app[API].tenants(session.token, q or None, status or None, cursor)
    context: dict[str, Any] = {
        "q": q,
        "status_filter": status,
        "filters": STATUS_FILTERS,
        "tenants": answer.body.get("tenants", []) if answer.ok else None,
        "next_cursor": answer.body.get("next_cursor") if answer.ok else None,
        "problem": None if answer.ok else answer.problem(),
    }
    if is_htmx(request) and request.headers.get("HX-Target") == "tenant-list":
        return render(request, "parts/tenant_list.html", **context)
    return render(request, "operator.html", **context)
