"""The worker's own web pages: thin Faust views over processor/http/.

The account read API (`AccountAPI`, processor/http/accounts.py), who the caller is,
metrics and the probes; the admin endpoints are added by processor/http/admin_web.py.
Faust's own pages are off (processor/worker/faust_app.py says why).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import faust
import orjson
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from processor.http import auth
from processor.http.accounts import FORWARDED_HEADER, AccountAPI
from processor.http.problems import PROBLEM_JSON, RETRY_AFTER_SECONDS, as_is, install_fallback
from processor.kafka.routing import partition_for
from processor.observability import metrics

__all__ = ["install", "owner_url"]


def _content_type(status: int) -> str:
    # An error is problem details, here or forwarded from the owner (the same code).
    return PROBLEM_JSON if status >= 400 else "application/json"


def owner_url(app: faust.App, table: Any, partitions: int, tenant_id: str) -> str | None:
    """The HTTP address of the worker whose active partitions hold this tenant."""
    partition = partition_for(tenant_id, partitions)
    changelog = table.changelog_topic.get_topic_name()
    for url, topics in app.router.table_metadata(table.name).items():
        if partition in topics.get(changelog, ()):
            return str(url)
    return None


def install(
    app: faust.App,
    access: auth.Access,
    accounts: AccountAPI,
    readiness: Callable[[], tuple[bool, str]],
) -> tuple[type[View], ...]:
    """Add the worker's pages to its web server; the view classes, for tests."""
    # What aiohttp and Faust answer on their own (unknown path, method not
    # served, an exception) leaves as problem details too.
    install_fallback(app.web)
    # METER_AUTH=jwt: every endpoint but the open ones needs a token allowing it.
    cast(Any, app.web).web_app.middlewares.append(auth.middleware(access))

    @app.page("/tenants/{tenant_id}/account")
    class AccountPage(View):
        async def get(self, request: Request, tenant_id: str) -> Response:
            status, body, headers = await accounts.account_response(
                tenant_id,
                forwarded=FORWARDED_HEADER in request.headers,
                authorization=request.headers.get("Authorization"),
            )
            return self.bytes(
                body, content_type=_content_type(status), status=status, headers=headers
            )

    @app.page("/tenants/{tenant_id}/authorize")
    class AuthorizePage(View):
        async def get(self, request: Request, tenant_id: str) -> Response:
            query = cast(web.Request, request).query
            status, body, headers = await accounts.authorize_response(
                tenant_id,
                query.get("service"),
                query.get("number"),
                forwarded=FORWARDED_HEADER in request.headers,
                authorization=request.headers.get("Authorization"),
            )
            return self.bytes(
                body, content_type=_content_type(status), status=status, headers=headers
            )

    @app.page("/auth/whoami")
    class WhoAmIPage(View):
        async def get(self, request: Request) -> Response:
            # Checked by auth.middleware under METER_AUTH=jwt; else the static token.
            principal = auth.principal_of(request)
            if principal is None:
                try:
                    principal = access.principal(request.headers)
                except auth.AuthError as refused:
                    return cast(Response, refused.answer(None))
            return self.bytes(auth.whoami_body(principal), content_type="application/json")

    @app.page("/metrics")
    class MetricsPage(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type, so the exposition
            # format's own content type goes in without it.
            return self.bytes(
                generate_latest(metrics.REGISTRY),
                content_type="text/plain; version=0.0.4",
            )

    @app.page("/health")
    class HealthPage(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(b'{"status":"ok"}', content_type="application/json")

    @app.page("/ready")
    class ReadyPage(View):
        async def get(self, request: Request) -> Response:
            ready, detail = readiness()
            # A probe's answer, not an error: the contract's body, and like every
            # 503 a Retry-After.
            response = self.bytes(
                orjson.dumps({"ready": ready, "detail": detail}),
                content_type="application/json",
                status=200 if ready else 503,
                headers=None if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            as_is(cast(web.Response, response))
            return response

    return (
        AccountPage,
        AuthorizePage,
        WhoAmIPage,
        MetricsPage,
        HealthPage,
        ReadyPage,
    )
