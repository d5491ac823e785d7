"""Stand-ins for the worker API and the ledger sink, as far as the console uses them,
and the steps of a console test (sign in, read a page's CSRF token).

tests/unit/test_console*.py drive `meter console`'s app against these.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from processor.console.api import ApiClient
from processor.console.app import build_app
from processor.http.admin_requests import AdminRequest, Endpoint, Refused, validate
from schemas.admin import LimitsRequest, NotificationsPatch

ADMIN_TOKEN = "static-admin-token"
EXPIRED_TOKEN = "tok-expired"
TOKENS: dict[str, dict[str, Any]] = {
    "tok-acme": {"subject": "alice", "role": "tenant_admin", "tenant_id": "acme"},
    "tok-ops": {"subject": "olga", "role": "operator", "tenant_id": None},
    "tok-billing": {"subject": "bill", "role": "billing", "tenant_id": None},
}
# What the worker and the sink answer a token past its `exp` (processor/http/auth.py).
EXPIRED: dict[str, Any] = {
    "type": "https://credits-meter.dev/problems/invalid_token",
    "status": 401,
    "error": "invalid_token",
    "detail": "the token has expired",
}

Console = tuple[TestClient[Any, Any], "FakeApis"]
FormData = Mapping[str, str] | list[tuple[str, str]]
# The fakes' rate card: the currency and decimals of `account`'s amounts.
CARD_CURRENCY, CARD_DECIMALS = "EUR", 2


@dataclass(frozen=True)
class Sent:
    """A settings command the console sent: the endpoint, its body and its key."""

    endpoint: str
    tenant_id: str
    body: Any
    key: str | None


def account(tenant: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "currency": "EUR",
        "balance": "12.34",
        "status": "active",
        "auto_recharge": None,
        "pending_recharge": None,
        "updated_at": None,
        "credit_limit": "0.00",
        "notify_below": None,
    }


def ledger_entry(tenant: str, name: str, **fields: Any) -> dict[str, Any]:
    return {
        "entry_id": f"e-{name}",
        "tenant_id": tenant,
        "kind": "credit",
        "amount": "1.00",
        "currency": "EUR",
        "balance_after": "12.34",
        "cause_topic": "credits.commands",
        "cause_id": f"cause-{name}",
        "occurred_at": "2026-12-01T10:00:00Z",
        "recorded_at": "2026-12-01T10:00:01Z",
        **fields,
    }


class FakeApis:
    """The worker API and the ledger sink. `accounts`, `entries` and `recharges` replace
    a tenant's defaults; `expired` makes every call answer as to an expired token."""

    def __init__(self, whoami: bool = True) -> None:
        self.whoami = whoami
        self.calls: list[tuple[str, str, str | None]] = []
        self.accounts: dict[str, dict[str, Any]] = {}
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.recharges: dict[str, list[dict[str, Any]]] = {}
        self.funds_status = 403
        self.expired = False
        # Tenants with no account yet (the account view's 404).
        self.new_tenants: set[str] = set()
        self.sent: list[Sent] = []

    def principal(self, request: web.Request) -> dict[str, Any] | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return TOKENS.get(token)

    @web.middleware
    async def tokens(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.expired or token == EXPIRED_TOKEN:
            return web.json_response(EXPIRED, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def command(
        self, endpoint: Endpoint, model: type[AdminRequest]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A settings endpoint that checks its body as the admin API does (its 422s)."""

        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            tenant = request.match_info["tenant_id"]
            key = request.headers.get("Idempotency-Key")
            self.sent.append(Sent(endpoint, tenant, orjson.loads(raw), key))
            try:
                validate(
                    endpoint, tenant, request.headers, raw, model, CARD_CURRENCY, CARD_DECIMALS
                )
            except Refused as refused:
                return web.Response(body=refused.reply.body, status=refused.reply.status)
            return web.json_response({"status": "accepted"}, status=202)

        return handle

    def app(self) -> web.Application:
        async def whoami(request: web.Request) -> web.Response:
            who = self.principal(request)
            return web.json_response(who) if who else web.json_response({}, status=401)

        async def account_view(request: web.Request) -> web.Response:
            tenant = request.match_info["tenant_id"]
            who = self.principal(request)
            self.calls.append(("account", tenant, request.headers.get("Authorization")))
            if who and who["role"] == "tenant_admin" and who["tenant_id"] != tenant:
                return web.json_response({"error": "forbidden"}, status=403)
            if who and who["role"] == "billing":
                detail = "a billing token may not read"
                return web.json_response({"error": "forbidden", "detail": detail}, status=403)
            if tenant in self.new_tenants:
                return web.json_response({"error": "not_found"}, status=404)
            return web.json_response(self.accounts.get(tenant) or account(tenant))

        async def auto_recharge(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(("auto-recharge", request.match_info["tenant_id"], str(body)))
            errors = []
            if "." in body["trigger_balance"] and len(body["trigger_balance"].split(".")[1]) > 2:
                errors.append(
                    {
                        "loc": ["body", "trigger_balance"],
                        "msg": "has more than 2 decimal places",
                        "type": "too_many_decimals",
                    }
                )
            if body["recharge_amount"].startswith("-"):
                errors.append(
                    {
                        "loc": ["body", "recharge_amount"],
                        "msg": "Input should be greater than 0",
                        "type": "greater_than",
                    }
                )
            if errors:
                return web.json_response(
                    {"error": "invalid_request", "detail": "...", "errors": errors}, status=422
                )
            return web.json_response({"status": "accepted"}, status=202)

        async def empty(request: web.Request) -> web.Response:
            return web.json_response({"entries": [], "buckets": [], "recharges": []})

        async def recharges(request: web.Request) -> web.Response:
            tenant = request.match_info["tenant_id"]
            return web.json_response({"recharges": self.recharges.get(tenant, [])})

        async def ledger(request: web.Request) -> web.Response:
            tenant = request.match_info["tenant_id"]
            self.calls.append(("ledger", tenant, request.query_string))
            before = request.query.get("before")
            if before not in (None, "page-2"):
                return web.json_response(
                    {
                        "error": "invalid_cursor",
                        "detail": "before must be a next_cursor this API returned",
                    },
                    status=400,
                )
            if tenant in self.entries:
                return web.json_response({"entries": self.entries[tenant], "next_cursor": None})
            entry = ledger_entry(tenant, before or "newest")
            following = None if before else "page-2"
            return web.json_response({"entries": [entry], "next_cursor": following})

        async def funds(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(("funds", request.match_info["tenant_id"], body["amount"]))
            if self.funds_status == 202:
                return web.json_response({"command_id": "k-1"}, status=202)
            return web.json_response(
                {"error": "forbidden", "detail": "a tenant_admin token may not funds"}, status=403
            )

        async def tenants(request: web.Request) -> web.Response:
            listed = [
                {
                    "tenant_id": "acme",
                    "currency": "EUR",
                    "balance": "12.34",
                    "status": "active",
                    "auto_recharge_suspended": False,
                    "below_low_balance": False,
                    "recharge_failures": 0,
                    "last_failure_reason": None,
                },
                {
                    "tenant_id": "globex",
                    "currency": "EUR",
                    "balance": "-1.00",
                    "status": "exhausted",
                    "auto_recharge_suspended": False,
                    "below_low_balance": True,
                    "recharge_failures": 0,
                    "last_failure_reason": None,
                },
            ]
            if request.query.get("status") == "exhausted":
                listed = [t for t in listed if t["status"] == "exhausted"]
            return web.json_response({"tenants": listed, "next_cursor": None})

        async def statement(request: web.Request) -> web.Response:
            return web.Response(text="entry_id,recorded_at\n", content_type="text/csv")

        app = web.Application(middlewares=[self.tokens])
        if self.whoami:
            app.router.add_get("/auth/whoami", whoami)
        app.router.add_get("/tenants/{tenant_id}/account", account_view)
        app.router.add_put("/tenants/{tenant_id}/auto-recharge", auto_recharge)
        app.router.add_patch(
            "/tenants/{tenant_id}/notifications",
            self.command("notifications-change", NotificationsPatch),
        )
        app.router.add_put("/tenants/{tenant_id}/limits", self.command("limits", LimitsRequest))
        app.router.add_get("/tenants/{tenant_id}/ledger", ledger)
        app.router.add_get("/tenants/{tenant_id}/ledger.csv", statement)
        app.router.add_post("/tenants/{tenant_id}/funds", funds)
        app.router.add_get("/tenants/{tenant_id}/usage", empty)
        app.router.add_get("/tenants/{tenant_id}/recharges", recharges)
        app.router.add_get("/tenants", tenants)
        return app


async def console_of(fakes: FakeApis) -> AsyncIterator[Console]:
    async with TestClient(TestServer(fakes.app())) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        app = build_app(ApiClient(url, url), ADMIN_TOKEN)
        async with TestClient(TestServer(app)) as client:
            yield client, fakes


async def csrf_of(client: TestClient[Any, Any], path: str = "/signin") -> str:
    html = await (await client.get(path)).text()
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found[1]


async def sign_in(client: TestClient[Any, Any], token: str) -> ClientResponse:
    csrf = await csrf_of(client)
    return await client.post("/signin", data={"token": token, "csrf": csrf}, allow_redirects=False)


async def post_form(
    client: TestClient[Any, Any], path: str, page: str, data: FormData, htmx: bool = True
) -> str:
    """A form of `page` posted to `path` (as htmx does, by default): the answer's HTML.
    A list of pairs posts a name more than once (checkboxes)."""
    csrf = await csrf_of(client, page)
    headers = {"HX-Request": "true"} if htmx else {}
    fields = [*(data.items() if isinstance(data, Mapping) else data), ("csrf", csrf)]
    resp = await client.post(path, data=fields, headers=headers)
    return await resp.text()
