"""The console's client of the worker API and the ledger sink.

Every call carries the signed-in user's bearer token, so what a user may see or
change is decided by those APIs, not here. An endpoint a deployment does not have yet
(`/auth/whoami`, `/commands/{id}`, a field of the account view) is `None`, and the
page leaves that part out rather than failing. A 401 is never an answer to show: the
token no longer works (it expired), raised as `Unauthorized` for the console to end
the session (access.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson

__all__ = ["Answer", "ApiClient", "Unauthorized"]

TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class Answer:
    """An API's answer: its status, the JSON body (None if it was not JSON), headers."""

    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.body is not None

    def problem(self) -> str:
        """The API's own words for a refusal (problem+json `detail`, or `error`)."""
        if isinstance(self.body, dict):
            return str(self.body.get("detail") or self.body.get("error") or self.status)
        return f"HTTP {self.status}"

    def field_errors(self) -> list[dict[str, Any]]:
        """A 422's field errors: [{"loc": [...], "msg", "type"}]."""
        if not isinstance(self.body, dict):
            return []
        errors = self.body.get("errors") or []
        return [e for e in errors if isinstance(e, dict)]


class Unauthorized(Exception):
    """An API answered 401: the user's token is no longer good (expired, revoked)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.problem())
        self.answer = answer

    @property
    def expired(self) -> bool:
        # processor/http/auth.py's detail for a token past its `exp`.
        return "expired" in self.answer.problem()


def _tid(tenant_id: str) -> str:
    return quote(tenant_id, safe="")


class ApiClient:
    def __init__(self, api_url: str, sink_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.sink_url = sink_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self,
        method: str,
        url: str,
        token: str,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        sent.update(headers or {})
        data = None
        if payload is not None:
            data = orjson.dumps(payload)
            sent["Content-Type"] = "application/json"
        try:
            async with self.session.request(method, url, data=data, headers=sent) as resp:
                raw = await resp.read()
                try:
                    body = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    body = None
                answer = Answer(resp.status, body, dict(resp.headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Answer(503, {"error": "unreachable", "detail": str(exc) or repr(exc)}, {})
        if answer.status == 401:
            raise Unauthorized(answer)
        return answer

    # ---- the worker API ----------------------------------------------------------

    async def whoami(self, token: str) -> Answer:
        return await self._call("GET", f"{self.api_url}/auth/whoami", token)

    async def account(self, token: str, tenant_id: str) -> Answer:
        return await self._call("GET", f"{self.api_url}/tenants/{_tid(tenant_id)}/account", token)

    async def add_funds(
        self, token: str, tenant_id: str, amount: str, currency: str, key: str
    ) -> Answer:
        funds = {"amount": amount, "currency": currency}
        return await self._change("POST", token, tenant_id, "funds", funds, key)

    async def _change(
        self, method: str, token: str, tenant_id: str, what: str, body: Any, key: str
    ) -> Answer:
        """One command to the admin API, under its Idempotency-Key (a retry with the same
        key is the same command)."""
        url = f"{self.api_url}/tenants/{_tid(tenant_id)}/{what}"
        return await self._call(method, url, token, body, {"Idempotency-Key": key})

    async def configure_auto_recharge(
        self, token: str, tenant_id: str, settings: dict[str, Any], key: str
    ) -> Answer:
        return await self._change("PUT", token, tenant_id, "auto-recharge", settings, key)

    async def change_notifications(
        self, token: str, tenant_id: str, change: dict[str, Any], key: str
    ) -> Answer:
        """A partial change (PATCH): the fields not named, the webhook and its secret
        among them, are kept."""
        return await self._change("PATCH", token, tenant_id, "notifications", change, key)

    async def configure_limits(
        self, token: str, tenant_id: str, limits: dict[str, Any], key: str
    ) -> Answer:
        """PUT limits: a limit not named is kept, `notify_below: None` clears the level."""
        return await self._change("PUT", token, tenant_id, "limits", limits, key)

    async def command_status(self, token: str, location: str) -> Answer:
        return await self._call("GET", f"{self.api_url}{location}", token)

    # ---- the ledger sink ---------------------------------------------------------

    async def ledger(
        self, token: str, tenant_id: str, before: str | None = None, limit: int = 20
    ) -> Answer:
        query = {"limit": str(limit)} | ({} if before is None else {"before": before})
        url = f"{self.sink_url}/tenants/{_tid(tenant_id)}/ledger?{urlencode(query)}"
        return await self._call("GET", url, token)

    async def usage(
        self, token: str, tenant_id: str, start: str, end: str, group_by: str
    ) -> Answer:
        query = urlencode({"from": start, "to": end, "group_by": group_by})
        return await self._call(
            "GET", f"{self.sink_url}/tenants/{_tid(tenant_id)}/usage?{query}", token
        )

    async def recharges(self, token: str, tenant_id: str, limit: int = 10) -> Answer:
        return await self._call(
            "GET", f"{self.sink_url}/tenants/{_tid(tenant_id)}/recharges?limit={limit}", token
        )

    async def tenants(
        self, token: str, q: str | None, status: str | None, cursor: str | None, limit: int = 50
    ) -> Answer:
        query = {"limit": str(limit)}
        for name, value in (("q", q), ("status", status), ("cursor", cursor)):
            if value:
                query[name] = value
        return await self._call("GET", f"{self.sink_url}/tenants?{urlencode(query)}", token)

    def statement_url(self, tenant_id: str) -> str:
        return f"{self.sink_url}/tenants/{_tid(tenant_id)}/ledger.csv"
