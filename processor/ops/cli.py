"""The `meter` command: its parser and its entry point.

Exit codes are `processor.ops.common`'s: 0 success, 1 the command ran and found a
problem, 2 bad usage or configuration (see `main`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Final

from pydantic import ValidationError

from processor.config.settings import Settings, settings_problems
from processor.ops import admin_parser
from processor.ops.common import EXIT_USAGE
from processor.ops.output import add_output
from processor.ops.service_commands import cmd_console, cmd_ledger_sink, cmd_notifier, cmd_worker
from processor.ops.tool_commands import (
    cmd_demo,
    cmd_kafka,
    cmd_reconcile,
    cmd_replay_rejected,
    cmd_token,
)

# The commands whose log is their output: the services, and the traffic that logs its
# progress. Every other command prints a report (or, `meter demo`, the live view, its
# services logging to .run/), which a library's INFO lines (aiokafka joining and leaving
# the cluster) would only be mixed into: they log WARNING and up.
LOGGING_COMMANDS: Final = frozenset({"worker", "ledger-sink", "console", "notifier", "simulate"})


def _log_level(command: str) -> int:
    return logging.INFO if command in LOGGING_COMMANDS else logging.WARNING


def version_line() -> str:
    """Added: `meter --version`: ours, and what it runs on (as meter_build_info says)."""
    from processor.config.version import build_info

    info = build_info()
    return (
        f"meter (credits-meter) {info['version']} (faust {info['faust']}, "
        f"aiokafka {info['aiokafka']}, python {info['python']})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter",
        description="credits-meter: meters prepaid communication credits on Kafka.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser(
        "worker",
        help="run one processing worker (configured by the environment, see README)",
        description="Run one worker. Any number of workers with the same METER_APP_ID "
        "share the partitions.",
    )
    worker.add_argument(
        "--advertise-host",
        default="127.0.0.1",
        help="host name other workers use to reach this one's HTTP API (default 127.0.0.1)",
    )
    worker.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes of this deployment on this host, one per core "
        "(default 1: this process is the worker). With N > 1 this process supervises "
        "them: child i serves HTTP on METER_WEB_PORT + i and keeps its state in "
        "METER_DATA_DIR/process-i; a crashed child is restarted, SIGTERM stops them all",
    )
    worker.set_defaults(func=cmd_worker)

    kafka = sub.add_parser(
        "kafka",
        help="the project's local single-node Kafka broker",
        description="Start, stop or inspect the local KRaft broker (jars from Maven Central).",
    )
    kafka.add_argument("action", choices=["start", "stop", "status"])
    add_output(kafka)
    kafka.set_defaults(func=cmd_kafka)

    rec = sub.add_parser(
        "reconcile",
        help="check every balance against its inputs and the ledger (exit 1 on mismatch)",
        description="Read the input topics and credits.ledger, rate the distinct inputs "
        "again, and compare the balances they imply with the ledger's sums and, with "
        "--worker-url, with the live accounts. Run it when the processor has caught up.",
    )
    rec.add_argument(
        "--worker-url", default=None, help="a worker's HTTP address, e.g. http://127.0.0.1:6066"
    )
    add_output(rec)
    rec.set_defaults(func=cmd_reconcile)

    replay = sub.add_parser(
        "replay-rejected",
        help="send rejected records back to their source topic once their cause is fixed",
        description="Read credits.rejected and re-send the original bytes of the records "
        "rejected for a fixable reason to the topic they came from, with their key. The "
        "processor decides again: applied if the cause is fixed, rejected again if not. "
        "Ids de-duplicate, so replaying twice applies once. Exit 1 when a selected record "
        "could not be replayed.",
    )
    replay.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="replay records rejected for REASON (repeatable; default: no_rate, "
        "currency_mismatch, internal_error); invalid_json is never replayed",
    )
    replay.add_argument(
        "--since",
        metavar="TIMESTAMP",
        help="only records rejected at or after this RFC 3339 time, e.g. 2026-11-25T00:00:00Z",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed; send nothing"
    )
    replay.add_argument(
        "--limit", type=int, metavar="N", help="replay at most N records, oldest rejections first"
    )
    replay.add_argument(
        "--force-too-old",
        action="store_true",
        help="apply records rejected as too_old (older than METER_DEDUPE_DAYS) on your word "
        "that they were never applied: selects reason too_old besides any --reason, and "
        "the processor applies what is replayed without the age check (an id still "
        "remembered stays a duplicate)",
    )
    add_output(replay)
    replay.set_defaults(func=cmd_replay_rejected)

    sink = sub.add_parser(
        "ledger-sink",
        help="write credits.ledger, recharge requests and outcomes into SQL and serve queries",
        description="Consume credits.ledger, credits.recharge-requests, the recharge "
        "outcomes on credits.commands, every command's status (credits.commands, "
        "credits.command-results) and the tenants' alerts (credits.alerts, for the "
        "operator's list) (read_committed, group <METER_APP_ID>-ledger-sink) "
        "into SQLite (a file in METER_DATA_DIR) or PostgreSQL (METER_DATABASE_URL), "
        "exactly once, and serve the ledger, usage, CSV statement, command status, "
        "tenants list and recharges queries on METER_SINK_PORT (default 6070).",
    )
    sink.set_defaults(func=cmd_ledger_sink)

    console = sub.add_parser(
        "console",
        help="the admin console: web pages over the worker API and the ledger sink",
        description="Serve the admin console on METER_CONSOLE_PORT (default 6080): sign in "
        "with a token; a tenant admin's Communication Credits page and the operator's list "
        "of tenants. It calls METER_API_URL (a worker) and METER_SINK_URL (the ledger "
        "sink) with the signed-in user's token.",
    )
    console.set_defaults(func=cmd_console)
    notifier = sub.add_parser(
        "notifier",
        help="email and webhook people about their credits (low balance, recharges, ...)",
        description="Consume credits.alerts (read_committed, group <METER_APP_ID>-notifier) "
        "and the tenants' settings on credits.notification-settings, and deliver each "
        "notification at least once from a durable outbox (SQLite in METER_DATA_DIR or "
        "METER_DATABASE_URL): email over SMTP (METER_SMTP_*), Standard Webhooks signed "
        "with the tenant's secret (opened with METER_SECRETS_KEY), retried with "
        "back-off. /metrics, /health and /ready on METER_NOTIFIER_PORT (default 6071).",
    )
    notifier.set_defaults(func=cmd_notifier)

    demo = sub.add_parser(
        "demo",
        help="the whole product locally, with simulated traffic (what `make run` runs)",
        description="Start the local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), "
        "one worker, the ledger sink, the console and the notifier (with a local SMTP "
        "server and webhook receiver), play telephony and billing traffic, and show "
        "balances live until Ctrl-C; then stop everything started. Logs in .run/, data "
        "in METER_DATA_DIR (default .run/data).",
    )
    demo.add_argument("--tenants", type=int, default=36, help="simulated tenants (default 36)")
    demo.add_argument("--rate", type=float, default=20.0, help="usage events per second")
    demo.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)"
    )
    demo.set_defaults(func=cmd_demo)

    token = sub.add_parser(
        "token",
        help="issue a token signed by the local key pair (METER_DATA_DIR/auth)",
        description="Print a JSON Web Token for METER_AUTH=jwt, signed by the local key "
        "pair kept under METER_DATA_DIR/auth/ (made on first use: private.pem, mode "
        "0600, and jwks.json, which METER_AUTH_JWKS can point at). Its issuer and "
        "audience are METER_AUTH_ISSUER and METER_AUTH_AUDIENCE, or the local defaults.",
    )
    token.add_argument("action", choices=["issue"])
    token.add_argument("--role", required=True, choices=["tenant_admin", "operator", "billing"])
    token.add_argument("--tenant", default=None, help="the tenant (required for tenant_admin)")
    token.add_argument("--subject", default=None, help="the actor (sub); default from the role")
    token.add_argument(
        "--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)"
    )
    token.set_defaults(func=cmd_token)

    # Operator commands: account, add-funds, auto-recharge, limits, command, schemas, rules,
    # simulate.
    admin_parser.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=_log_level(args.command), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        result: int = args.func(args)
    except ValidationError as exc:
        # Every command reads the environment through Settings(); a bad value is a
        # sentence per variable and exit 2, never a traceback.
        if exc.title != Settings.__name__:
            raise
        for problem in settings_problems(exc):
            print(f"meter {args.command}: configuration: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return result


if __name__ == "__main__":
    sys.exit(main())
