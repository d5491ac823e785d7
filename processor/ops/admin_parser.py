"""How `meter` parses the operator commands: account, add-funds, auto-recharge, limits,
notifications, command, schemas, rules and simulate (their arguments, help texts and
exit on failure)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from processor.ops.admin_client import Failed
from processor.ops.admin_commands import (
    cmd_account,
    cmd_add_funds,
    cmd_auto_recharge_disable,
    cmd_auto_recharge_set,
    cmd_command_status,
    cmd_limits,
    cmd_notifications,
    cmd_rules_export,
    cmd_schemas_export,
    cmd_simulate,
)
from processor.ops.output import add_output
from schemas.notifications import NOTIFICATION_EVENTS
from schemas.types import MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS, TenantId, parse_money

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


def _money(value: str) -> str:
    """argparse type: a decimal number, said the CLI's way (the contract's message
    speaks of JSON strings). Kept as given: its bounds are the command's model's."""
    try:
        parse_money(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a decimal number such as 50.00 (at most {MAX_INTEGER_DIGITS} "
            f"integer and {MAX_FRACTION_DIGITS} fraction digits)"
        ) from None
    return value


def _events(value: str) -> list[str]:
    """argparse type: a comma-separated list of the contract's notification events, or
    a usage error naming them all. (Each named once: the command's model says so.)"""
    names = [name.strip() for name in value.split(",")]
    unknown = [name for name in names if name not in NOTIFICATION_EVENTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(name) for name in unknown)}; the events are: "
            + ", ".join(NOTIFICATION_EVENTS)
        )
    return names


def _guarded(func: Any, name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
        except Failed as failed:
            print(f"meter {name}: {failed}", file=sys.stderr)
            return failed.code
        return result

    return run


def _tenant_parser(sub: Any, name: str, **texts: str) -> argparse.ArgumentParser:
    """A command about one tenant (`texts`: its help and description), TENANT first."""
    parser: argparse.ArgumentParser = sub.add_parser(name, **texts)
    parser.add_argument("tenant", metavar="TENANT", type=_tenant)
    return parser


_KEY_HELP: Final = (
    "repeat a command with the same key and it is applied once (default: a new "
    "UUID, printed); scoped per kind of command, as the admin API's Idempotency-Key"
)


def _send_options(parser: argparse.ArgumentParser) -> None:
    """How a command that changes an account is sent (its key, straight to Kafka or
    --via-api) and what it prints."""
    parser.add_argument("--idempotency-key", default=None, metavar="KEY", help=_KEY_HELP)
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
    worker_url: dict[str, Any] = {
        "default": None,
        "metavar": "URL",
        "help": "a worker's HTTP address (default http://127.0.0.1:$METER_WEB_PORT)",
    }
    # Reads: any worker's API, which under METER_AUTH=jwt wants a token.
    read_auth_help = (
        "the bearer token the worker's API wants under METER_AUTH=jwt (default: "
        "$METER_API_TOKEN, else $METER_ADMIN_TOKEN)"
    )

    account = _tenant_parser(
        sub,
        "account",
        help="show a tenant's balance, status and recharge state (from a worker)",
        description="GET /tenants/TENANT/account from a worker; any worker answers for "
        "any tenant. Exit 1 if the tenant is unknown or no worker answers.",
    )
    account.add_argument("--worker-url", **worker_url)
    account.add_argument("--token", default=None, help=read_auth_help)
    # JSON by default, as it always printed.
    add_output(account, default="json")
    account.set_defaults(func=_guarded(cmd_account, "account"))

    funds = _tenant_parser(
        sub,
        "add-funds",
        help="top a tenant up by hand (publishes funds_added, source manual)",
        description="Publish a manual funds_added command to credits.commands. Works "
        "without a running worker; the balance changes when a worker applies it.",
    )
    funds.add_argument(
        "amount", metavar="AMOUNT", type=_money, help="e.g. 50.00 (> 0, at most 1000000)"
    )
    funds.add_argument(
        "--currency", default=None, help="ISO 4217 code (default: the rate card's currency)"
    )
    _send_options(funds)
    funds.set_defaults(func=_guarded(cmd_add_funds, "add-funds"))

    auto = sub.add_parser(
        "auto-recharge",
        help="set or disable a tenant's auto-recharge",
        description="Set (auto_recharge_configured: replaces the tenant's settings and "
        "lifts a suspension) or disable (auto_recharge_changed: off, the rest kept) a "
        "tenant's auto-recharge.",
    )
    auto_sub = auto.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_ = _tenant_parser(
        auto_sub,
        "set",
        help="enable: recharge AMOUNT whenever the balance falls below TRIGGER",
        description="Enable auto-recharge: when the balance falls below --trigger, the "
        "processor asks billing for --amount, or with --target for what brings the "
        "balance up to --target (--amount is still kept, for a later switch back). "
        "Replaces the tenant's settings and lifts a suspension.",
    )
    set_.add_argument(
        "--amount", required=True, type=_money, help="recharge amount, e.g. 25.00 (> 0)"
    )
    set_.add_argument(
        "--trigger", required=True, type=_money, help="trigger balance, e.g. 5.00 (>= 0)"
    )
    set_.add_argument(
        "--target",
        default=None,
        type=_money,
        help="recharge up to this balance instead of by --amount (mode to_target; above "
        "--trigger), e.g. 50.00",
    )
    _send_options(set_)
    set_.set_defaults(func=_guarded(cmd_auto_recharge_set, "auto-recharge set"))
    disable = _tenant_parser(
        auto_sub,
        "disable",
        help="turn auto-recharge off (keeps the amounts)",
        description="Disable auto-recharge, keeping its amounts, mode and target (an "
        "auto_recharge_changed command, as DELETE /tenants/TENANT/auto-recharge "
        "publishes). A worker is asked first whether there is anything to disable; "
        "with --amount and --trigger, the settings are replaced by these, off.",
    )
    disable.add_argument("--worker-url", **worker_url)
    disable.add_argument("--amount", default=None, type=_money, help="recharge amount to keep")
    disable.add_argument("--trigger", default=None, type=_money, help="trigger balance to keep")
    _send_options(disable)

    limits = _tenant_parser(
        sub,
        "limits",
        help="set a tenant's credit limit and low-balance level",
        description="Publish a tenant_limits_configured command (as PUT "
        "/tenants/TENANT/limits does). What is not given is kept; --no-notify-below "
        "clears the low-balance level.",
    )
    limits.add_argument(
        "--credit-limit",
        default=None,
        type=_money,
        metavar="AMOUNT",
        help="how far below zero the balance may go, e.g. 20.00 (0: none)",
    )
    level = limits.add_mutually_exclusive_group()
    level.add_argument(
        "--notify-below",
        default=None,
        type=_money,
        metavar="AMOUNT",
        help="alert (low_balance) when the balance falls below this, e.g. 5.00",
    )
    level.add_argument("--no-notify-below", action="store_true", help="no low-balance alerts")
    _send_options(limits)
    limits.set_defaults(func=_guarded(cmd_limits, "limits"))

    notifications = _tenant_parser(
        sub,
        "notifications",
        help="change who a tenant notifies: emails, events, removing the webhook",
        description="Publish a notifications_changed command (as PATCH "
        "/tenants/TENANT/notifications does). What is not given is kept. A webhook is "
        "not set here: its secret must be sealed by a worker, so set one with PUT or "
        "PATCH /tenants/TENANT/notifications on the admin API.",
    )
    emails = notifications.add_mutually_exclusive_group()
    emails.add_argument(
        "--email",
        dest="emails",
        action="append",
        default=None,
        metavar="ADDR",
        help="an address to email; repeat it for each: the complete new list",
    )
    emails.add_argument("--no-emails", action="store_true", help="email nobody")
    notifications.add_argument(
        "--events",
        default=None,
        type=_events,
        metavar="E,E,...",
        help="what to tell about, comma-separated, of: " + ", ".join(NOTIFICATION_EVENTS),
    )
    notifications.add_argument(
        "--no-webhook", action="store_true", help="remove the webhook and its secret"
    )
    _send_options(notifications)
    notifications.set_defaults(func=_guarded(cmd_notifications, "notifications"))

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
    status.add_argument("--token", default=None, help=read_auth_help)
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
