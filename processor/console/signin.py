"""The console's sign-in: a pasted token, the session it opens, and the language cookie."""

from __future__ import annotations

import hmac

from aiohttp import web

from processor.console.access import page_of, signed_in
from processor.console.api import ApiClient, Unauthorized
from processor.console.app import (
    ADMIN_TOKEN,
    API,
    LANG_COOKIE,
    SESSION_COOKIE,
    SESSIONS,
    Principal,
    Session,
    cookie,
    render,
    t_of,
)
from processor.console.i18n import LANGUAGES, N_

__all__ = ["home", "signin", "signin_form", "signout", "switch_language", "whoami"]


async def home(request: web.Request) -> web.StreamResponse:
    session = signed_in(request)
    principal = session.principal
    if principal.role == "tenant_admin" and principal.tenant_id:
        raise web.HTTPSeeOther(page_of(principal.tenant_id))
    raise web.HTTPSeeOther("/operator")


async def signin_form(request: web.Request) -> web.StreamResponse:
    # access.py sends an expired session here with `?expired=1`.
    expired = request.query.get("expired") == "1"
    message = N_("Your session has expired. Sign in again.") if expired else None
    return render(
        request, "signin.html", error=None if message is None else t_of(request).gettext(message)
    )


async def whoami(api: ApiClient, token: str, admin_token: str) -> Principal | str:
    """Who the token belongs to, or why it is refused (a message id)."""
    try:
        answer = await api.whoami(token)
    except Unauthorized as refused:
        if refused.expired:
            return N_("This token has expired. Ask for a new one.")
        return N_("This token was not accepted.")
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
    if not who.uses_console:
        refusal = t.gettext("Your role (%(role)s) may not use the console's pages.")
        return render(
            request, "signin.html", status=403, error=refusal % {"role": t.gettext(who.role)}
        )
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
