"""`meter console`: the admin console, an aiohttp app rendering Jinja2 pages.

Sign-in is a pasted token (the access issue's JWT, or the static METER_ADMIN_TOKEN
where the workers have no `/auth/whoami`); the console asks the worker who it is and
keeps, per browser, a random session id in an HttpOnly, SameSite=Strict cookie. The
token itself stays on the server and goes with every API call, so the APIs decide
what each user may read and change. Every form carries a CSRF token; a POST without
the right one (or from another origin) is refused. htmx (vendored in static/) only
enhances: every form also works as a plain form post.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jinja2
from aiohttp import web
from markupsafe import Markup

from processor.console.api import ApiClient
from processor.console.i18n import DEFAULT, LANGUAGES, Translator, column_places, translator
from processor.console.status import listed_badges
from schemas.notifications import MAX_EMAILS, NOTIFICATION_EVENTS

__all__ = ["Principal", "Session", "build_app", "serve"]

log = logging.getLogger("processor.console")

HERE: Final = Path(__file__).resolve().parent
SESSION_COOKIE: Final = "meter_session"
CSRF_COOKIE: Final = "meter_csrf"
LANG_COOKIE: Final = "meter_lang"
SESSION_SECONDS: Final = 8 * 3600
MAX_SESSIONS: Final = 10_000
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Principal:
    """Who signed in, as `/auth/whoami` says (`admin`: the static admin token)."""

    subject: str
    role: str
    tenant_id: str | None

    @property
    def uses_console(self) -> bool:
        # billing posts top-ups and recharge outcomes but reads nothing: no page to show.
        return self.role in ("tenant_admin", "operator", "admin")

    def may_see(self, tenant_id: str) -> bool:
        return self.role != "tenant_admin" or self.tenant_id == tenant_id

    @property
    def may_change(self) -> bool:
        return self.role in ("tenant_admin", "admin")

    @property
    def sees_all(self) -> bool:
        return self.role in ("operator", "admin")


@dataclass
class Session:
    token: str
    principal: Principal
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    started: float = field(default_factory=time.monotonic)
    # The decimals each tenant's page shows its amounts at (places.page_places).
    places: dict[str, int] = field(default_factory=dict)


class Sessions:
    """Sessions in memory, bounded in number and age (a restart signs everyone out)."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def new(self, session: Session) -> str:
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = session
        return sid

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is not None and time.monotonic() - session.started > SESSION_SECONDS:
            del self._by_id[sid]
            return None
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)


API: Final = web.AppKey("api", ApiClient)
SESSIONS: Final = web.AppKey("sessions", Sessions)
TEMPLATES: Final = web.AppKey("templates", jinja2.Environment)
ADMIN_TOKEN: Final = web.AppKey("admin_token", str)
FRESH_CSRF: Final = web.RequestKey("fresh_csrf", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_of(request: web.Request) -> Session | None:
    return request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE))


def language(request: web.Request) -> str:
    lang = request.cookies.get(LANG_COOKIE)
    if lang in LANGUAGES:
        return str(lang)
    accept = request.headers.get("Accept-Language", "")
    return "el" if accept.lower().startswith("el") else DEFAULT


def t_of(request: web.Request) -> Translator:
    return translator(language(request))


def csrf_token(request: web.Request) -> str:
    session = session_of(request)
    if session is not None:
        return session.csrf
    return str(request.get(FRESH_CSRF) or request.cookies.get(CSRF_COOKIE) or "")


def cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, **kw: Any
) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
        **kw,
    )


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    t = t_of(request)
    session = session_of(request)
    body = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            _=t.gettext,
            t=t,
            lang=t.lang,
            languages=LANGUAGES,
            csrf=csrf_token(request),
            principal=None if session is None else session.principal,
            path=request.path_qs,
            **context,
        )
    )
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers on every answer; CSRF and same-origin checks on every POST."""
    fresh_csrf = None
    if CSRF_COOKIE not in request.cookies:
        fresh_csrf = secrets.token_urlsafe(32)
        request[FRESH_CSRF] = fresh_csrf
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            raise web.HTTPForbidden(text="cross-origin form post refused")
        form = await request.post()
        given = str(form.get("csrf") or request.headers.get("X-CSRF-Token") or "")
        expected = csrf_token(request)
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if fresh_csrf is not None:
        cookie(response, request, CSRF_COOKIE, fresh_csrf)
    return response


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    env.globals["nbsp"] = Markup("&nbsp;")
    env.globals["column_places"] = column_places
    env.globals["listed_badges"] = listed_badges
    env.globals["notification_events"] = NOTIFICATION_EVENTS
    env.globals["max_emails"] = MAX_EMAILS
    return env


def build_app(api: ApiClient, admin_token: str | None = None) -> web.Application:
    from processor.console import pages
    from processor.console.access import refusals

    app = web.Application(middlewares=[security, refusals], client_max_size=64 * 1024)
    app[API] = api
    app[SESSIONS] = Sessions()
    app[TEMPLATES] = templates()
    app[ADMIN_TOKEN] = admin_token or ""
    pages.routes(app)
    app.router.add_static("/static/", HERE / "static", append_version=False)

    async def close(app: web.Application) -> None:
        await app[API].close()

    app.on_cleanup.append(close)
    return app


async def serve(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("console: http://%s:%d/", host, port)
        await stop.wait()
    finally:
        await runner.cleanup()
