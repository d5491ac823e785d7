"""Added: `GET /commands/{command_id}` on a worker, forwarded to the ledger sink.

The sink keeps every command's status (pending when it saw the command on
credits.commands, then its outcome from credits.command-results) and answers the
query; a worker forwards it (METER_SINK_URL, default the local sink) so that a
client of the admin API needs one base URL: the 202's `Location` is this path.
The sink's answer is relayed as it is (status, body, content type); a sink that
cannot be reached is a 503 `sink_unavailable` with Retry-After.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web
from faust.web import Request, Response, View
from yarl import URL

from processor.http import problems

__all__ = ["SinkForwarder", "install", "sink_base_url"]

log = logging.getLogger(__name__)

# The sink answers from one indexed row: anything slower is a sink in trouble.
FORWARD_TIMEOUT_SECONDS: Final = 5.0


def sink_base_url(sink_url: str | None, sink_port: int) -> str:
    return (sink_url or f"http://127.0.0.1:{sink_port}").rstrip("/")


@dataclass(frozen=True)
class Forwarded:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


class SinkForwarder:
    """Asks the sink for a command's status; one client session, opened lazily."""

    def __init__(self, base_url: str, timeout: float = FORWARD_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(
        self, command_id: str, tenant_id: str | None, authorization: str | None = None
    ) -> Forwarded:
        """`authorization`: the caller's Authorization header, sent along: under
        METER_AUTH=jwt the sink checks the caller's token itself."""
        url = f"{self.base_url}/commands/{quote(command_id, safe='')}"
        sent = {} if authorization is None else {"Authorization": authorization}
        if tenant_id is not None:
            url += "?" + urlencode({"tenant_id": tenant_id})
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            # Encoded already: an id's "/" must reach the sink as %2F.
            async with self._session.get(URL(url, encoded=True), headers=sent) as answer:
                body = await answer.read()
                content_type = answer.headers.get("Content-Type", "application/json")
                headers = {
                    name: value
                    for name, value in answer.headers.items()
                    if name.lower() in ("retry-after", "www-authenticate")
                }
                return Forwarded(answer.status, body, content_type, headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("command status: the ledger sink at %s did not answer: %r", url, exc)
            detail = (
                f"the ledger sink ({self.base_url}) that keeps command statuses did not "
                f"answer ({type(exc).__name__}); retry, or check `meter ledger-sink`"
            )
            return Forwarded(
                503,
                problems.problem_body(503, "sink_unavailable", detail, tenant_id=tenant_id),
                problems.PROBLEM_JSON,
                problems.problem_headers(503),
            )


def install(meter: Any) -> SinkForwarder:
    """Add GET /commands/{command_id} to the worker's web server."""
    cfg = meter.cfg
    forwarder = SinkForwarder(sink_base_url(cfg.sink_url, cfg.sink_port))

    @meter.app.page("/commands/{command_id}")
    class CommandStatusPage(View):
        async def get(self, request: Request, command_id: str) -> Response:
            aio = cast(web.Request, request)
            got = await forwarder.status(
                command_id, aio.query.get("tenant_id"), aio.headers.get("Authorization")
            )
            content_type = got.content_type.partition(";")[0].strip()
            return self.bytes(
                got.body, content_type=content_type, status=got.status, headers=got.headers
            )

    return forwarder
