"""The account read API, answered from any worker, independent of the web framework.

    GET /tenants/{tenant_id}/account
    GET /tenants/{tenant_id}/authorize?service=&number=

A worker answers from its own table when it owns the tenant's partition, and asks the
owner otherwise. `AccountAPI` is built with what it needs to know (the local lookup,
who owns which partition, whether this worker is ready, its own URL) as callables, so
it is tested without Faust; processor/worker/web.py puts it on a worker's web server.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final
from urllib.parse import quote, urlencode

import aiohttp
import orjson

from processor.core.rating import RateCard
from processor.core.stored import StoredAccount
from processor.http.problems import RETRY_AFTER_SECONDS, problem_body
from processor.http.views import account_view, authorize_problem, authorize_view, tenant_id_problem
from processor.kafka.routing import partition_for

__all__ = ["FORWARDED_HEADER", "FORWARD_TIMEOUT_SECONDS", "AccountAPI", "Answer"]

FORWARDED_HEADER: Final = "X-Meter-Forwarded-By"
# A read forwarded to the tenant's owner gets this long, all in (connect, send,
# answer); past it the client hears 503 and when to retry, rather than wait on a
# worker that is stuck or gone (the session's default is minutes).
FORWARD_TIMEOUT_SECONDS: Final = 2.0

# Status, body and headers: what the web adapter sends.
Answer = tuple[int, bytes, dict[str, str]]


def _error(status: int, code: str, detail: str, tenant_id: str | None) -> bytes:
    # RFC 9457 problem details (processor/http/problems.py), with the promised fields.
    return problem_body(status, code, detail, tenant_id=tenant_id)


class AccountAPI:
    """The read endpoints' logic: validate, then answer here or from the owner."""

    def __init__(
        self,
        card: RateCard,
        partitions: int,
        *,
        lookup: Callable[[str], StoredAccount | None],
        owner_url: Callable[[str], str | None],
        owned_partitions: Callable[[], set[int]],
        ready: Callable[[], bool],
        me: Callable[[], str],
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], datetime],
        forward_timeout: float = FORWARD_TIMEOUT_SECONDS,
    ) -> None:
        self.card = card
        self.partitions = partitions
        # The stored account in this worker's table (None: never seen).
        self.lookup = lookup
        # The HTTP address of the worker whose active partitions hold a tenant.
        self.owner_url = owner_url
        self.owned_partitions = owned_partitions
        self.ready = ready
        # This worker's own address, as the others know it.
        self.me = me
        # The worker's HTTP client, made on first use.
        self.session = session
        # The worker's clock: names the current month of "consumption".
        self.clock = clock
        self.forward_timeout = forward_timeout

    async def account_response(
        self, tenant_id: str, forwarded: bool, authorization: str | None = None
    ) -> Answer:
        """GET /tenants/{tenant_id}/account: the owner's answer (`_owner_answer`)."""

        def local(stored: StoredAccount | None) -> Answer:
            if stored is None:
                return 404, _error(404, "not_found", "no event for this tenant yet", tenant_id), {}
            return (
                200,
                orjson.dumps(account_view(stored.account, self.card.currency, self.clock())),
                {},
            )

        return await self._owner_answer(tenant_id, forwarded, "account", local, authorization)

    async def authorize_response(
        self,
        tenant_id: str,
        service: str | None,
        number: str | None,
        forwarded: bool,
        authorization: str | None = None,
    ) -> Answer:
        """GET /tenants/{tenant_id}/authorize?service=&number=: may this call start, and
        for how long at most (processor/http/views.py), from the owner like the account."""
        problem = tenant_id_problem(tenant_id)
        if problem is None:
            bad = authorize_problem(service, number)
            if bad is not None:
                return 400, _error(400, bad[0], bad[1], tenant_id), {}
            assert service is not None and number is not None

        def local(stored: StoredAccount | None) -> Answer:
            assert service is not None and number is not None
            account = None if stored is None else stored.account
            view = authorize_view(tenant_id, account, self.card, service, number)
            return 200, orjson.dumps(view), {}

        query = urlencode({"service": service or "", "number": number or ""})
        return await self._owner_answer(
            tenant_id, forwarded, f"authorize?{query}", local, authorization
        )

    async def _owner_answer(
        self,
        tenant_id: str,
        forwarded: bool,
        page: str,
        local: Callable[[StoredAccount | None], Answer],
        authorization: str | None = None,
    ) -> Answer:
        """Answer here if this worker owns the tenant, else ask the owner for
        `/tenants/{tenant_id}/{page}`; `local` answers from the stored account (None:
        never seen).

        The id is validated first: one that breaks the contract's pattern is a 400 and
        is never hashed, cached or forwarded. Faust's own table_route asks the producer
        for the changelog's partitions, which it only knows after writing to them, so
        it fails on a fresh worker; the owner is found here from the assignment
        instead. A worker that is not (or not yet) the owner answers 503 rather than a
        wrong 404; every 503 carries Retry-After. The caller's Authorization goes
        along: under METER_AUTH=jwt the owner checks the token again, so the hop's
        header (X-Meter-Forwarded-By, which anyone can send) grants nothing.
        """
        problem = tenant_id_problem(tenant_id)
        if problem is not None:
            return 400, _error(400, "invalid_tenant_id", problem, None), {}
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        owner = self.owner_url(tenant_id)
        me = self.me()
        if owner is not None and owner != me and not forwarded:
            url = f"{owner.rstrip('/')}/tenants/{quote(tenant_id, safe='')}/{page}"
            try:
                forward = {FORWARDED_HEADER: me}
                if authorization is not None:
                    forward["Authorization"] = authorization
                async with self.session().get(
                    url,
                    headers=forward,
                    timeout=aiohttp.ClientTimeout(total=self.forward_timeout),
                ) as resp:
                    status, body = resp.status, await resp.read()
            except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
                detail = f"{owner} did not answer within {self.forward_timeout:g}s"
                return 503, _error(503, "owner_unreachable", detail, tenant_id), retry
            except aiohttp.ClientError as exc:
                return 503, _error(503, "owner_unreachable", f"{owner}: {exc!r}", tenant_id), retry
            return status, body, retry if status == 503 else {}
        partition = partition_for(tenant_id, self.partitions)
        if owner != me or partition not in self.owned_partitions() or not self.ready():
            return (
                503,
                _error(
                    503,
                    "unavailable",
                    "the tenant's partition is being reassigned; retry",
                    tenant_id,
                ),
                retry,
            )
        return local(self.lookup(tenant_id))
