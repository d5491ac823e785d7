"""Who may see a console page: the signed-in session, and the tenant it may show.

Every page handler starts here: no session sends the browser to /signin, a tenant id
that is not one is a 404, and a tenant admin asking for another tenant's page is
refused (`Refused`, which the handler renders as the 403 page).
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from processor.console.app import Session, session_of
from processor.http.views import tenant_id_problem

__all__ = ["Refused", "page_of", "signed_in", "tenant_of"]


def signed_in(request: web.Request) -> Session:
    session = session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/signin")
    return session


def tenant_of(request: web.Request, session: Session) -> str:
    tenant_id = request.match_info["tenant_id"]
    if tenant_id_problem(tenant_id) is not None:
        raise web.HTTPNotFound()
    if not session.principal.may_see(tenant_id):
        raise Refused()
    return tenant_id


class Refused(Exception):
    """A tenant admin asked for another tenant's page."""


def page_of(tenant_id: str) -> str:
    return f"/tenants/{quote(tenant_id, safe='')}"
