"""How the operator's commands reach the processor: Kafka or a worker's HTTP API.

The commands that change accounts publish the contract's commands straight to
`credits.commands` (aiokafka, with the KAFKA_* security settings), so they work with
no admin API and no worker running; `--via-api` sends them through a worker's admin
API instead. Reads (accounts, command status) ask a worker over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from pydantic import BaseModel

from processor.config.settings import COMMANDS, Settings
from processor.ops.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, resolve_bootstrap
from processor.ops.output import emit

if TYPE_CHECKING:
    from processor.core.rating import RateCard
    from processor.http.admin_requests import Endpoint

__all__ = [
    "HTTP_TIMEOUT_SECONDS",
    "SEND_TIMEOUT_SECONDS",
    "Failed",
    "argument",
    "command_id",
    "default_worker_url",
    "get_account",
    "idempotency_key",
    "kafka_bootstrap",
    "load_settings",
    "output_format",
    "publish",
    "read_auth",
    "readable_card",
    "request",
    "send_command",
    "via_api",
]

# Long enough for a broker under load, short enough that a typo'd address is noticed.
SEND_TIMEOUT_SECONDS: Final = 30.0
HTTP_TIMEOUT_SECONDS: Final = 10.0


# The arguments that carry a command's fields: a problem with a field is said of what
# the operator typed (`--trigger`), not of the contract's name (`trigger_balance`).
_ARGUMENTS: Final = {
    "amount": "AMOUNT",
    "currency": "--currency",
    "recharge_amount": "--amount",
    "trigger_balance": "--trigger",
    "target_balance": "--target",
    "credit_limit": "--credit-limit",
    "notify_below": "--notify-below",
    "emails": "--email",
    "events": "--events",
}


def argument(field: str) -> str:
    """The `meter` argument that gives a command's `field` (the field itself if none)."""
    return _ARGUMENTS.get(field, field)


class Failed(Exception):
    """A command ends with this exit code and message (printed to stderr)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_settings() -> Settings:
    # A ValidationError goes up to `processor.ops.cli.main`, which names the variable.
    return Settings()


def default_worker_url() -> str:
    return f"http://127.0.0.1:{load_settings().web_port}"


# ------------------------------------------------------------------ Kafka publishing


def kafka_bootstrap(cfg: Settings) -> str:
    try:
        return resolve_bootstrap(cfg)
    except SystemExit as exc:  # no KAFKA_BOOTSTRAP_SERVERS and no local broker
        raise Failed(EXIT_PROBLEM, str(exc.code)) from None


async def send_command(cfg: Settings, tenant: str, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from processor.kafka.options import (
        KafkaAccessError,
        KafkaConfigError,
        describe,
        diagnose,
        kafka_client_options,
    )

    try:
        options = kafka_client_options(cfg)
    except KafkaConfigError as exc:
        raise Failed(EXIT_USAGE, f"configuration: {exc}") from None
    bootstrap = kafka_bootstrap(cfg)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="credits-meter-cli",
        acks="all",
        enable_idempotence=True,
        **options,
    )
    topic = cfg.topic(COMMANDS)
    try:
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            try:
                await producer.start()
            except KafkaError:
                access: KafkaAccessError = await diagnose(bootstrap, options, describe(cfg))
                raise Failed(EXIT_PROBLEM, str(access)) from None
            await producer.send_and_wait(topic, value, key=tenant.encode())
    except TimeoutError:
        raise Failed(
            EXIT_PROBLEM,
            f"no acknowledgement from Kafka at {bootstrap} within {SEND_TIMEOUT_SECONDS:g}s",
        ) from None
    except KafkaError as exc:
        raise Failed(EXIT_PROBLEM, f"Kafka refused the command on {topic}: {exc!r}") from None
    finally:
        await producer.stop()


def readable_card(cfg: Settings) -> RateCard | None:
    """The processor's rate card (METER_RATE_CARD, or the example card), or None when
    it cannot be read here: then what it decides is left to the processor."""
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.core.rating import RateCardError

    try:
        return load_rate_card(cfg.rate_card or example_rate_card_path())
    except (RateCardError, OSError):
        return None


def _check_precision(cfg: Settings, command: BaseModel) -> None:
    """Refuse what the processor would reject: more decimal places than the card keeps.

    Checked when the rate card loads (without it, --currency is the only way here).
    """
    from decimal import Decimal

    from processor.http.admin_requests import decimal_places

    card = readable_card(cfg)
    if card is None:
        return
    decimals = card.decimals
    for name, value in command:
        if isinstance(value, Decimal) and decimal_places(value) > decimals:
            raise Failed(
                EXIT_USAGE,
                f"{argument(name)} {value} has more than {decimals} decimal places; balances "
                f"are kept at the rate card's {decimals} and the processor would reject it",
            )


def publish(
    cfg: Settings,
    command: BaseModel,
    tenant: str,
    summary: str,
    args: argparse.Namespace | None = None,
    *,
    exclude_unset: bool = False,
) -> int:
    """Send `command` to credits.commands and say so. Its fields at None are left out;
    with `exclude_unset`, only the fields it was built with are written, None as null
    (a partial command, where an absent field keeps a value and null clears it)."""
    _check_precision(cfg, command)
    value = command.model_dump_json(
        exclude_unset=exclude_unset, exclude_none=not exclude_unset
    ).encode()
    key: str | None = getattr(args, "idempotency_key", None)
    try:
        asyncio.run(send_command(cfg, tenant, value))
    except Failed as failed:
        if failed.code != EXIT_PROBLEM or key is None:
            raise
        # Perhaps published after all: the same key again is applied once.
        raise Failed(failed.code, f"{failed}; repeat with --idempotency-key {key}") from None
    command_id = getattr(command, "command_id", "")
    emit(
        output_format(args),
        {
            "status": "published",
            "type": getattr(command, "type", ""),
            "command_id": command_id,
            "tenant_id": tenant,
            "idempotency_key": key,
            "topic": cfg.topic(COMMANDS),
        },
        f"{summary}: published to {cfg.topic(COMMANDS)} as command {command_id}"
        + ("" if key is None else f"; {_again(key)}"),
    )
    return EXIT_OK


def _again(key: str) -> str:
    return f"a repeat with --idempotency-key {key} is applied once"


def output_format(args: argparse.Namespace | None) -> str:
    return str(getattr(args, "output", None) or "table")


# ------------------------------------------------------------------ the admin API


def _token(args: argparse.Namespace) -> str:
    """--token, else METER_API_TOKEN, else METER_ADMIN_TOKEN (as the contract says)."""
    if args.token:
        return str(args.token)
    cfg = load_settings()
    secret = cfg.api_token or cfg.admin_token
    if secret is None or not secret.get_secret_value():
        raise Failed(
            EXIT_USAGE,
            "--via-api needs a bearer token: pass --token or set METER_API_TOKEN "
            "(or METER_ADMIN_TOKEN)",
        )
    return secret.get_secret_value()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _settings_auth() -> dict[str, str]:
    """The settings' bearer (`client_headers`: METER_API_TOKEN, else METER_ADMIN_TOKEN)."""
    from processor.http.auth import client_headers

    return client_headers(load_settings())


def read_auth(args: argparse.Namespace) -> dict[str, str]:
    """What a read (an account, a command's status) sends a worker, which under
    METER_AUTH=jwt wants a token: --token's, else the settings', else none."""
    return _bearer(args.token) if args.token else _settings_auth()


async def request(
    method: str,
    url: str,
    *,
    auth: Mapping[str, str] | None = None,
    key: str | None = None,
    body: Any = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request (`auth`: its Authorization header, if any); (0, {"detail"}, {})
    when nothing answers."""
    import aiohttp

    headers = {"Accept": "application/json", **(auth or {})}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)) as s,
            s.request(method, url, data=data, headers=headers) as resp,
        ):
            raw = await resp.read()
            status, answer_headers = resp.status, dict(resp.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, {"detail": f"nothing answers at {url} ({exc or type(exc).__name__})"}, {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {"detail": raw.decode(errors="replace")[:200]}
    return status, parsed if isinstance(parsed, dict) else {"detail": str(parsed)}, answer_headers


def via_api(args: argparse.Namespace, method: str, path: str, body: Any, summary: str) -> int:
    """Send one admin request (the key is the command's idempotency key) and report."""
    token = _token(args)
    key = idempotency_key(args)
    base = args.via_api.rstrip("/")
    status, answer, headers = asyncio.run(
        request(method, base + path, auth=_bearer(token), key=key, body=body)
    )
    if status != 202:
        detail = answer.get("detail", answer)
        code = EXIT_USAGE if status in (400, 413, 422) else EXIT_PROBLEM
        where = f"HTTP {status}" if status else "unreachable"
        retry = f"; repeat with --idempotency-key {key}" if status in (0, 503) else ""
        raise Failed(code, f"{base} refused it ({where}): {detail}{retry}")
    location = headers.get("Location")
    result = {
        "status": "accepted",
        "type": answer.get("type"),
        "command_id": answer.get("command_id"),
        "tenant_id": answer.get("tenant_id"),
        "idempotency_key": key,
        "location": None if location is None else base + location,
    }
    emit(
        output_format(args),
        result,
        f"{summary}: accepted by {base} as command {result['command_id']}; {_again(key)}; "
        f"see `meter command status {result['command_id']} --tenant {args.tenant}`",
    )
    return EXIT_OK


def idempotency_key(args: argparse.Namespace) -> str:
    """--idempotency-key, or a new UUID kept in args: one run, one key (printed)."""
    if args.idempotency_key is None:
        args.idempotency_key = str(uuid.uuid4())
    return str(args.idempotency_key)


def command_id(args: argparse.Namespace, endpoint: Endpoint) -> str:
    """The command_id the admin API makes of this key at this endpoint (`command_id_for`):
    a key is scoped per kind of command, and names the same command sent either way.

    A key the API would refuse is refused here (exit 2), e.g. a top-up's that starts
    with `limits:`.
    """
    from processor.http.admin_requests import command_id_for, key_errors

    key = idempotency_key(args)
    problems = key_errors(endpoint, key)
    if problems:
        raise Failed(EXIT_USAGE, "--idempotency-key: " + "; ".join(e.msg for e in problems))
    return command_id_for(endpoint, key)


async def get_account(
    worker_url: str, tenant: str, auth: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """GET the tenant's account; `auth` as `read_auth` makes it (None: the settings')."""
    import aiohttp

    url = f"{worker_url.rstrip('/')}/tenants/{quote(tenant, safe='')}/account"
    if auth is None:
        auth = _settings_auth()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)) as s,
            s.get(url, headers=auth) as resp,
        ):
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, {"detail": f"no worker answers at {worker_url} ({exc or type(exc).__name__})"}
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"detail": raw.decode(errors="replace")[:200]}
    return status, body if isinstance(body, dict) else {"detail": str(body)}
