"""`python -m processor.dev.simulator`: the simulator's options and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from processor.dev.simulator.config import SimulatorConfig
from processor.dev.simulator.runner import Simulator


def build_arg_parser(*, add_help: bool = True) -> argparse.ArgumentParser:
    """The simulator's options; ``add_help=False`` to embed them in another CLI."""
    p = argparse.ArgumentParser(
        prog="python -m processor.dev.simulator",
        description="Simulated telephony, conferencing, admins and billing for credits-meter.",
        add_help=add_help,
    )
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    p.add_argument(
        "--topic-prefix",
        default=os.environ.get("METER_TOPIC_PREFIX", ""),
        help="prefix of every topic name (default: $METER_TOPIC_PREFIX)",
    )
    p.add_argument("--tenants", type=int, default=36)
    p.add_argument("--rate", type=float, default=20.0, help="usage events per second")
    p.add_argument("--duplicate-ratio", type=float, default=0.03)
    p.add_argument("--failure-ratio", type=float, default=0.15)
    p.add_argument("--garbage-ratio", type=float, default=0.01)
    p.add_argument("--billing-delay", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds; default: forever")
    p.add_argument("--currency", default="USD")
    p.add_argument("--no-setup", action="store_true", help="skip the initial funds/settings")
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="place calls for exhausted tenants too (telephony that ignores credits.alerts)",
    )
    p.add_argument(
        "--topic-wait",
        type=float,
        default=60.0,
        help="seconds to wait for the topics to exist; <0 disables the check",
    )
    return p


def config_from_args(args: argparse.Namespace, **overrides: Any) -> SimulatorConfig:
    config = SimulatorConfig(
        bootstrap=args.bootstrap,
        topic_prefix=args.topic_prefix,
        tenants=args.tenants,
        rate_per_second=args.rate,
        duplicate_ratio=args.duplicate_ratio,
        failure_ratio=args.failure_ratio,
        garbage_ratio=args.garbage_ratio,
        billing_delay_seconds=args.billing_delay,
        seed=args.seed,
        duration_seconds=args.duration,
        currency=args.currency,
        setup=not args.no_setup,
        gate_calls=not args.no_gate,
        topic_wait_seconds=None if args.topic_wait < 0 else args.topic_wait,
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def run_until_signalled(main_coro: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` that also treats SIGTERM like Ctrl-C: the main task is
    cancelled, so clients are closed and the producer flushed when a supervisor
    (``make run``, a test harness) stops the process."""

    async def guarded() -> None:
        task = asyncio.current_task()
        if task is not None:
            with contextlib.suppress(NotImplementedError):  # no signals on Windows loops
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main_coro

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(guarded())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    simulator = Simulator(config_from_args(args, stats_log_seconds=10.0))
    try:
        run_until_signalled(simulator.run())
    except RuntimeError as exc:  # setup failures: say why instead of a traceback
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    print(simulator.stats.summary())
    return 0
