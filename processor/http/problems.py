"""HTTP errors as RFC 9457 problem details (``application/problem+json``).

Every error answer of the three HTTP servers (the worker's read API, its admin API,
the ledger sink's query API) is built here:

    {"type": "https://credits-meter.dev/problems/<code>", "title": "Not Found",
     "status": 404, "detail": "...", "error": "<code>", ...extra}

``error`` is the short code the contract promised before problem details, so a client
that reads it keeps working; ``extra`` carries our other fields (``tenant_id``,
``errors`` on a 422). Every 503 carries ``Retry-After``.

`problem` is the aiohttp answer; `problem_body` and `problem_headers` are its parts,
for code that hands bytes around (the admin API's replies, a forwarded read).
`install_fallback` turns what aiohttp or Faust answer on their own (an unknown
path, a method a page does not serve, an exception) into problem details too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_TYPE_BASE",
    "RETRY_AFTER_SECONDS",
    "as_is",
    "install_fallback",
    "is_problem",
    "problem",
    "problem_body",
    "problem_headers",
    "problem_middleware",
]

log = logging.getLogger(__name__)

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_TYPE_BASE: Final = "https://credits-meter.dev/problems/"
# How long a client told 503 should wait: a reassignment, an owner's restart or a
# broker's hiccup takes seconds.
RETRY_AFTER_SECONDS: Final = 2

# Codes for what the frameworks answer on their own (no code of ours named one).
_FRAMEWORK_CODES: Final[dict[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def problem_body(status: int, code: str, detail: str, **extra: Any) -> bytes:
    """The JSON body: type, title, status, detail, error (= code), then `extra`.

    A None `extra` value is written as null (``tenant_id: null`` is promised), except
    `errors`, which appears only when there are some.
    """
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": _title(status),
        "status": status,
        "detail": detail,
        "error": code,
    }
    for name, value in extra.items():
        if name == "errors" and value is None:
            continue
        body[name] = _plain(value)
    return orjson.dumps(body)


def problem_headers(
    status: int,
    headers: Mapping[str, str] | None = None,
    retry_after: int | None = None,
) -> dict[str, str]:
    """`headers`, plus Retry-After on a 503 (when `headers` has none)."""
    out = dict(headers or {})
    if status == 503 and not any(name.lower() == "retry-after" for name in out):
        out["Retry-After"] = str(RETRY_AFTER_SECONDS if retry_after is None else retry_after)
    return out


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    retry_after: int | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 9457 answer: `problem_body` as application/problem+json."""
    return web.Response(
        status=status,
        body=problem_body(status, code, detail, **extra),
        content_type=PROBLEM_JSON,
        headers=problem_headers(status, headers, retry_after),
    )


_AS_IS: Final = web.ResponseKey("meter_problem_as_is", bool)


_R = TypeVar("_R", bound=web.StreamResponse)


def as_is(response: _R) -> _R:
    """Mark a 4xx/5xx answer that is meant as it is (a readiness probe's 503)."""
    response[_AS_IS] = True
    return response


def is_problem(response: web.StreamResponse) -> bool:
    return response.content_type == PROBLEM_JSON


def _framework_detail(response: web.StreamResponse) -> str:
    body = getattr(response, "body", None)
    if isinstance(body, bytes) and body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body.decode("utf-8", "replace")[:200].strip()
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return str(parsed["error"])  # Faust's View.error: {"error": detail}
    return _title(response.status)


def _converted(response: web.StreamResponse) -> web.StreamResponse:
    if (
        response.status < 400
        or is_problem(response)
        or response.prepared
        or response.get(_AS_IS, False)
    ):
        return response
    status = response.status
    code = _FRAMEWORK_CODES.get(status, "error" if status < 500 else "internal_error")
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() in ("allow", "www-authenticate", "retry-after")
    }
    return problem(status, code, _framework_detail(response), headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever a handler answers or raises at 4xx/5xx leaves as problem details."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _converted(exc)
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return problem(500, "internal_error", "the server failed to answer; see its log")
    return _converted(response)


def install_fallback(app: Any) -> None:
    """Put `problem_middleware` outermost on an aiohttp application not yet started
    (given a Faust web driver, on its aiohttp application)."""
    aio: web.Application = getattr(app, "web_app", app)
    aio.middlewares.insert(0, problem_middleware)
