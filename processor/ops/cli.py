"""The `meter` command.

Exit codes: 0 success, 1 the command ran and found a problem (broker not running,
check failed), 2 bad usage or configuration (a setting the environment gets wrong is
one line naming the variable, its value and what is allowed; see `main`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from processor.config.settings import Settings, settings_problems
from processor.ops.output import add_output, emit

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _bootstrap(cfg: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS, or the local broker that `meter kafka start` runs."""
    if cfg.kafka_bootstrap_servers:
        return cfg.kafka_bootstrap_servers
    from processor.dev import kafka_local

    state = kafka_local.status(kafka_local.default_state_dir())
    if not state or not state.get("running"):
        raise SystemExit(
            "KAFKA_BOOTSTRAP_SERVERS is not set and the local broker is not running; "
            "start it with `meter kafka start` or point KAFKA_BOOTSTRAP_SERVERS at a cluster"
        )
    return str(state["bootstrap"])


def cmd_worker(args: argparse.Namespace) -> int:
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.core.rating import RateCardError
    from processor.http.auth import access_from
    from processor.kafka.options import KafkaAccessError, KafkaConfigError, kafka_client_options
    from processor.kafka.topics import (
        TopicLayoutError,
        TopicNames,
        ensure_topics,
        max_message_bytes,
    )
    from processor.observability.logs import logging_config
    from processor.worker.app import Broker, Meter

    cfg = Settings()
    try:
        card = load_rate_card(cfg.rate_card or example_rate_card_path())
    except (RateCardError, OSError) as exc:
        print(f"meter worker: rate card: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        access_from(cfg)  # METER_AUTH=jwt: the key set must be readable now
    except (OSError, ValueError) as exc:
        print(f"meter worker: access: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bootstrap = _bootstrap(cfg)
    try:
        partitions = asyncio.run(
            ensure_topics(
                bootstrap,
                TopicNames.from_settings(cfg),
                cfg.partitions,
                cfg.replication_factor,
                ledger_retention_ms=cfg.ledger_retention_ms,
                **kafka_client_options(cfg),
            )
        )
    except (TopicLayoutError, KafkaConfigError, KafkaAccessError) as exc:
        print(f"meter worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    names = TopicNames.from_settings(cfg)
    # What the output topics take, so no rejection or re-route is built too large.
    limits = asyncio.run(
        max_message_bytes(bootstrap, (names.rejected, names.reroute), **kafka_client_options(cfg))
    )
    # ensure_topics closed its loop; Faust's worker wants a current one of its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    meter = Meter(
        cfg, card, Broker(bootstrap), partitions, web_host=args.advertise_host, limits=limits
    )
    _tune_gc()
    worker = _quiet_worker_class()(
        meter.app,
        loglevel=cfg.log_level,
        quiet=True,
        logging_config=logging_config(cfg.log_format, cfg.log_level),
    )
    try:
        worker.execute_from_commandline()
    except SystemExit:
        # Faust exits 1 on any crash; a refusal found while recovering the accounts
        # (processor/worker/store.py) is a configuration mistake: say it plainly, exit 2.
        refusal = startup_refusal(worker.crash_reason or meter.app.crash_reason)
        if refusal is None:
            raise
        print(f"meter worker: refusing to start: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def startup_refusal(exc: BaseException | None) -> str | None:
    """The message of a refusal to start, if `exc` is one or was caused by one."""
    from processor.core.money import UnitMismatch
    from processor.core.stored import InputsRewound

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UnitMismatch | InputsRewound):
            return str(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# A worker keeps every dedupe mark of its window and every account in memory, and
# allocates a few dozen objects per record. With the default thresholds (700, 10, 10)
# the collector's full passes over that growing heap cost about as much CPU as the
# records themselves (in process, 100,000 records: 177 us per record against 99 with
# the collector off; docs/performance.md), and pause the loop for the duration of a
# pass. Young passes every 50,000 allocations and full ones a tenth as often keep
# cyclic garbage collected at a small fraction of that cost.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def _quiet_worker_class() -> type:
    import faust

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # Faust's progress spinner sets the root logger to DEBUG (its handlers then
            # filter) whenever the level is WARN or above, so every debug record of
            # every library was built and dropped: 11% of a busy worker's time, more
            # during recovery. No spinner: the root logger keeps the level asked for.
            self.spinner = None

    return Worker


def cmd_kafka(args: argparse.Namespace) -> int:
    from processor.dev import kafka_local

    state_dir = kafka_local.default_state_dir()
    if args.action == "start":
        started = kafka_local.start_background(state_dir)
        emit(args.output, {"action": "start", "result": str(started)}, str(started))
        return EXIT_OK
    if args.action == "stop":
        stopped = kafka_local.stop_background(state_dir)
        text = "stopped" if stopped else "not running"
        emit(args.output, {"action": "stop", "result": text}, text)
        return EXIT_OK
    state = kafka_local.status(state_dir)
    if not state or not state.get("running"):
        emit(args.output, {"running": False}, "not running")
        return EXIT_PROBLEM
    emit(
        args.output,
        {k: state.get(k) for k in ("running", "bootstrap", "pid", "data_dir")},
        f"running at {state['bootstrap']} (pid {state['pid']}, data {state['data_dir']})",
    )
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    from processor.core.engine import DedupeWindow
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.http.auth import client_headers
    from processor.kafka.options import kafka_client_options
    from processor.kafka.topics import TopicNames
    from processor.ops.reconcile import reconcile

    cfg = Settings()
    card = load_rate_card(cfg.rate_card or example_rate_card_path())
    report = asyncio.run(
        reconcile(
            _bootstrap(cfg),
            TopicNames.from_settings(cfg),
            card,
            args.worker_url,
            # Judged as the workers judge event times (too old, too far ahead).
            dedupe=DedupeWindow(cfg.dedupe_days, cfg.max_future_seconds),
            # METER_AUTH=jwt: the live balances need a token (METER_API_TOKEN).
            worker_headers=client_headers(cfg),
            **kafka_client_options(cfg),
        )
    )
    emit(args.output, _as_data(report), report.render())
    return EXIT_PROBLEM if report.discrepancies else EXIT_OK


def cmd_replay_rejected(args: argparse.Namespace) -> int:
    from processor.kafka.options import kafka_client_options
    from processor.kafka.topics import TopicNames
    from processor.ops.replay import parse_since, replay_reasons, replay_rejected

    try:
        reasons = replay_reasons(args.reason or (), force_too_old=args.force_too_old)
        since = parse_since(args.since) if args.since is not None else None
    except ValueError as exc:
        print(f"meter replay-rejected: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.limit is not None and args.limit < 1:
        print("meter replay-rejected: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    cfg = Settings()
    report = asyncio.run(
        replay_rejected(
            _bootstrap(cfg),
            TopicNames.from_settings(cfg),
            reasons=reasons,
            since=since,
            limit=args.limit,
            dry_run=args.dry_run,
            force_too_old=args.force_too_old,
            client_options=kafka_client_options(cfg),
        )
    )
    emit(args.output, _as_data(report), report.render())
    return EXIT_PROBLEM if report.problems else EXIT_OK


def _as_data(value: Any) -> Any:
    """A report dataclass as JSON-able data (Decimal and other values as text).

    Not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs as keys."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _as_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_as_data(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def cmd_console(args: argparse.Namespace) -> int:
    import signal

    from processor.console.api import ApiClient
    from processor.console.app import build_app, serve

    cfg = Settings()
    api_url = cfg.api_url or f"http://127.0.0.1:{cfg.web_port}"
    sink_url = cfg.sink_url or f"http://127.0.0.1:{cfg.sink_port}"
    token = None if cfg.admin_token is None else cfg.admin_token.get_secret_value()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        app = build_app(ApiClient(api_url, sink_url), token)
        logging.getLogger("processor.console").info(
            "console: worker API %s, ledger sink %s", api_url, sink_url
        )
        try:
            await serve(app, cfg.web_host, cfg.console_port, stop)
        except OSError as exc:
            print(f"meter console: {exc}", file=sys.stderr)
            return EXIT_PROBLEM
        return EXIT_OK

    return asyncio.run(main())


def cmd_token(args: argparse.Namespace) -> int:
    from processor.http.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalKeys

    cfg = Settings()
    keys = LocalKeys(cfg.data_dir)
    try:
        token = keys.issue(
            args.role,
            args.tenant,
            subject=args.subject,
            ttl_seconds=args.ttl,
            issuer=cfg.auth_issuer or LOCAL_ISSUER,
            audience=cfg.auth_audience or LOCAL_AUDIENCE,
        )
    except (ValueError, OSError) as exc:
        print(f"meter token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(token)
    return EXIT_OK


def cmd_ledger_sink(args: argparse.Namespace) -> int:
    import signal

    from aiokafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from processor.http.auth import access_from
    from processor.kafka.options import KafkaConfigError, kafka_client_options
    from processor.kafka.topics import TopicNames
    from processor.sink.service import LedgerSink, SinkTopics, group_id, serve
    from processor.sink.store import LedgerStore, database_url, safe_url

    cfg = Settings()
    secret = cfg.database_url
    try:
        url = database_url(None if secret is None else secret.get_secret_value(), cfg.data_dir)
        options = kafka_client_options(cfg)
        access = access_from(cfg)
    except (ValueError, OSError, KafkaConfigError) as exc:
        print(f"meter ledger-sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bootstrap = _bootstrap(cfg)
    names = TopicNames.from_settings(cfg)
    topics = SinkTopics(
        names.ledger,
        names.recharge_requests,
        names.commands,
        names.command_results,
        alerts=names.alerts,
    )

    async def main() -> int:
        try:
            store = await LedgerStore.open(url)
        except Exception as exc:  # the driver's own errors: unreachable, refused, ...
            print(f"meter ledger-sink: database {safe_url(url)}: {exc}", file=sys.stderr)
            return EXIT_PROBLEM
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sink = LedgerSink(store, bootstrap, topics, group_id(cfg.app_id), client_options=options)
        logging.getLogger("processor.sink").info(
            "ledger-sink: %s into %s as group %s",
            ", ".join(topics.all()),
            safe_url(url),
            sink.group,
        )
        try:
            await serve(store, sink, cfg.web_host, cfg.sink_port, stop, access)
        except (SQLAlchemyError, KafkaError, OSError) as exc:
            # Nothing is lost: a restart resumes from the positions in the database.
            print(f"meter ledger-sink: stopped: {exc!r}", file=sys.stderr)
            return EXIT_PROBLEM
        finally:
            await store.close()
        return EXIT_OK

    return asyncio.run(main())


def cmd_notifier(args: argparse.Namespace) -> int:
    import signal
    from datetime import timedelta

    from aiokafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from processor.config.sealing import Sealer, SealError
    from processor.kafka.options import KafkaConfigError, kafka_client_options
    from processor.kafka.topics import TopicNames
    from processor.notifier.channels import EmailChannel, SmtpConfig, WebhookChannel
    from processor.notifier.server import serve
    from processor.notifier.service import Notifier, NotifierConfig, group_id
    from processor.notifier.settings_book import SettingsBook
    from processor.notifier.store import SQLITE_FILE, OutboxStore
    from processor.sink.store import database_url, safe_url

    cfg = Settings()
    secret = cfg.database_url
    try:
        url = database_url(
            None if secret is None else secret.get_secret_value(), cfg.data_dir, SQLITE_FILE
        )
        options = kafka_client_options(cfg)
        sealer = None if cfg.secrets_key is None else Sealer(cfg.secrets_key)
    except (ValueError, KafkaConfigError) as exc:
        print(f"meter notifier: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SealError as exc:
        print(f"meter notifier: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log = logging.getLogger("processor.notifier")
    if sealer is None:
        log.warning("notifier: METER_SECRETS_KEY is not set: webhooks cannot be signed")
    email = None
    if cfg.smtp_host:
        email = EmailChannel(
            SmtpConfig(
                host=cfg.smtp_host,
                port=cfg.smtp_port,
                starttls=cfg.smtp_starttls,
                username=cfg.smtp_username,
                password=cfg.smtp_password,
                sender=cfg.smtp_from,
                timeout=cfg.notify_timeout_seconds,
            )
        )
    else:
        log.warning("notifier: METER_SMTP_HOST is not set: no email is sent")
    bootstrap = _bootstrap(cfg)
    names = TopicNames.from_settings(cfg)
    config = NotifierConfig(
        timeout=cfg.notify_timeout_seconds,
        backoff=cfg.notify_backoff_seconds,
        give_up=timedelta(hours=cfg.notify_give_up_hours),
    )

    async def main() -> int:
        try:
            store = await OutboxStore.open(url)
        except Exception as exc:  # the driver's own errors: unreachable, refused, ...
            print(f"meter notifier: database {safe_url(url)}: {exc}", file=sys.stderr)
            return EXIT_PROBLEM
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        notifier = Notifier(
            store,
            SettingsBook(bootstrap, names.notification_settings, options),
            bootstrap,
            names.alerts,
            group_id(cfg.app_id),
            email=email,
            webhook=WebhookChannel(
                sealer, cfg.notify_timeout_seconds, cfg.notify_allow_private_webhooks
            ),
            config=config,
            client_options=options,
        )
        log.info(
            "notifier: %s (settings from %s) into %s as group %s",
            names.alerts,
            names.notification_settings,
            safe_url(url),
            notifier.group,
        )
        try:
            await serve(notifier, cfg.web_host, cfg.notifier_port, stop)
        except (SQLAlchemyError, KafkaError, OSError) as exc:
            # Nothing is lost: a restart resumes from the outbox and its positions.
            print(f"meter notifier: stopped: {exc!r}", file=sys.stderr)
            return EXIT_PROBLEM
        finally:
            await store.close()
        return EXIT_OK

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    from processor.dev.demo import run_demo

    return int(run_demo(tenants=args.tenants, rate=args.rate, seconds=args.seconds))


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
        "outcomes on credits.commands and every command's status (credits.commands, "
        "credits.command-results) (read_committed, group <METER_APP_ID>-ledger-sink) "
        "into SQLite (a file in METER_DATA_DIR) or PostgreSQL (METER_DATABASE_URL), "
        "exactly once, and serve the ledger, usage, CSV statement and command status "
        "queries on METER_SINK_PORT (default 6070).",
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
        "back-off. /metrics and /ready on METER_NOTIFIER_PORT (default 6071).",
    )
    notifier.set_defaults(func=cmd_notifier)

    demo = sub.add_parser(
        "demo",
        help="local broker + worker + traffic simulator + live view (what `make run` runs)",
        description="Start the local broker and one worker, play telephony and billing "
        "traffic, and show balances live until Ctrl-C; then stop everything started.",
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

    # Operator commands: account, add-funds, auto-recharge, schemas, simulate.
    from processor.ops import admin_commands as cli_admin

    cli_admin.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
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
