"""The console's pages: sign-in, a tenant's "Communication Credits", the operator's list.

A tenant page's sections are templates of their own (templates/parts/), rendered
whole in the page or alone for htmx (which swaps one section, or polls it). Every
section asks the API it needs; one that is missing or refuses leaves its section
with a short note, never the page broken.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from processor.console.api import Answer, ApiClient
from processor.console.app import (
    ADMIN_TOKEN,
    API,
    LANG_COOKIE,
    SESSION_COOKIE,
    SESSIONS,
    Principal,
    Session,
    cookie,
    is_htmx,
    render,
    session_of,
    t_of,
)
from processor.console.charts import daily_spend_svg, last_days
from processor.console.i18n import LANGUAGES
from processor.http.views import tenant_id_problem

__all__ = ["LABELS", "routes"]


def N_(message: str) -> str:  # gettext's name for "mark, translate later"
    return message


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

SERVICES: Final = ("outbound", "toll_free_inbound", "conferencing_dial_out",
                   "conferencing_toll_free_dial_in", "calls", "conferencing")  # fmt: skip
STATUS_FILTERS: Final = ("exhausted", "suspended", "low", "failing")
LEDGER_PAGE: Final = 20
_MONEY: Final = re.compile(r"^-?\d{1,18}(\.\d{1,12})?$")


# ------------------------------------------------------------------------ helpers


def _signed_in(request: web.Request) -> Session:
    session = session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/signin")
    return session


def _tenant(request: web.Request, session: Session) -> str:
    tenant_id = request.match_info["tenant_id"]
    if tenant_id_problem(tenant_id) is not None:
        raise web.HTTPNotFound()
    if not session.principal.may_see(tenant_id):
        raise _Refused()
    return tenant_id


class _Refused(Exception):
    """A tenant admin asked for another tenant's page."""


def _page_of(tenant_id: str) -> str:
    return f"/tenants/{quote(tenant_id, safe='')}"


def _money_input(raw: str) -> str:
    """A decimal as typed, with a comma accepted as the decimal sign (Greek keyboards)."""
    text = raw.strip().replace(" ", "")
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    return text


def _month_bounds(today: date) -> tuple[date, date, date]:
    this = today.replace(day=1)
    last = (this - timedelta(days=1)).replace(day=1)
    following = (this + timedelta(days=32)).replace(day=1)
    return last, this, following


def _iso(d: date) -> str:
    return f"{d.isoformat()}T00:00:00Z"


def _field_messages(answer: Answer, t: Any) -> dict[str, list[str]]:
    """The API's 422 field errors by field name, in the user's language where we know
    the error's type, else in the API's words."""
    known = {
        "too_many_decimals": t.gettext("Too many decimal places."),
        "greater_than": t.gettext("Must be more than zero."),
        "greater_than_equal": t.gettext("Must not be negative."),
        "decimal_parsing": t.gettext("Not a number."),
        "string_pattern_mismatch": t.gettext("Not a valid amount."),
        "currency_mismatch": t.gettext("Another currency than the rate card's."),
    }
    out: dict[str, list[str]] = {}
    for error in answer.field_errors():
        loc = [str(x) for x in error.get("loc") or []]
        name = loc[-1] if loc else ""
        if name in ("", "body") and "target_balance" in str(error.get("msg", "")):
            name = "target_balance"
        message = known.get(str(error.get("type")), str(error.get("msg") or ""))
        if "target_balance" in str(error.get("msg", "")) and "trigger" in str(error.get("msg")):
            message = t.gettext("The target must be above the trigger balance.")
            name = "target_balance"
        out.setdefault(name or "form", []).append(message)
    if not out and answer.status == 403:
        # The API's word on this role (e.g. funds come from billing under METER_AUTH=jwt).
        out["form"] = [f"{t.gettext('Your role may not do this.')} ({answer.problem()})"]
    elif not out and answer.status >= 400:
        out["form"] = [answer.problem()]
    return out


# -------------------------------------------------------------------- sign-in


async def home(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    principal = session.principal
    if principal.role == "tenant_admin" and principal.tenant_id:
        raise web.HTTPSeeOther(_page_of(principal.tenant_id))
    raise web.HTTPSeeOther("/operator")


async def signin_form(request: web.Request) -> web.StreamResponse:
    return render(request, "signin.html", error=None)


async def whoami(api: ApiClient, token: str, admin_token: str) -> Principal | str:
    """Who the token belongs to, or why it is refused (a message id)."""
    answer = await api.whoami(token)
    if answer.ok and isinstance(answer.body, dict) and answer.body.get("role"):
        body = answer.body
        return Principal(str(body.get("subject") or ""), str(body["role"]), body.get("tenant_id"))
    # Workers without per-tenant access (no /auth/whoami): the static admin token.
    if (
        answer.status == 404
        and admin_token
        and hmac.compare_digest(token.encode(), admin_token.encode())
    ):
        return Principal("admin", "admin", None)
    if answer.status == 503:
        return N_("The service cannot be reached; try again shortly.")
    return N_("This token was not accepted.")


async def signin(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token") or "").strip()
    t = t_of(request)
    if not token or len(token) > 8192:
        return render(request, "signin.html", status=400, error=t.gettext("Paste your token."))
    who = await whoami(request.app[API], token, request.app[ADMIN_TOKEN])
    if isinstance(who, str):
        return render(request, "signin.html", status=401, error=t.gettext(who))
    sessions = request.app[SESSIONS]
    sessions.end(request.cookies.get(SESSION_COOKIE))
    sid = sessions.new(Session(token, who))
    response = web.HTTPSeeOther("/")
    cookie(response, request, SESSION_COOKIE, sid, max_age=8 * 3600)
    raise response


async def signout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].end(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/signin")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def switch_language(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    lang = str(form.get("lang") or "")
    back = str(form.get("next") or "/")
    if not back.startswith("/") or back.startswith("//"):
        back = "/"
    response = web.HTTPSeeOther(back)
    if lang in LANGUAGES:
        cookie(response, request, LANG_COOKIE, lang, max_age=365 * 24 * 3600)
    raise response


# ------------------------------------------------------------------ tenant page


async def _summary(api: ApiClient, session: Session, tenant_id: str) -> dict[str, Any]:
    answer = await api.account(session.token, tenant_id)
    if answer.status in (401, 403):
        raise _Refused()
    account = answer.body if answer.ok else None
    status = None
    if account is not None:
        ar = account.get("auto_recharge") or {}
        status = "suspended" if ar.get("suspended") else account.get("status")
    return {
        "account": account,
        "account_status": status,
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
    }


async def _recharges(api: ApiClient, session: Session, tenant_id: str) -> dict[str, Any]:
    answer = await api.recharges(session.token, tenant_id)
    return {"recharges": answer.body.get("recharges", []) if answer.ok else None}


async def tenant_context(
    request: web.Request, session: Session, tenant_id: str, **extra: Any
) -> dict[str, Any]:
    api = request.app[API]
    summary = await _summary(api, session, tenant_id)
    consumption, ledger, recharges = await asyncio.gather(
        _consumption(api, session, tenant_id, summary["account"]),
        _ledger(api, session, tenant_id, request.query.get("before")),
        _recharges(api, session, tenant_id),
    )
    account = summary["account"] or {}
    ar = account.get("auto_recharge") or {}
    context: dict[str, Any] = {
        "tenant_id": tenant_id,
        "page": _page_of(tenant_id),
        **summary,
        **consumption,
        **ledger,
        **recharges,
        "funds": {"step": "form", "amount": "", "errors": {}},
        "ar_form": {
            "enabled": bool(ar.get("enabled")),
            "mode": ar.get("mode") or "fixed",
            "recharge_amount": ar.get("recharge_amount") or "",
            "target_balance": ar.get("target_balance") or "",
            "trigger_balance": ar.get("trigger_balance") or "",
        },
        "ar_errors": {},
        "ar_saved": False,
        "chart": None,
    }
    if consumption["daily"] is not None:
        context["chart"] = daily_spend_svg(
            consumption["daily"], summary["currency"] or "USD", t_of(request)
        )
    context.update(extra)
    return context


async def tenant_page(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
        context = await tenant_context(request, session, tenant_id)
    except _Refused:
        return render(request, "refused.html", status=403)
    if is_htmx(request) and request.query.get("part") == "ledger":
        return render(request, "parts/ledger.html", **context)
    return render(request, "tenant.html", **context)


async def summary_part(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
        summary = await _summary(request.app[API], session, tenant_id)
    except _Refused:
        return render(request, "refused.html", status=403)
    return render(request, "parts/summary.html", tenant_id=tenant_id, **summary)


async def recharges_part(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
        summary = await _summary(request.app[API], session, tenant_id)
    except _Refused:
        return render(request, "refused.html", status=403)
    history = await _recharges(request.app[API], session, tenant_id)
    return render(
        request,
        "parts/recharges.html",
        tenant_id=tenant_id,
        page=_page_of(tenant_id),
        **summary,
        **history,
    )


async def ledger_part(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
    except _Refused:
        return render(request, "refused.html", status=403)
    ledger = await _ledger(request.app[API], session, tenant_id, request.query.get("before"))
    summary = await _summary(request.app[API], session, tenant_id)
    return render(
        request, "parts/ledger.html", tenant_id=tenant_id, page=_page_of(tenant_id),
        **summary, **ledger,
    )  # fmt: skip


async def _section(
    request: web.Request,
    session: Session,
    tenant_id: str,
    part: str,
    **extra: Any,
) -> web.StreamResponse:
    """One section alone for htmx, else the whole page around it (no script)."""
    if is_htmx(request):
        summary = await _summary(request.app[API], session, tenant_id)
        return render(
            request, f"parts/{part}.html", tenant_id=tenant_id, page=_page_of(tenant_id),
            **summary, **extra,
        )  # fmt: skip
    context = await tenant_context(request, session, tenant_id, **extra)
    return render(request, "tenant.html", **context)


async def funds_review(request: web.Request) -> web.StreamResponse:
    """Add funds, step 1 of 2: the amount checked and shown back for confirmation."""
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
    except _Refused:
        return render(request, "refused.html", status=403)
    t = t_of(request)
    form = await request.post()
    amount = _money_input(str(form.get("amount") or ""))
    errors: dict[str, list[str]] = {}
    step = "confirm"
    if not _MONEY.match(amount):
        errors["amount"] = [t.gettext("Enter an amount such as 50.00.")]
        step = "form"
    else:
        try:
            if Decimal(amount) <= 0:
                errors["amount"] = [t.gettext("Must be more than zero.")]
                step = "form"
        except InvalidOperation:
            errors["amount"] = [t.gettext("Not a number.")]
            step = "form"
    funds = {"step": step, "amount": amount, "errors": errors, "key": str(uuid.uuid4())}
    return await _section(request, session, tenant_id, "funds", funds=funds)


async def funds_submit(request: web.Request) -> web.StreamResponse:
    """Add funds, step 2 of 2: the top-up sent, its result shown as it lands."""
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
    except _Refused:
        return render(request, "refused.html", status=403)
    t = t_of(request)
    form = await request.post()
    amount = _money_input(str(form.get("amount") or ""))
    key = str(form.get("key") or uuid.uuid4())
    if form.get("cancel"):
        return await _section(
            request, session, tenant_id, "funds", funds={"step": "form", "amount": "", "errors": {}}
        )
    api = request.app[API]
    account = await api.account(session.token, tenant_id)
    currency = (account.body or {}).get("currency") if account.ok else None
    answer = await api.add_funds(session.token, tenant_id, amount, currency or "USD", key)
    if currency is None and answer.status == 422:
        # A tenant with no account yet: the API names the rate card's currency.
        named = re.search(r"must be ([A-Z]{3})", str(answer.body))
        if named is not None:
            answer = await api.add_funds(session.token, tenant_id, amount, named[1], key)
    if answer.status != 202:
        errors = _field_messages(answer, t)
        funds = {"step": "form", "amount": amount, "errors": errors}
        return await _section(request, session, tenant_id, "funds", funds=funds)
    command_id = str((answer.body or {}).get("command_id") or key)
    location = answer.headers.get("Location", "")
    funds = {
        "step": "pending",
        "amount": amount,
        "errors": {},
        "command_id": command_id,
        "location": location if location.startswith("/commands/") else "",
    }
    return await _section(request, session, tenant_id, "funds", funds=funds)


async def funds_status(request: web.Request) -> web.StreamResponse:
    """Where a top-up is: the command status resource when the workers have it, else
    its ledger entry (the entry's `cause_id` is the command's id)."""
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
    except _Refused:
        return render(request, "refused.html", status=403)
    api = request.app[API]
    command_id = request.query.get("command_id", "")
    location = request.query.get("location", "")
    amount = request.query.get("amount", "")
    state, entry, reason = "pending", None, None
    if location.startswith("/commands/"):
        answer = await api.command_status(session.token, location)
        if answer.ok and isinstance(answer.body, dict):
            state = str(answer.body.get("status") or "pending")
            entry = answer.body.get("ledger_entry") or answer.body.get("entry")
            reason = answer.body.get("reason")
    if state == "pending":
        ledger = await api.ledger(session.token, tenant_id, None, 50)
        if ledger.ok:
            for candidate in ledger.body.get("entries", []):
                if candidate.get("cause_id") == command_id:
                    state, entry = "applied", candidate
                    break
    funds: dict[str, Any] = {
        "step": state,
        "amount": amount,
        "errors": {},
        "command_id": command_id,
        "location": location,
        "entry": entry,
        "reason": reason,
    }
    summary = await _summary(api, session, tenant_id)
    response = render(
        request, "parts/funds.html", tenant_id=tenant_id, page=_page_of(tenant_id),
        funds=funds, **summary,
    )  # fmt: skip
    if state != "pending":
        response.headers["HX-Trigger"] = "ledger-changed"
    return response


async def auto_recharge(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
    except _Refused:
        return render(request, "refused.html", status=403)
    t = t_of(request)
    form = await request.post()
    values = {
        "enabled": form.get("enabled") == "on",
        "mode": "to_target" if form.get("mode") == "to_target" else "fixed",
        "recharge_amount": _money_input(str(form.get("recharge_amount") or "")),
        "target_balance": _money_input(str(form.get("target_balance") or "")),
        "trigger_balance": _money_input(str(form.get("trigger_balance") or "")),
    }
    settings: dict[str, Any] = {
        "enabled": values["enabled"],
        "mode": values["mode"],
        "recharge_amount": values["recharge_amount"] or None,
        "trigger_balance": values["trigger_balance"] or None,
    }
    if values["mode"] == "to_target":
        settings["target_balance"] = values["target_balance"] or None
        if not settings["recharge_amount"]:
            # The API still asks for an amount; "recharge to" uses the target.
            settings["recharge_amount"] = settings["target_balance"]
    errors: dict[str, list[str]] = {}
    for name in ("recharge_amount", "trigger_balance"):
        if settings.get(name) is None:
            errors[name] = [t.gettext("Required.")]
    if values["mode"] == "to_target" and settings.get("target_balance") is None:
        errors["target_balance"] = [t.gettext("Required.")]
    saved = False
    if not errors:
        answer = await request.app[API].configure_auto_recharge(
            session.token, tenant_id, settings, str(uuid.uuid4())
        )
        if answer.status == 202:
            saved = True
        else:
            errors = _field_messages(answer, t)
    return await _section(
        request, session, tenant_id, "auto_recharge", ar_form=values, ar_errors=errors,
        ar_saved=saved,
    )  # fmt: skip


async def statement(request: web.Request) -> web.StreamResponse:
    """The CSV statement from the sink, streamed through with the user's token."""
    session = _signed_in(request)
    try:
        tenant_id = _tenant(request, session)
    except _Refused:
        return render(request, "refused.html", status=403)
    api = request.app[API]
    headers = {"Authorization": f"Bearer {session.token}"}
    async with api.session.get(api.statement_url(tenant_id), headers=headers) as upstream:
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


# --------------------------------------------------------------- operator page


async def operator_page(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
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


async def ready(request: web.Request) -> web.StreamResponse:
    """For `meter demo` and probes: the console answers (the APIs have their own)."""
    return web.json_response({"status": "ready"})


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ready", ready)
    r.add_get("/health", ready)
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
