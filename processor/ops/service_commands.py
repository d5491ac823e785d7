"""The `meter` commands that run a long-lived service: worker, ledger-sink, notifier, console."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from processor.config.settings import EventLoop, Settings
from processor.ops import compiled
from processor.ops.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, resolve_bootstrap
from processor.ops.processes import MAX_PROCESSES, run_processes


def cmd_worker(args: argparse.Namespace) -> int:
    processes: int = args.processes
    if not 1 <= processes <= MAX_PROCESSES:
        print(
            f"meter worker: --processes {processes}: must be 1 to {MAX_PROCESSES}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    cfg = Settings()
    # Re-run from the compiled build when it is current (no return); a supervisor's
    # children inherit it.
    argv = ["worker", "--advertise-host", args.advertise_host, "--processes", str(processes)]
    try:
        interpreted = compiled.enter(cfg.compiled, argv)
    except compiled.BuildMissing as exc:
        print(f"meter worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if interpreted is not None:
        print(f"meter worker: running interpreted: {interpreted}", file=sys.stderr)
    if processes > 1:
        return run_processes(
            processes, ["--advertise-host", args.advertise_host], cfg.web_port, cfg.data_dir
        )
    return _run_worker(args, cfg)


def _run_worker(args: argparse.Namespace, cfg: Settings) -> int:
    """One worker in this process (`--processes 1`, the default)."""
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.core.rating import RateCardError
    from processor.http.auth import access_from
    from processor.kafka.options import KafkaAccessError, KafkaConfigError, kafka_client_options
    from processor.kafka.topics import (
        TopicLayoutError,
        TopicNames,
        ensure_topics,
        marks_retention_ms,
        max_message_bytes,
    )
    from processor.observability import metrics
    from processor.observability.logs import logging_config
    from processor.worker.app import Broker, Meter
    from processor.worker.collector import Collector

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
    bootstrap = resolve_bootstrap(cfg)
    try:
        partitions = asyncio.run(
            ensure_topics(
                bootstrap,
                TopicNames.from_settings(cfg),
                cfg.partitions,
                cfg.replication_factor,
                ledger_retention_ms=cfg.ledger_retention_ms,
                marks_retention=marks_retention_ms(cfg.dedupe_days, cfg.max_future_seconds),
                **kafka_client_options(cfg),
            )
        )
    except (TopicLayoutError, KafkaConfigError, KafkaAccessError) as exc:
        print(f"meter worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    names = TopicNames.from_settings(cfg)
    # What the topics it writes take: no rejection or re-route is built too large, and
    # no record batch is filled past what its topic takes.
    limits = asyncio.run(max_message_bytes(bootstrap, names.written, **kafka_client_options(cfg)))
    # ensure_topics closed its loop; Faust's worker wants a current one of its own.
    asyncio.set_event_loop(new_event_loop(cfg.event_loop))
    # The collector's passes kept off the accounts (processor/worker/collector.py).
    collector = Collector(metrics.GC_PAUSE)
    collector.install()
    meter = Meter(
        cfg,
        card,
        Broker(bootstrap),
        partitions,
        web_host=args.advertise_host,
        limits=limits,
        collector=collector,
    )
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


def new_event_loop(kind: EventLoop) -> asyncio.AbstractEventLoop:
    """The worker's event loop, as `METER_EVENT_LOOP` asks, which `meter_event_loop_info`
    then reports (and `meter_record_path_info` whether the per-record path runs compiled).

    On uvloop the worker drains at the same rate and its p99 latency at half load was
    lower in most alternating runs (docs/performance.md, "The worker on uvloop").
    """
    from processor.observability import metrics

    if kind == "asyncio":
        loop = asyncio.new_event_loop()
    else:
        import uvloop

        loop = uvloop.new_event_loop()
    metrics.EVENT_LOOP.labels(loop=kind).set(1)
    metrics.RECORD_PATH.labels(
        path="compiled" if compiled.running_compiled() else "interpreted"
    ).set(1)
    return loop


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
    bootstrap = resolve_bootstrap(cfg)
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
                console_url=cfg.console_url,
            )
        )
    else:
        log.warning("notifier: METER_SMTP_HOST is not set: no email is sent")
    bootstrap = resolve_bootstrap(cfg)
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
