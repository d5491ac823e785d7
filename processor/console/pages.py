"""The console's pages: the route table, and the labels of the APIs' values.

The pages themselves: sign-in (signin.py), a tenant's "Communication Credits"
(tenant_page.py, its forms in forms.py) and the operator's list (operator_page.py).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from processor.console.app import HERE
from processor.console.forms import (
    auto_recharge,
    funds_review,
    funds_status,
    funds_submit,
    notifications_form,
)
from processor.console.i18n import N_
from processor.console.operator_page import operator_page
from processor.console.signin import home, signin, signin_form, signout, switch_language
from processor.console.tenant_page import (
    ledger_part,
    recharges_part,
    statement,
    summary_part,
    tenant_page,
)

__all__ = ["LABELS", "routes"]


# Words the pages show from the APIs' values; both catalogs give them a label.
LABELS: Final = tuple(
    N_(m)
    for m in (
        "tenant_admin", "operator", "admin", "billing",
        "outbound", "toll_free_inbound", "conferencing_dial_out",
        "conferencing_toll_free_dial_in", "calls", "conferencing",
        "debit", "credit", "expiry",
        "filter:exhausted", "filter:suspended", "filter:low", "filter:failing",
        "low_balance", "exhausted", "restored", "recharge_succeeded", "recharge_failed",
        "auto_recharge_suspended", "funds_expiring", "funds_expired",
    )
)  # fmt: skip


async def ready(request: web.Request) -> web.StreamResponse:
    """For `meter demo` and probes: the console answers (the APIs have their own)."""
    return web.json_response({"status": "ready"})


FAVICON: Final = HERE / "static" / "favicon.svg"


async def favicon(request: web.Request) -> web.StreamResponse:
    """Browsers ask for /favicon.ico whatever the page links; the same SVG."""
    return web.FileResponse(FAVICON)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ready", ready)
    r.add_get("/health", ready)
    r.add_get("/favicon.ico", favicon)
    r.add_get("/", home)
    r.add_get("/signin", signin_form)
    r.add_post("/signin", signin)
    r.add_post("/signout", signout)
    r.add_post("/language", switch_language)
    r.add_get("/operator", operator_page)
    r.add_get("/tenants/{tenant_id}", tenant_page)
    r.add_get("/tenants/{tenant_id}/summary", summary_part)
    r.add_get("/tenants/{tenant_id}/recharges", recharges_part)
    r.add_get("/tenants/{tenant_id}/ledger", ledger_part)
    r.add_get("/tenants/{tenant_id}/ledger.csv", statement)
    r.add_post("/tenants/{tenant_id}/funds/review", funds_review)
    r.add_post("/tenants/{tenant_id}/funds", funds_submit)
    r.add_get("/tenants/{tenant_id}/funds/status", funds_status)
    r.add_post("/tenants/{tenant_id}/auto-recharge", auto_recharge)
    r.add_post("/tenants/{tenant_id}/notifications", notifications_form)
