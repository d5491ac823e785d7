"""`python -m processor.dev.liveview`: its options and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from processor.dev.liveview.terminal import LiveView, LiveViewConfig
from processor.dev.simulator import (
    Simulator,
    build_arg_parser,
    config_from_args,
    run_until_signalled,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m processor.dev.liveview",
        description="Live view of credits-meter's outputs; --simulate also runs the simulator.",
        parents=[build_arg_parser(add_help=False)],
    )
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws")
    p.add_argument("--max-rows", type=int, default=20, help="tenants shown")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="run the traffic simulator in this process and show its counters",
    )
    p.add_argument(
        "--log-file",
        default=os.environ.get("METER_LIVEVIEW_LOG"),
        help="log here (logging to the terminal would tear the screen)",
    )
    return p


async def _run(args: argparse.Namespace) -> None:
    view_config = LiveViewConfig(
        bootstrap=args.bootstrap,
        topic_prefix=args.topic_prefix,
        refresh_seconds=args.refresh,
        max_rows=args.max_rows,
    )
    if not args.simulate:
        await LiveView(view_config).run()
        return
    simulator = Simulator(config_from_args(args))
    view = LiveView(view_config, simulator.stats)
    async with asyncio.TaskGroup() as group:
        group.create_task(simulator.run())
        group.create_task(view.run())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_file:
        logging.basicConfig(
            filename=args.log_file,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
    else:
        logging.basicConfig(level=logging.ERROR)
    status = 0
    try:
        run_until_signalled(_run(args))
    except* RuntimeError as group:
        # Setup failures (topics never created): say why instead of a traceback.
        for exc in group.exceptions:
            print(f"liveview: {exc}", file=sys.stderr)
        status = 1
    return status
