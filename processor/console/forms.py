"""The tenant page's forms: add funds (review, submit, follow), auto-recharge, and
limits and notifications.

Each answers with its section of the tenant page (`tenant_page.section`): the form
again with its errors in the user's language (amounts.py checks what the API would
refuse first, and words what it still refuses), or its result.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

from aiohttp import web

from processor.console import notifications
from processor.console.access import Refused, page_of, signed_in, tenant_of
from processor.console.amounts import Rule, api_message, check_amount
from processor.console.api import Answer, ApiClient
from processor.console.app import API, Session, render, t_of
from processor.console.i18n import Translator
from processor.console.places import card_places
from processor.console.tenant_page import section, summary_of

__all__ = ["auto_recharge", "funds_review", "funds_status", "funds_submit", "notifications_form"]


def _field_messages(answer: Answer, t: Translator) -> dict[str, list[str]]:
    """The API's 422 field errors by field name, in the user's language where we know
    the error (`amounts.api_message`), else in the API's words."""
    out: dict[str, list[str]] = {}
    for error in answer.field_errors():
        # The field is the last name of `loc`: ["body", "emails", 2] is an address.
        names = [x for x in error.get("loc") or [] if isinstance(x, str)]
        name = names[-1] if names else ""
        words = str(error.get("msg") or "")
        kind = str(error.get("type"))
        message = notifications.api_message(name, kind, t) or api_message(kind, words, t)
        if "target_balance" in words and "trigger" in words:
            message = t.gettext("The target must be above the trigger balance.")
            name = "target_balance"
        out.setdefault(name if name not in ("", "body") else "form", []).append(message)
    if not out and answer.status == 403:
        # The API's word on this role (an operator may read a tenant, not change it).
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
    typed = str(form.get("amount") or "")
    summary = await summary_of(request.app[API], session, tenant_id)
    checked = check_amount(typed, t, "positive", card_places(summary["account"]))
    errors = {} if checked.error is None else {"amount": [checked.error]}
    step, amount = ("form", typed) if checked.error else ("confirm", checked.value)
    funds = {"step": step, "amount": amount, "errors": errors, "key": str(uuid.uuid4())}
    return await section(request, session, tenant_id, "funds", funds=funds)


async def funds_submit(request: web.Request) -> web.StreamResponse:
    """Add funds, step 2 of 2: the top-up sent, its result shown as it lands."""
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    t = t_of(request)
    form = await request.post()
    # The review step's hidden field: the plain amount it checked.
    checked = check_amount(str(form.get("amount") or ""), t, "positive", None, typed=False)
    if form.get("cancel") or checked.error is not None:
        errors = {"amount": [checked.error]} if checked.error and not form.get("cancel") else {}
        funds = {"step": "form", "amount": "", "errors": errors}
        return await section(request, session, tenant_id, "funds", funds=funds)
    amount = checked.value
    key = str(form.get("key") or uuid.uuid4())
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
        funds = {"step": "form", "amount": t.form_amount(amount), "errors": errors}
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


# The auto-recharge form's amounts and the API's bound on each (schemas/admin.py).
AMOUNT_RULES: Final[dict[str, Rule]] = {
    "recharge_amount": "positive",
    "target_balance": "positive",
    "trigger_balance": "non_negative",
}


async def auto_recharge(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    t = t_of(request)
    form = await request.post()
    mode = "to_target" if form.get("mode") == "to_target" else "fixed"
    summary = await summary_of(request.app[API], session, tenant_id)
    places = card_places(summary["account"])
    values: dict[str, Any] = {"enabled": form.get("enabled") == "on", "mode": mode}
    settings: dict[str, Any] = dict(values)
    errors: dict[str, list[str]] = {}
    for name, rule in AMOUNT_RULES.items():
        typed = str(form.get(name) or "").strip()
        values[name] = typed
        if name == "target_balance" and mode != "to_target":
            continue
        checked = check_amount(typed, t, rule, places)
        if not typed:
            errors[name] = [t.gettext("Required.")]
        elif checked.error is not None:
            errors[name] = [checked.error]
        settings[name] = checked.value or None
    if mode == "to_target" and "recharge_amount" in errors and not values["recharge_amount"]:
        # The API still asks for an amount; "recharge to" uses the target.
        del errors["recharge_amount"]
        settings["recharge_amount"] = settings["target_balance"]
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


async def _save_notifications(
    api: ApiClient,
    session: Session,
    tenant_id: str,
    post: notifications.NotificationsPost,
    account: dict[str, Any] | None,
    t: Translator,
) -> dict[str, list[str]]:
    """The PATCH (it keeps the webhook and its secret) and, only if the level changed,
    the limits PUT (an absent `credit_limit` is kept), each under its own key. Both
    are sent so that the API's refusals of either show at once."""
    key = str(uuid.uuid4())
    answers = [await api.change_notifications(session.token, tenant_id, post.patch, key)]
    if notifications.level_changed(account, post.level):
        limits = {"notify_below": post.level}
        key = str(uuid.uuid4())
        answers.append(await api.configure_limits(session.token, tenant_id, limits, key))
    errors: dict[str, list[str]] = {}
    for answer in answers:
        for name, messages in _field_messages(answer, t).items():
            shown = errors.setdefault(name, [])
            shown += [m for m in messages if m not in shown]
    return errors


async def notifications_form(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    tenant_id = tenant_of(request, session)
    if not session.principal.may_change:
        # An operator reads a tenant: the form is not shown to them, nor a post sent on.
        raise Refused()
    t = t_of(request)
    form = await request.post()
    api = request.app[API]
    account = (await summary_of(api, session, tenant_id))["account"]
    post = notifications.read_post(form, t, card_places(account))
    errors = post.errors or await _save_notifications(api, session, tenant_id, post, account, t)
    return await section(
        request, session, tenant_id, "limits", nf_form=post.values, nf_errors=errors,
        nf_saved=not errors,
    )  # fmt: skip
