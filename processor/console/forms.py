"""The tenant page's forms: add funds (review, submit, follow) and auto-recharge.

Each answers with its section of the tenant page (`tenant_page.section`): the form
again with the API's field errors in the user's language, or its result.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from aiohttp import web

from processor.console.access import page_of, signed_in, tenant_of
from processor.console.api import Answer
from processor.console.app import API, render, t_of
from processor.console.tenant_page import section, summary_of

__all__ = ["auto_recharge", "funds_review", "funds_status", "funds_submit"]

_MONEY: Final = re.compile(r"^-?\d{1,18}(\.\d{1,12})?$")


def _money_input(raw: str) -> str:
    """A decimal as typed, with a comma accepted as the decimal sign (Greek keyboards)."""
    text = raw.strip().replace(" ", "")
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    return text


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


async def funds_review(request: web.Request) -> web.StreamResponse:
    """Add funds, step 1 of 2: the amount checked and shown back for confirmation."""
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
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
    return await section(request, session, tenant_id, "funds", funds=funds)


async def funds_submit(request: web.Request) -> web.StreamResponse:
    """Add funds, step 2 of 2: the top-up sent, its result shown as it lands."""
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    t = t_of(request)
    form = await request.post()
    amount = _money_input(str(form.get("amount") or ""))
    key = str(form.get("key") or uuid.uuid4())
    if form.get("cancel"):
        return await section(
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
        return await section(request, session, tenant_id, "funds", funds=funds)
    command_id = str((answer.body or {}).get("command_id") or key)
    location = answer.headers.get("Location", "")
    funds = {
        "step": "pending",
        "amount": amount,
        "errors": {},
        "command_id": command_id,
        "location": location if location.startswith("/commands/") else "",
    }
    return await section(request, session, tenant_id, "funds", funds=funds)


async def funds_status(request: web.Request) -> web.StreamResponse:
    """Where a top-up is: the command status resource when the workers have it, else
    its ledger entry (the entry's `cause_id` is the command's id)."""
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
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
    summary = await summary_of(api, session, tenant_id)
    response = render(
        request, "parts/funds.html", tenant_id=tenant_id, page=page_of(tenant_id),
        funds=funds, **summary,
    )  # fmt: skip
    if state != "pending":
        response.headers["HX-Trigger"] = "ledger-changed"
    return response


async def auto_recharge(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
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
    return await section(
        request, session, tenant_id, "auto_recharge", ar_form=values, ar_errors=errors,
        ar_saved=saved,
    )  # fmt: skip
