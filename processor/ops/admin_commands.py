"""The operator's `meter` commands: accounts, top-ups, auto-recharge, schemas, traffic.

    meter account TENANT [--worker-url URL] [--token T]
    meter add-funds TENANT AMOUNT [--currency C] [--idempotency-key K] [--via-api URL]
    meter auto-recharge set TENANT --amount A --trigger T [--target B] [--idempotency-key K]
                            [--via-api URL]
    meter auto-recharge disable TENANT [--worker-url URL | --amount A --trigger T | --via-api URL]
    meter limits TENANT [--credit-limit A] [--notify-below B | --no-notify-below]
                        [--idempotency-key K] [--via-api URL]
    meter notifications TENANT [--email ADDR ... | --no-emails] [--events E,E,...]
                               [--no-webhook] [--idempotency-key K] [--via-api URL]
    meter command status ID [--tenant T] [--worker-url URL] [--token T] [--wait SECONDS]
    meter schemas export [--check]
    meter rules export [--check]
    meter simulate [simulator options]

*Added:* every command that prints a result takes `--output json|table`;
`--via-api URL` sends a top-up or settings through a worker's admin API (bearer
token from `--token` or METER_API_TOKEN) instead of straight to Kafka, and prints where
its status is (`meter command status ID`). The reads (`account`, `command status`)
send `--token`'s bearer, else the settings' (METER_API_TOKEN, else METER_ADMIN_TOKEN),
as a worker under METER_AUTH=jwt wants one.

The commands that change accounts publish the contract's commands straight to
`credits.commands` (processor.ops.admin_client), so they work with no admin API and
no worker running; the worker applies them when it gets there. Every command prints
the `command_id` it used and its key (`--idempotency-key`, or a new UUID): run it again
with `--idempotency-key` set to that key and the processor applies it once, so a
command whose outcome is unknown (a timeout) is safe to repeat. The command_id is made
of the key as the admin API makes it for the same endpoint (`command_id_for`: a
top-up's is the key, a limits command's `limits:` + key, ...), so a key is scoped per
kind of command and names the same command straight to Kafka or `--via-api`.

Exit codes are `processor.ops.common`'s: 0 done, 1 the command ran into a problem (Kafka or
the worker unreachable, tenant unknown), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from processor.config.settings import Settings

# Through the module: tests replace its send_command, request and get_account.
from processor.ops import admin_client
from processor.ops.admin_client import (
    Failed,
    argument,
    command_id,
    default_worker_url,
    load_settings,
)
from processor.ops.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from processor.ops.output import emit
from schemas.inputs import (
    AutoRechargeChanged,
    AutoRechargeConfigured,
    FundsAdded,
    NotificationsChanged,
    TenantLimitsConfigured,
)
from schemas.types import Actor, format_money

if TYPE_CHECKING:
    from processor.http.admin_requests import Endpoint

__all__ = [
    "cmd_account",
    "cmd_add_funds",
    "cmd_auto_recharge_disable",
    "cmd_auto_recharge_set",
    "cmd_command_status",
    "cmd_limits",
    "cmd_notifications",
    "cmd_rules_export",
    "cmd_schemas_export",
    "cmd_simulate",
]


def _problem(error: ErrorDetails) -> str:
    """`where: what`; a rule of the whole command (target above trigger) has no
    location, so its message stands alone. An item of a list given by a repeated
    argument (`--email`) is named by its value, as typed."""
    from processor.http.admin_requests import field_message

    message = field_message(error)
    loc = error["loc"]
    if len(loc) == 2 and isinstance(loc[1], int):
        where = f"{argument(str(loc[0]))} {error.get('input')!r}"
    else:
        where = argument(".".join(str(part) for part in loc))
    return f"{where}: {message}" if where else message


def _problems(exc: ValidationError) -> str:
    return "; ".join(_problem(e) for e in exc.errors(include_url=False))


def _token_hint(status: int) -> str:
    """After a 401 (METER_AUTH=jwt, no token or a bad one): where a token goes."""
    return "; pass a token with --token or METER_API_TOKEN" if status == 401 else ""


def cmd_command_status(args: argparse.Namespace) -> int:
    """Added: GET /commands/{id} from a worker (which asks the ledger sink)."""
    import time

    base = (args.worker_url or default_worker_url()).rstrip("/")
    url = f"{base}/commands/{quote(args.command_id, safe='')}"
    if args.tenant is not None:
        url += f"?tenant_id={quote(args.tenant, safe='')}"
    auth = admin_client.read_auth(args)
    deadline = time.monotonic() + (args.wait or 0)
    while True:
        status, body, _ = asyncio.run(admin_client.request("GET", url, auth=auth))
        pending = status == 200 and body.get("status") == "pending"
        waiting = status == 404 or pending or status == 503
        if not (waiting and args.wait and time.monotonic() < deadline):
            break
        time.sleep(0.5)
    if status != 200:
        where = f"HTTP {status}" if status else "unreachable"
        raise Failed(
            EXIT_USAGE if status == 400 else EXIT_PROBLEM,
            f"{args.command_id}: {body.get('detail', body)} ({where}){_token_hint(status)}",
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


_ACTOR: Final[TypeAdapter[str]] = TypeAdapter(Actor)


def _actor() -> str:
    """Who sends a command straight to Kafka, as the contract's `actor` (free text, which
    its ledger entry carries): `cli:` and the OS user, as the admin API names its caller
    by the token's `sub`."""
    import getpass

    try:
        return _ACTOR.validate_python(f"cli:{getpass.getuser()}")
    except (OSError, KeyError, ValidationError):
        # No user name (a container's uid without one), or one the contract's printable
        # ASCII cannot hold: still the CLI's.
        return "cli"


def _build(model: type[BaseModel], **fields: Any) -> BaseModel:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise Failed(EXIT_USAGE, _problems(exc)) from None


def _command(
    model: type[BaseModel], kind: str, endpoint: Endpoint, args: argparse.Namespace, **fields: Any
) -> BaseModel:
    """A contract command of this type for args.tenant, made now by this user, under the
    command_id the admin API's `endpoint` makes of args' key. (--via-api sends only its
    fields: the API names the actor itself.)"""
    return _build(
        model,
        type=kind,
        command_id=command_id(args, endpoint),
        tenant_id=args.tenant,
        occurred_at=datetime.now(UTC),
        actor=_actor(),
        **fields,
    )


def _card_currency(cfg: Settings) -> str:
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.core.rating import RateCardError

    try:
        return load_rate_card(cfg.rate_card or example_rate_card_path()).currency
    except (RateCardError, OSError) as exc:
        raise Failed(EXIT_USAGE, f"rate card: {exc}; or pass --currency") from None


def _check_card_currency(cfg: Settings, currency: str) -> None:
    """Refuse a top-up the processor would reject (currency_mismatch) as the admin API
    does; with no rate card readable here, the processor decides, as it always did."""
    card = admin_client.readable_card(cfg)
    if card is not None and currency != card.currency:
        raise Failed(
            EXIT_USAGE,
            f"--currency {currency}: the rate card's currency is {card.currency}; "
            "the processor would reject a top-up in another (currency_mismatch)",
        )


# ------------------------------------------------------------------ the commands


def cmd_add_funds(args: argparse.Namespace) -> int:
    cfg = load_settings()
    currency = args.currency or _card_currency(cfg)
    command = _command(
        FundsAdded,
        "funds_added",
        "funds",
        args,
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
    # Only here: through the API, the worker checks against its own card.
    _check_card_currency(cfg, currency)
    return admin_client.publish(cfg, command, args.tenant, summary, args)


def _settings_command(
    args: argparse.Namespace, enabled: bool, amount: str, trigger: str, target: str | None = None
) -> BaseModel:
    return _command(
        AutoRechargeConfigured,
        "auto_recharge_configured",
        "auto-recharge",
        args,
        enabled=enabled,
        recharge_amount=amount,
        trigger_balance=trigger,
        mode="fixed" if target is None else "to_target",
        target_balance=target,
    )


def cmd_auto_recharge_set(args: argparse.Namespace) -> int:
    cfg = load_settings()
    command = _settings_command(args, True, args.amount, args.trigger, args.target)
    summary = f"auto-recharge for {args.tenant}: {args.amount} when below {args.trigger}"
    if args.target is not None:
        summary = f"auto-recharge for {args.tenant}: up to {args.target} when below {args.trigger}"
    if args.via_api:
        assert isinstance(command, AutoRechargeConfigured)
        body: dict[str, Any] = {
            "enabled": True,
            "recharge_amount": format_money(command.recharge_amount),
            "trigger_balance": format_money(command.trigger_balance),
        }
        if command.target_balance is not None:
            body["mode"] = "to_target"
            body["target_balance"] = format_money(command.target_balance)
        path = f"/tenants/{quote(args.tenant, safe='')}/auto-recharge"
        return admin_client.via_api(args, "PUT", path, body, summary)
    return admin_client.publish(cfg, command, args.tenant, summary, args)


def cmd_auto_recharge_disable(args: argparse.Namespace) -> int:
    cfg = load_settings()
    amount, trigger = args.amount, args.trigger
    summary = f"auto-recharge for {args.tenant}: disabled"
    if args.via_api:
        # DELETE: the owner turns it off and keeps the amounts; none are needed here.
        path = f"/tenants/{quote(args.tenant, safe='')}/auto-recharge"
        return admin_client.via_api(args, "DELETE", path, None, summary)
    if (amount is None) != (trigger is None):
        raise Failed(EXIT_USAGE, "give both --amount and --trigger, or neither")
    if amount is not None:
        # Explicit amounts: the settings replaced, off, as before this command had
        # auto_recharge_changed (so under PUT's command_id, as `set`).
        command = _settings_command(args, False, amount, trigger)
        return admin_client.publish(cfg, command, args.tenant, summary, args)
    # What DELETE publishes: `enabled: false`, merged at the tenant's owner in order
    # with every other command, so its amounts, mode and target are kept as they are
    # there, not as a read a moment ago saw them.
    url = args.worker_url or default_worker_url()
    status, body = asyncio.run(
        admin_client.get_account(url, args.tenant, admin_client.read_auth(args))
    )
    if status == 404 or (status == 200 and body.get("auto_recharge") is None):
        emit(
            admin_client.output_format(args),
            {"status": "unchanged", "tenant_id": args.tenant, "auto_recharge": None},
            f"{args.tenant} has no auto-recharge settings: nothing to disable",
        )
        return EXIT_OK
    # Any other answer (no worker reachable among them) does not stop it: the owner
    # decides, and `meter command status ID` tells what it did.
    changed = _command(
        AutoRechargeChanged,
        "auto_recharge_changed",
        "auto-recharge-off",
        args,
        enabled=False,
    )
    return admin_client.publish(cfg, changed, args.tenant, summary, args)


def cmd_limits(args: argparse.Namespace) -> int:
    cfg = load_settings()
    # Only what was given: an absent limit is kept at the owner, a null level cleared.
    given: dict[str, Any] = {}
    if args.credit_limit is not None:
        given["credit_limit"] = args.credit_limit
    if args.notify_below is not None or args.no_notify_below:
        given["notify_below"] = args.notify_below
    command = _command(
        TenantLimitsConfigured,
        "tenant_limits_configured",
        "limits",
        args,
        **given,
    )
    shown = ", ".join(f"{name} {value or 'none'}" for name, value in given.items())
    summary = f"limits for {args.tenant}: {shown}"
    if args.via_api:
        assert isinstance(command, TenantLimitsConfigured)
        body = {
            name: None if value is None else format_money(value)
            for name, value in command.model_dump(include=set(given)).items()
        }
        path = f"/tenants/{quote(args.tenant, safe='')}/limits"
        return admin_client.via_api(args, "PUT", path, body, summary)
    return admin_client.publish(cfg, command, args.tenant, summary, args, exclude_unset=True)


def cmd_notifications(args: argparse.Namespace) -> int:
    """Added: who a tenant tells, changed in part (notifications_changed, as PATCH
    /tenants/TENANT/notifications). No webhook is set here: its secret is sealed by a
    worker (METER_SECRETS_KEY), so only the admin API takes one."""
    cfg = load_settings()
    # Only what was given: an absent field is kept at the owner; a null webhook_url
    # removes the webhook and its secret.
    given: dict[str, Any] = {}
    shown: list[str] = []
    if args.emails is not None or args.no_emails:
        given["emails"] = args.emails or []
        shown.append(f"emails {', '.join(given['emails'])}" if args.emails else "no emails")
    if args.events is not None:
        given["events"] = args.events
        shown.append(f"events {', '.join(args.events)}")
    if args.no_webhook:
        given["webhook_url"] = None
        shown.append("webhook removed")
    if not given:
        raise Failed(
            EXIT_USAGE, "nothing to change: give --email (or --no-emails), --events or --no-webhook"
        )
    command = _command(
        NotificationsChanged,
        "notifications_changed",
        "notifications-change",
        args,
        **given,
    )
    summary = f"notifications for {args.tenant}: {'; '.join(shown)}"
    if args.via_api:
        body = command.model_dump(mode="json", include=set(given))
        path = f"/tenants/{quote(args.tenant, safe='')}/notifications"
        return admin_client.via_api(args, "PATCH", path, body, summary)
    return admin_client.publish(cfg, command, args.tenant, summary, args, exclude_unset=True)


def cmd_account(args: argparse.Namespace) -> int:
    url = args.worker_url or default_worker_url()
    status, body = asyncio.run(
        admin_client.get_account(url, args.tenant, admin_client.read_auth(args))
    )
    if status == 200:
        emit(args.output, body)
        return EXIT_OK
    if status == 404:
        raise Failed(EXIT_PROBLEM, f"{args.tenant}: no such tenant (no event for it yet)")
    reason = body.get("detail", body)
    hint = "; retry in a moment" if status == 503 else _token_hint(status)
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
