"""The operator's `meter` commands: accounts, top-ups, auto-recharge, schemas, traffic.

    meter account TENANT [--worker-url URL]
    meter add-funds TENANT AMOUNT [--currency C] [--idempotency-key K] [--via-api URL]
    meter auto-recharge set TENANT --amount A --trigger T [--idempotency-key K] [--via-api URL]
    meter auto-recharge disable TENANT [--worker-url URL | --amount A --trigger T | --via-api URL]
    meter command status ID [--tenant T] [--worker-url URL] [--wait SECONDS]
    meter schemas export [--check]
    meter rules export [--check]
    meter simulate [simulator options]

*Added:* every command that prints a result takes `--output json|table`;
`--via-api URL` sends a top-up or settings through a worker's admin API (bearer
token from `--token` or METER_API_TOKEN) instead of straight to Kafka, and prints where
its status is (`meter command status ID`).

The commands that change accounts publish the contract's commands straight to
`credits.commands` (aiokafka, with the KAFKA_* security settings), so they work with
no admin API and no worker running; the worker applies them when it gets there.
Every command prints the `command_id` it used: run it again with
`--idempotency-key` set to that id and the processor applies it once, so a command
whose outcome is unknown (a timeout) is safe to repeat.

Exit codes are `processor.ops.cli`'s: 0 done, 1 the command ran into a problem (Kafka or
the worker unreachable, tenant unknown), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError

from processor.config.settings import COMMANDS, Settings
from processor.ops.cli import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from processor.ops.output import add_output, emit
from schemas.inputs import AutoRechargeConfigured, FundsAdded
from schemas.types import TenantId, format_money

__all__ = ["register"]

# Long enough for a broker under load, short enough that a typo'd address is noticed.
SEND_TIMEOUT_SECONDS: Final = 30.0
HTTP_TIMEOUT_SECONDS: Final = 10.0

_TENANT: Final[TypeAdapter[str]] = TypeAdapter(TenantId)


class _Failed(Exception):
    """A command ends with this exit code and message (printed to stderr)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _settings() -> Settings:
    # A ValidationError goes up to `processor.ops.cli.main`, which names the variable.
    return Settings()


def _default_worker_url() -> str:
    return f"http://127.0.0.1:{_settings().web_port}"


def _tenant(value: str) -> str:
    """argparse type: a contract tenant id, or a usage error naming the rule."""
    try:
        return _TENANT.validate_python(value)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: a tenant id is 1 to 64 characters of A-Z a-z 0-9 . _ : -"
        ) from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors(include_url=False, include_input=False)
    )


# ------------------------------------------------------------------ Kafka publishing


def _bootstrap(cfg: Settings) -> str:
    from processor.ops.cli import _bootstrap as local_or_configured

    try:
        return local_or_configured(cfg)
    except SystemExit as exc:  # no KAFKA_BOOTSTRAP_SERVERS and no local broker
        raise _Failed(EXIT_PROBLEM, str(exc.code)) from None


async def _send(cfg: Settings, tenant: str, value: bytes) -> None:
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
        raise _Failed(EXIT_USAGE, f"configuration: {exc}") from None
    bootstrap = _bootstrap(cfg)
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
                raise _Failed(EXIT_PROBLEM, str(access)) from None
            await producer.send_and_wait(topic, value, key=tenant.encode())
    except TimeoutError:
        raise _Failed(
            EXIT_PROBLEM,
            f"no acknowledgement from Kafka at {bootstrap} within {SEND_TIMEOUT_SECONDS:g}s; "
            "repeat the command with the same --idempotency-key",
        ) from None
    except KafkaError as exc:
        raise _Failed(EXIT_PROBLEM, f"Kafka refused the command on {topic}: {exc!r}") from None
    finally:
        await producer.stop()


def _check_precision(cfg: Settings, command: BaseModel) -> None:
    """Refuse what the processor would reject: more decimal places than the card keeps.

    Checked when the rate card loads (without it, --currency is the only way here).
    """
    from decimal import Decimal

    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.core.rating import RateCardError
    from processor.http.admin import decimal_places

    try:
        decimals = load_rate_card(cfg.rate_card or example_rate_card_path()).decimals
    except (RateCardError, OSError):
        return
    for name, value in command:
        if isinstance(value, Decimal) and decimal_places(value) > decimals:
            raise _Failed(
                EXIT_USAGE,
                f"{name} {value} has more than {decimals} decimal places; balances are "
                f"kept at the rate card's {decimals} and the processor would reject it",
            )


def _publish(
    cfg: Settings,
    command: BaseModel,
    tenant: str,
    summary: str,
    args: argparse.Namespace | None = None,
) -> int:
    _check_precision(cfg, command)
    value = command.model_dump_json(exclude_none=True).encode()
    asyncio.run(_send(cfg, tenant, value))
    command_id = getattr(command, "command_id", "")
    emit(
        _output(args),
        {
            "status": "published",
            "type": getattr(command, "type", ""),
            "command_id": command_id,
            "tenant_id": tenant,
            "topic": cfg.topic(COMMANDS),
        },
        f"{summary}: published to {cfg.topic(COMMANDS)} as command {command_id}",
    )
    return EXIT_OK


def _output(args: argparse.Namespace | None) -> str:
    return str(getattr(args, "output", None) or "table")


# ------------------------------------------------------------------ the admin API


def _token(args: argparse.Namespace) -> str:
    import os

    token: str | None = args.token or os.environ.get("METER_API_TOKEN")
    if not token:
        raise _Failed(
            EXIT_USAGE, "--via-api needs a bearer token: pass --token or set METER_API_TOKEN"
        )
    return token


async def _http(
    method: str,
    url: str,
    *,
    token: str | None = None,
    key: str | None = None,
    body: Any = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request; (0, {"detail"}, {}) when nothing answers."""
    import aiohttp

    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
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


def _via_api(args: argparse.Namespace, method: str, path: str, body: Any, summary: str) -> int:
    """Send one admin request (the key is the command's idempotency key) and report."""
    token = _token(args)
    key = _command_id(args)
    base = args.via_api.rstrip("/")
    status, answer, headers = asyncio.run(
        _http(method, base + path, token=token, key=key, body=body)
    )
    if status != 202:
        detail = answer.get("detail", answer)
        code = EXIT_USAGE if status in (400, 413, 422) else EXIT_PROBLEM
        where = f"HTTP {status}" if status else "unreachable"
        retry = f"; repeat with --idempotency-key {key}" if status in (0, 503) else ""
        raise _Failed(code, f"{base} refused it ({where}): {detail}{retry}")
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
        _output(args),
        result,
        f"{summary}: accepted by {base} as command {result['command_id']}; "
        f"see `meter command status {result['command_id']} --tenant {args.tenant}`",
    )
    return EXIT_OK


def cmd_command_status(args: argparse.Namespace) -> int:
    """Added: GET /commands/{id} from a worker (which asks the ledger sink)."""
    import time

    base = (args.worker_url or _default_worker_url()).rstrip("/")
    url = f"{base}/commands/{quote(args.command_id, safe='')}"
    if args.tenant is not None:
        url += f"?tenant_id={quote(args.tenant, safe='')}"
    deadline = time.monotonic() + (args.wait or 0)
    while True:
        status, body, _ = asyncio.run(_http("GET", url))
        pending = status == 200 and body.get("status") == "pending"
        waiting = status == 404 or pending or status == 503
        if not (waiting and args.wait and time.monotonic() < deadline):
            break
        time.sleep(0.5)
    if status != 200:
        where = f"HTTP {status}" if status else "unreachable"
        raise _Failed(
            EXIT_USAGE if status == 400 else EXIT_PROBLEM,
            f"{args.command_id}: {body.get('detail', body)} ({where})",
        )
    text = None
    if _output(args) == "table":
        lines = [
            f"{body['command_id']} ({body['command_type']}, tenant {body['tenant_id']}): "
            f"{body['status']}"
        ]
        if body.get("reason"):
            lines.append(f"  reason: {body['reason']}: {body.get('detail')}")
        entry = body.get("entry")
        if entry:
            lines.append(
                f"  ledger entry {entry['entry_id']}: {entry['kind']} {entry['amount']} "
                f"{entry['currency']}, balance after {entry['balance_after']}"
            )
        elif body.get("entry_id"):
            lines.append(f"  ledger entry {body['entry_id']} (not in the sink yet)")
        text = "\n".join(lines)
    emit(_output(args), body, text)
    if pending and args.wait:
        raise _Failed(EXIT_PROBLEM, f"{args.command_id}: still pending after {args.wait:g}s")
    return EXIT_PROBLEM if body.get("status") == "rejected" else EXIT_OK


def _command_id(args: argparse.Namespace) -> str:
    key: str | None = args.idempotency_key
    return key if key is not None else str(uuid.uuid4())


def _build(model: type[BaseModel], **fields: Any) -> BaseModel:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise _Failed(EXIT_USAGE, _problems(exc)) from None


def _card_currency(cfg: Settings) -> str:
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.core.rating import RateCardError

    try:
        return load_rate_card(cfg.rate_card or example_rate_card_path()).currency
    except (RateCardError, OSError) as exc:
        raise _Failed(EXIT_USAGE, f"rate card: {exc}; or pass --currency") from None


# ------------------------------------------------------------------ the commands


def cmd_add_funds(args: argparse.Namespace) -> int:
    cfg = _settings()
    currency = args.currency or _card_currency(cfg)
    command = _build(
        FundsAdded,
        type="funds_added",
        command_id=_command_id(args),
        tenant_id=args.tenant,
        occurred_at=datetime.now(UTC),
        amount=args.amount,
        currency=currency,
        source="manual",
    )
    summary = f"{args.amount} {currency} for {args.tenant}"
    if args.via_api:
        assert isinstance(command, FundsAdded)
        body = {"amount": format_money(command.amount), "currency": currency}
        return _via_api(
            args, "POST", f"/tenants/{quote(args.tenant, safe='')}/funds", body, summary
        )
    return _publish(cfg, command, args.tenant, summary, args)


def _settings_command(
    args: argparse.Namespace, enabled: bool, amount: str, trigger: str
) -> BaseModel:
    return _build(
        AutoRechargeConfigured,
        type="auto_recharge_configured",
        command_id=_command_id(args),
        tenant_id=args.tenant,
        occurred_at=datetime.now(UTC),
        enabled=enabled,
        recharge_amount=amount,
        trigger_balance=trigger,
    )


def cmd_auto_recharge_set(args: argparse.Namespace) -> int:
    cfg = _settings()
    command = _settings_command(args, True, args.amount, args.trigger)
    summary = f"auto-recharge for {args.tenant}: {args.amount} when below {args.trigger}"
    if args.via_api:
        assert isinstance(command, AutoRechargeConfigured)
        body = {
            "enabled": True,
            "recharge_amount": format_money(command.recharge_amount),
            "trigger_balance": format_money(command.trigger_balance),
        }
        path = f"/tenants/{quote(args.tenant, safe='')}/auto-recharge"
        return _via_api(args, "PUT", path, body, summary)
    return _publish(cfg, command, args.tenant, summary, args)


def cmd_auto_recharge_disable(args: argparse.Namespace) -> int:
    cfg = _settings()
    amount, trigger = args.amount, args.trigger
    if args.via_api:
        # DELETE: the owner turns it off and keeps the amounts; none are needed here.
        path = f"/tenants/{quote(args.tenant, safe='')}/auto-recharge"
        return _via_api(args, "DELETE", path, None, f"auto-recharge for {args.tenant}: disabled")
    if (amount is None) != (trigger is None):
        raise _Failed(EXIT_USAGE, "give both --amount and --trigger, or neither")
    if amount is None:
        # The contract's command always carries amounts; keep the tenant's current
        # ones so that re-enabling later (or reading the account) shows no surprise.
        url = args.worker_url or _default_worker_url()
        status, body = asyncio.run(_get_account(url, args.tenant))
        if status == 404 or (status == 200 and body.get("auto_recharge") is None):
            emit(
                _output(args),
                {"status": "unchanged", "tenant_id": args.tenant, "auto_recharge": None},
                f"{args.tenant} has no auto-recharge settings: nothing to disable",
            )
            return EXIT_OK
        if status != 200:
            raise _Failed(
                EXIT_PROBLEM,
                f"cannot read {args.tenant}'s current settings from {url} ({status}: "
                f"{body.get('detail', body)}); pass --amount and --trigger to keep them",
            )
        amount = body["auto_recharge"]["recharge_amount"]
        trigger = body["auto_recharge"]["trigger_balance"]
    command = _settings_command(args, False, amount, trigger)
    return _publish(cfg, command, args.tenant, f"auto-recharge for {args.tenant}: disabled", args)


async def _get_account(worker_url: str, tenant: str) -> tuple[int, dict[str, Any]]:
    import aiohttp

    from processor.http.auth import client_headers

    url = f"{worker_url.rstrip('/')}/tenants/{quote(tenant, safe='')}/account"
    headers = client_headers(_settings())  # METER_AUTH=jwt: the reads need a token
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)) as s,
            s.get(url, headers=headers) as resp,
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


def cmd_account(args: argparse.Namespace) -> int:
    url = args.worker_url or _default_worker_url()
    status, body = asyncio.run(_get_account(url, args.tenant))
    if status == 200:
        emit(args.output, body)
        return EXIT_OK
    if status == 404:
        raise _Failed(EXIT_PROBLEM, f"{args.tenant}: no such tenant (no event for it yet)")
    reason = body.get("detail", body)
    hint = "; retry in a moment" if status == 503 else ""
    raise _Failed(
        EXIT_PROBLEM, f"{args.tenant}: {reason}" + (f" (HTTP {status})" if status else "") + hint
    )


def cmd_schemas_export(args: argparse.Namespace) -> int:
    """Regenerate (or check) every document generated from schemas/."""
    from processor.http import openapi
    from schemas import asyncapi, export

    argv = ["--check"] if args.check else []
    results = [export.main(argv), openapi.main(argv), asyncapi.main(argv)]
    return EXIT_PROBLEM if any(results) else EXIT_OK


def cmd_rules_export(args: argparse.Namespace) -> int:
    """Added: regenerate (or check) deploy/k8s/prometheusrule.yaml from the rules file."""
    from processor.observability import rules as prometheus_rule

    return EXIT_PROBLEM if prometheus_rule.main(["--check"] if args.check else []) else EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from processor.dev import simulator
    from processor.kafka.options import KafkaConfigError, kafka_client_options

    cfg = _settings()
    try:
        options = kafka_client_options(cfg)
    except KafkaConfigError as exc:
        raise _Failed(EXIT_USAGE, f"configuration: {exc}") from None
    if args.bootstrap is None:
        args.bootstrap = _bootstrap(cfg)
    config = simulator.config_from_args(args, stats_log_seconds=10.0, client_options=options)
    sim = simulator.Simulator(config)
    try:
        simulator.run_until_signalled(sim.run())
    except RuntimeError as exc:  # setup failures: say why instead of a traceback
        raise _Failed(EXIT_PROBLEM, f"simulate: {exc}") from None
    print(sim.stats.summary())
    return EXIT_OK


# ------------------------------------------------------------------ registration


def _guarded(func: Any, name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
        except _Failed as failed:
            print(f"meter {name}: {failed}", file=sys.stderr)
            return failed.code
        return result

    return run


def _api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--via-api",
        metavar="URL",
        default=None,
        help="send it through a worker's admin API at URL (e.g. http://127.0.0.1:6066) "
        "instead of straight to Kafka; needs --token or METER_API_TOKEN",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="the admin API's bearer token (default: $METER_API_TOKEN); with --via-api",
    )
    add_output(parser)


def register(sub: Any) -> None:
    """Add the operator commands to `meter`'s subparsers."""
    worker_url = {
        "default": None,
        "metavar": "URL",
        "help": "a worker's HTTP address (default http://127.0.0.1:$METER_WEB_PORT)",
    }
    key_help = (
        "becomes the command_id; repeat a command with the same key and it is applied "
        "once (default: a new UUID, printed)"
    )

    account = sub.add_parser(
        "account",
        help="show a tenant's balance, status and recharge state (from a worker)",
        description="GET /tenants/TENANT/account from a worker; any worker answers for "
        "any tenant. Exit 1 if the tenant is unknown or no worker answers.",
    )
    account.add_argument("tenant", metavar="TENANT", type=_tenant)
    account.add_argument("--worker-url", **worker_url)
    # JSON by default, as it always printed.
    add_output(account, default="json")
    account.set_defaults(func=_guarded(cmd_account, "account"))

    funds = sub.add_parser(
        "add-funds",
        help="top a tenant up by hand (publishes funds_added, source manual)",
        description="Publish a manual funds_added command to credits.commands. Works "
        "without a running worker; the balance changes when a worker applies it.",
    )
    funds.add_argument("tenant", metavar="TENANT", type=_tenant)
    funds.add_argument("amount", metavar="AMOUNT", help="e.g. 50.00 (> 0, at most 1000000)")
    funds.add_argument(
        "--currency", default=None, help="ISO 4217 code (default: the rate card's currency)"
    )
    funds.add_argument("--idempotency-key", default=None, metavar="KEY", help=key_help)
    _api_options(funds)
    funds.set_defaults(func=_guarded(cmd_add_funds, "add-funds"))

    auto = sub.add_parser(
        "auto-recharge",
        help="set or disable a tenant's auto-recharge",
        description="Publish auto_recharge_configured commands (replacing the tenant's "
        "settings; new settings also lift a suspension).",
    )
    auto_sub = auto.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_ = auto_sub.add_parser(
        "set",
        help="enable: recharge AMOUNT whenever the balance falls below TRIGGER",
        description="Enable auto-recharge: when the balance falls below --trigger, the "
        "processor asks billing for --amount.",
    )
    set_.add_argument("tenant", metavar="TENANT", type=_tenant)
    set_.add_argument("--amount", required=True, help="recharge amount, e.g. 25.00 (> 0)")
    set_.add_argument("--trigger", required=True, help="trigger balance, e.g. 5.00 (>= 0)")
    set_.add_argument("--idempotency-key", default=None, metavar="KEY", help=key_help)
    _api_options(set_)
    set_.set_defaults(func=_guarded(cmd_auto_recharge_set, "auto-recharge set"))
    disable = auto_sub.add_parser(
        "disable",
        help="turn auto-recharge off (keeps the amounts)",
        description="Disable auto-recharge. The command carries amounts, so the "
        "tenant's current ones are read from a worker; without a worker, pass "
        "--amount and --trigger.",
    )
    disable.add_argument("tenant", metavar="TENANT", type=_tenant)
    disable.add_argument("--worker-url", **worker_url)
    disable.add_argument("--amount", default=None, help="recharge amount to keep")
    disable.add_argument("--trigger", default=None, help="trigger balance to keep")
    disable.add_argument("--idempotency-key", default=None, metavar="KEY", help=key_help)
    _api_options(disable)

    command = sub.add_parser(
        "command",
        help="what became of a command (pending, applied, rejected, ignored)",
        description="Work with commands sent to credits.commands.",
    )
    command_sub = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = command_sub.add_parser(
        "status",
        help="a command's status, from a worker (which asks the ledger sink)",
        description="GET /commands/ID from a worker, which forwards it to the ledger "
        "sink: pending, applied (with its ledger entry), rejected (with the reason) or "
        "ignored. Exit 0 when applied, ignored or pending; 1 when rejected, unknown, "
        "still pending after --wait, or nothing answers.",
    )
    status.add_argument("command_id", metavar="ID", help="the command_id (as printed)")
    status.add_argument(
        "--tenant", type=_tenant, default=None, help="the tenant (when ids are shared)"
    )
    status.add_argument("--worker-url", **worker_url)
    status.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="poll until it is no longer pending (or unknown), at most this long",
    )
    add_output(status)
    status.set_defaults(func=_guarded(cmd_command_status, "command status"))
    disable.set_defaults(func=_guarded(cmd_auto_recharge_disable, "auto-recharge disable"))

    schemas = sub.add_parser(
        "schemas",
        help="the contract's generated documents (JSON Schema, OpenAPI, AsyncAPI)",
        description="Work with the documents generated from schemas/.",
    )
    schemas_sub = schemas.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = schemas_sub.add_parser(
        "export",
        help="write schemas/json, docs/openapi.json and docs/asyncapi.yaml",
        description="Regenerate the JSON Schemas, the OpenAPI and the AsyncAPI "
        "documents from the models; with --check, change nothing and exit 1 if any "
        "is stale.",
    )
    export.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    export.set_defaults(func=_guarded(cmd_schemas_export, "schemas export"))

    rules = sub.add_parser(
        "rules",
        help="the Prometheus alert rules' generated Kubernetes manifest",
        description="Work with documents generated from deploy/prometheus/rules.",
    )
    rules_sub = rules.add_subparsers(dest="action", required=True, metavar="ACTION")
    rules_export = rules_sub.add_parser(
        "export",
        help="write deploy/k8s/prometheusrule.yaml from the rules file",
        description="Regenerate the PrometheusRule manifest from "
        "deploy/prometheus/rules/credits-meter.rules.yml; with --check, change nothing "
        "and exit 1 if it is stale.",
    )
    rules_export.add_argument("--check", action="store_true", help="exit 1 if it is stale")
    rules_export.set_defaults(func=_guarded(cmd_rules_export, "rules export"))

    from processor.dev.simulator import build_arg_parser

    simulate = sub.add_parser(
        "simulate",
        parents=[build_arg_parser(add_help=False)],
        help="play simulated telephony, conferencing, admin and billing traffic",
        description="The traffic simulator (python -m processor.dev.simulator), against "
        "KAFKA_BOOTSTRAP_SERVERS or the local broker. Logs progress every 10 s and a "
        "summary at the end; runs until --duration or Ctrl-C.",
    )
    # None: resolved at run time like every other command (the local broker when
    # KAFKA_BOOTSTRAP_SERVERS is unset), not the simulator's fixed default.
    simulate.set_defaults(bootstrap=None, func=_guarded(cmd_simulate, "simulate"))
