"""Who may see a console page: the signed-in session, and the tenant it may show.

Every page handler starts here: no session sends the browser to /signin, a tenant id
that is not one is `NoSuchTenant`, and a tenant admin asking for another tenant's page
is `Refused`. The `refusals` middleware answers those, and an API's 401 (the token
expired while the session lasts), with the console's own pages.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from aiohttp import web

from processor.console.api import Unauthorized
from processor.console.app import (
    SESSION_COOKIE,
    SESSIONS,
    Handler,
    Session,
    is_htmx,
    render,
    session_of,
)
from processor.http.views import tenant_id_problem

__all__ = [
    "EXPIRED_SIGNIN",
    "NoSuchTenant",
    "Refused",
    "page_of",
    "refusals",
    "signed_in",
    "tenant_of",
]

# Where an expired session is sent: the sign-in page, saying why (signin.py).
EXPIRED_SIGNIN: Final = "/signin?expired=1"


def signed_in(request: web.Request) -> Session:
    session = session_of(request)
    if session is None and is_htmx(request):
        # A redirect would be followed and the sign-in form swapped into a section.
        raise web.HTTPNoContent(headers={"HX-Redirect": "/signin"})
    if session is None:
        raise web.HTTPSeeOther("/signin")
    return session


def tenant_of(request: web.Request, session: Session) -> str:
    tenant_id = request.match_info["tenant_id"]
    if tenant_id_problem(tenant_id) is not None:
        raise NoSuchTenant(tenant_id)
    if not session.principal.may_see(tenant_id):
        raise Refused()
    return tenant_id


class Refused(Exception):
    """The user's role may not see this page (a tenant admin, another tenant's)."""


class NoSuchTenant(Exception):
    """A tenant id that cannot be one (the APIs' own rule, `tenant_id_problem`)."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(tenant_id)
        self.tenant_id = tenant_id


def page_of(tenant_id: str) -> str:
    return f"/tenants/{quote(tenant_id, safe='')}"


def session_expired(request: web.Request) -> web.StreamResponse:
    """The session ended and the browser sent to sign in again: htmx, which would swap
    a redirect's page into a section, is told to go there itself (`HX-Redirect`)."""
    request.app[SESSIONS].end(request.cookies.get(SESSION_COOKIE))
    if is_htmx(request):
        response = web.Response(headers={"HX-Redirect": EXPIRED_SIGNIN})
    else:
        response = web.Response(status=303, headers={"Location": EXPIRED_SIGNIN})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The console's pages for what a handler cannot show."""
    try:
        return await handler(request)
    except Unauthorized:
        return session_expired(request)
    except Refused:
        return render(request, "refused.html", status=403)
    except NoSuchTenant as missing:
        return render(request, "not_found.html", status=404, tenant_id=missing.tenant_id)
    except web.HTTPNotFound:
        return render(request, "not_found.html", status=404, tenant_id=None)
