"""The `meter` commands that are not a service: kafka, reconcile, replay-rejected, token, demo."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from processor.config.settings import Settings
from processor.ops.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, resolve_bootstrap
from processor.ops.output import emit


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
    from processor.core.dedupe import DedupeWindow
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.http.auth import client_headers
    from processor.kafka.options import kafka_client_options
    from processor.kafka.topics import TopicNames
    from processor.ops.reconcile import reconcile

    cfg = Settings()
    card = load_rate_card(cfg.rate_card or example_rate_card_path())
    report = asyncio.run(
        reconcile(
            resolve_bootstrap(cfg),
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
            resolve_bootstrap(cfg),
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


def cmd_demo(args: argparse.Namespace) -> int:
    from processor.dev.demo import run_demo

    return int(run_demo(tenants=args.tenants, rate=args.rate, seconds=args.seconds))
