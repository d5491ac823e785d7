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
`credits.commands` (processor.ops.admin_client), so they work with no admin API and
no worker running; the worker applies them when it gets there. Every command prints
the `command_id` it used: run it again with `--idempotency-key` set to that id and the
processor applies it once, so a command whose outcome is unknown (a timeout) is safe
to repeat.

Exit codes are `processor.ops.common`'s: 0 done, 1 the command ran into a problem (Kafka or
the worker unreachable, tenant unknown), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError

from processor.config.settings import Settings

# Through the module: tests replace its send_command, request and get_account.
from processor.ops import admin_client
from processor.ops.admin_client import Failed, command_id, default_worker_url, load_settings
from processor.ops.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from processor.ops.output import add_output, emit
from schemas.inputs import AutoRechargeConfigured, FundsAdded
from schemas.types import TenantId, format_money

__all__ = ["register"]

_TENANT: Final[TypeAdapter[str]] = TypeAdapter(TenantId)


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


def cmd_command_status(args: argparse.Namespace) -> int:
    """Added: GET /commands/{id} from a worker (which asks the ledger sink)."""
    import time

    base = (args.worker_url or default_worker_url()).rstrip("/")
    url = f"{base}/commands/{quote(args.command_id, safe='')}"
    if args.tenant is not None:
        url += f"?tenant_id={quote(args.tenant, safe='')}"
    deadline = time.monotonic() + (args.wait or 0)
    while True:
        status, body, _ = asyncio.run(admin_client.request("GET", url))
        pending = status == 200 and body.get("status") == "pending"
        waiting = status == 404 or pending or status == 503
        if not (waiting and args.wait and time.monotonic() < deadline):
            break
        time.sleep(0.5)
    if status != 200:
        where = f"HTTP {status}" if status else "unreachable"
        raise Failed(
            EXIT_USAGE if status == 400 else EXIT_PROBLEM,
            f"{args.command_id}: {body.get('detail', body)} ({where})",
        )
    text = None
    if admin_client.output_format(args) == "table":
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
    emit(admin_client.output_format(args), body, text)
    if pending and args.wait:
        raise Failed(EXIT_PROBLEM, f"{args.command_id}: still pending after {args.wait:g}s")
    return EXIT_PROBLEM if body.get("status") == "rejected" else EXIT_OK


def _build(model: type[BaseModel], **fields: Any) -> BaseModel:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise Failed(EXIT_USAGE, _problems(exc)) from None


def _card_currency(cfg: Settings) -> str:
    from processor.core.rating import RateCardError, example_rate_card_path, load_rate_card

    try:
        return load_rate_card(cfg.rate_card or example_rate_card_path()).currency
    except (RateCardError, OSError) as exc:
        raise Failed(EXIT_USAGE, f"rate card: {exc}; or pass --currency") from None


# ------------------------------------------------------------------ the commands


def cmd_add_funds(args: argparse.Namespace) -> int:
    cfg = load_settings()
    currency = args.currency or _card_currency(cfg)
    command = _build(
        FundsAdded,
        type="funds_added",
        command_id=command_id(args),
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
        return admin_client.via_api(
            args, "POST", f"/tenants/{quote(args.tenant, safe='')}/funds", body, summary
        )
    return admin_client.publish(cfg, command, args.tenant, summary, args)


def _settings_command(
    args: argparse.Namespace, enabled: bool, amount: str, trigger: str
) -> BaseModel:
    return _build(
        AutoRechargeConfigured,
        type="auto_recharge_configured",
        command_id=command_id(args),
        tenant_id=args.tenant,
        occurred_at=datetime.now(UTC),
        enabled=enabled,
        recharge_amount=amount,
        trigger_balance=trigger,
    )


def cmd_auto_recharge_set(args: argparse.Namespace) -> int:
    cfg = load_settings()
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
        return admin_client.via_api(args, "PUT", path, body, summary)
    return admin_client.publish(cfg, command, args.tenant, summary, args)


def cmd_auto_recharge_disable(args: argparse.Namespace) -> int:
    cfg = load_settings()
    amount, trigger = args.amount, args.trigger
    if args.via_api:
        # DELETE: the owner turns it off and keeps the amounts; none are needed here.
        path = f"/tenants/{quote(args.tenant, safe='')}/auto-recharge"
        summary = f"auto-recharge for {args.tenant}: disabled"
        return admin_client.via_api(args, "DELETE", path, None, summary)
    if (amount is None) != (trigger is None):
        raise Failed(EXIT_USAGE, "give both --amount and --trigger, or neither")
    if amount is None:
        # The contract's command always carries amounts; keep the tenant's current
        # ones so that re-enabling later (or reading the account) shows no surprise.
        url = args.worker_url or default_worker_url()
        status, body = asyncio.run(admin_client.get_account(url, args.tenant))
        if status == 404 or (status == 200 and body.get("auto_recharge") is None):
            emit(
                admin_client.output_format(args),
                {"status": "unchanged", "tenant_id": args.tenant, "auto_recharge": None},
                f"{args.tenant} has no auto-recharge settings: nothing to disable",
            )
            return EXIT_OK
        if status != 200:
            raise Failed(
                EXIT_PROBLEM,
                f"cannot read {args.tenant}'s current settings from {url} ({status}: "
                f"{body.get('detail', body)}); pass --amount and --trigger to keep them",
            )
        amount = body["auto_recharge"]["recharge_amount"]
        trigger = body["auto_recharge"]["trigger_balance"]
    command = _settings_command(args, False, amount, trigger)
    summary = f"auto-recharge for {args.tenant}: disabled"
    return admin_client.publish(cfg, command, args.tenant, summary, args)


def cmd_account(args: argparse.Namespace) -> int:
    url = args.worker_url or default_worker_url()
    status, body = asyncio.run(admin_client.get_account(url, args.tenant))
    if status == 200:
        emit(args.output, body)
        return EXIT_OK
    if status == 404:
        raise Failed(EXIT_PROBLEM, f"{args.tenant}: no such tenant (no event for it yet)")
    reason = body.get("detail", body)
    hint = "; retry in a moment" if status == 503 else ""
    raise Failed(
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

    cfg = load_settings()
    try:
        options = kafka_client_options(cfg)
    except KafkaConfigError as exc:
        raise Failed(EXIT_USAGE, f"configuration: {exc}") from None
    if args.bootstrap is None:
        args.bootstrap = admin_client.kafka_bootstrap(cfg)
    config = simulator.config_from_args(args, stats_log_seconds=10.0, client_options=options)
    sim = simulator.Simulator(config)
    try:
        simulator.run_until_signalled(sim.run())
    except RuntimeError as exc:  # setup failures: say why instead of a traceback
        raise Failed(EXIT_PROBLEM, f"simulate: {exc}") from None
    print(sim.stats.summary())
    return EXIT_OK


# ------------------------------------------------------------------ registration


def _guarded(func: Any, name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
        except Failed as failed:
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
