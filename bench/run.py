"""`make bench`: how fast credits-meter meters, next to the fastest plain Python loop.

    python -m bench.run [--quick] [--events N] [--out bench/results.json] [--profile S]
                        [--scaling] [--processes N] [--recovery-tenants N] [--marks N]

One run, one private broker (so the machine's drift hits both sides alike):
preload a usage mix over 10,000 tenants into 12-partition topics, measure the
ceiling loop on it, then let one real `meter worker` drain the same records, then
measure append-to-ledger latency at half the drain rate, then the ceiling loop again
(the drain is set against the mean of the two), then (item 4) the time a
worker holding N tenants takes to be ready, and (item 5, --scaling) the drain with
two workers, and (--processes N, issue 19) the drain with one `meter worker
--processes N`, and (--marks N, issue 19) what N dedupe marks cost in memory, on disk
and at a restart (bench/marks.py). Writes a JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import floor, marks, measures, recovery
from bench.worker import BenchWorker
from bench.workload import Workload, create_topics, preload
from processor.config.settings import Settings
from processor.dev import simulator as sim
from processor.dev.kafka_local import LocalKafka, ensure_jars
from processor.ops import compiled

PARTITIONS = 12
TENANTS = 10_000
# The 1,000,000: at the batch worker's drain rate (docs/performance.md) the
# whole `make bench` stays under 15 minutes on a 2-core machine; --events overrides it.
FULL_EVENTS = 1_000_000
# The latency phase lasts this long at half the drain rate (at least 5,000 events): a
# phase of a second or two (5,000 events, as until 2026-12-02) ends before a backlog
# can build, and its p99 flatters the worker (p99 45 ms in 1.5 s where 10 s gave
# 104-179 ms on the same code, docs/performance.md).
FULL_LATENCY_SECONDS = 10.0
FULL_LATENCY_EVENTS = 5_000
QUICK_EVENTS = 5_000
QUICK_LATENCY_EVENTS = 300
# The 1,000,000 (item 4): with the bulk changelog read a start takes ~22 s
# here, and writing the state ~45 s (docs/performance.md); --recovery-tenants.
FULL_RECOVERY_TENANTS = 1_000_000
QUICK_RECOVERY_TENANTS = 2_000
# The marks phase (bench/marks.py): the issue asks for at least 10 million marks (its
# timings are in docs/performance.md); --marks.
FULL_MARKS = 10_000_000
QUICK_MARKS = 100_000


def kafka_version() -> str:
    for jar in ensure_jars().glob("kafka_2.13-*.jar"):
        m = re.fullmatch(r"kafka_2\.13-(.+)\.jar", jar.name)
        if m:
            return m.group(1)
    return "unknown"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def worker_build() -> str:
    """Which per-record path the bench's `meter worker`s run (processor/ops/compiled.py),
    building it first when it is missing or older than the sources.

    After an edit under `processor/` the workers would otherwise run the interpreted
    path, which no user runs, and the whole run would measure that (docs/performance.md,
    "Two workers and `--processes 2` on the final code"). METER_COMPILED=off still runs
    the sources, on purpose.
    """
    mode = Settings().compiled
    root = compiled.source_root()
    build_dir = compiled.default_build_dir(root)
    found = compiled.status(root, build_dir)
    if mode != "off" and not found.usable:
        log(f"building the workers' compiled path first ({found.reason}), about a minute")
        compiled.build(root, build_dir)
    why = compiled.interpreted_reason(mode, root)
    return "compiled" if why is None else f"interpreted: {why}"


def start_profiler(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        log("py-spy not installed; no profile taken")
        return None
    # --nonblocking: sampling without pausing the worker, so the profile run's drain
    # rate stays close to an unprofiled one.
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
    cmd += ["--nonblocking", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def against_one_worker(
    result: dict[str, Any], events_per_s: float, drain: measures.Drain, ceiling: float
) -> None:
    """The gain, within this run: the same records, one worker against several; and
    the several against the ceiling, as `ratio_to_ceiling` is for one."""
    result["one_worker_events_per_s"] = round(drain.events_per_s, 1)
    result["ratio_to_one_worker"] = round(events_per_s / drain.events_per_s, 4)
    result["ratio_to_ceiling"] = round(events_per_s / ceiling, 4)


async def two_workers(
    bootstrap: str, app_id: str, prefix: str, root: Path, expected: int, broker_pid: int | None
) -> dict[str, Any]:
    """Item 5: two workers of a second deployment drain the same input topics.

    A new app id means a new consumer group and new changelogs, so the pair reads every
    input record from the start; the topic prefix is shared, so no second preload is
    needed (its outputs land beside the first deployment's, which is harmless here).
    """
    app2 = f"{app_id}-x2"
    changelogs = [f"{app2}-{table}-changelog" for table in ("accounts",)]
    await create_topics(bootstrap, changelogs, PARTITIONS, compact=frozenset(changelogs))
    pair = [BenchWorker(bootstrap, app2, prefix, PARTITIONS, root, index=i) for i in (1, 2)]
    try:
        result = await measures.drain(pair, expected, within=900.0, broker_pid=broker_pid)
    finally:
        for w in pair:
            w.stop()
    return {
        "two_workers_events_per_s": round(result.events_per_s, 1),
        "two_workers_cpu_seconds_per_1000": round(result.cpu_seconds_per_1000, 4),
        "broker_cpu_seconds_per_1000": _rounded(result.broker_cpu_seconds_per_1000),
        "machine_busy": _rounded(result.machine_busy),
        "events": result.events,
        "transactions_per_1000": _rounded(result.transactions_per_1000),
        # As `records_per_process`: the partitions, not the workers, split the work.
        "records_per_worker": [sum(w.each) for w in pair],
    }


async def processes_drain(
    bootstrap: str,
    app_id: str,
    prefix: str,
    root: Path,
    expected: int,
    broker_pid: int | None,
    processes: int,
) -> dict[str, Any]:
    """Issue 19: one `meter worker --processes N` of a third deployment drains the same
    input topics from the start, as `two_workers` does with two separate workers."""
    app = f"{app_id}-p{processes}"
    changelogs = [f"{app}-{table}-changelog" for table in ("accounts",)]
    await create_topics(bootstrap, changelogs, PARTITIONS, compact=frozenset(changelogs))
    worker = BenchWorker(bootstrap, app, prefix, PARTITIONS, root, index=3, processes=processes)
    try:
        result = await measures.drain(worker, expected, within=900.0, broker_pid=broker_pid)
    finally:
        worker.stop()
    return {
        "processes": processes,
        "events_per_s": round(result.events_per_s, 1),
        "cpu_seconds_per_1000": round(result.cpu_seconds_per_1000, 4),
        "broker_cpu_seconds_per_1000": _rounded(result.broker_cpu_seconds_per_1000),
        "machine_busy": _rounded(result.machine_busy),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "events": result.events,
        "transactions_per_1000": _rounded(result.transactions_per_1000),
        # The records each process handled: Kafka splits the work by partition, and
        # the hot tenants' partitions carry more (docs/performance.md, "Processes per host").
        "records_per_process": worker.each,
    }


def phase_events(rate: float, least: int) -> int:
    """How many events a latency phase sends: `FULL_LATENCY_SECONDS` at `rate`, and at
    least `least`."""
    return max(least, int(rate * FULL_LATENCY_SECONDS))


def latency_ms(lat: measures.Latency) -> dict[str, float]:
    return {
        "p50": round(lat.p50_ms, 2),
        "p99": round(lat.p99_ms, 2),
        "p999": round(lat.p999_ms, 2),
    }


def floor_result(relay: floor.Floor, worker: measures.Latency) -> dict[str, Any]:
    """The relay's latency in the same phase, and the worker's as a multiple of it."""
    lat = relay.latency
    return {
        "latency_ms": latency_ms(lat),
        "split": {**lat.split, **relay.cores},
        "tracked": lat.tracked,
        "matched": lat.matched,
        "p99_ms_by_second": lat.p99_ms_by_second,
        "worker_over_floor": {
            "p50": round(worker.p50_ms / lat.p50_ms, 2),
            "p99": round(worker.p99_ms / lat.p99_ms, 2),
        },
    }


async def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    latency_events = QUICK_LATENCY_EVENTS if args.quick else FULL_LATENCY_EVENTS
    walls: dict[str, float] = {}
    t = time.perf_counter()

    build = worker_build()
    log(f"workers run the {build} per-record path")
    broker = LocalKafka(root / "kafka")
    await broker.astart()
    walls["broker_start"] = time.perf_counter() - t
    broker_pid = broker.pid
    assert broker_pid is not None, "a started broker has a process"
    worker: BenchWorker | None = None
    try:
        tag = uuid.uuid4().hex[:6]
        app_id = f"bench-{tag}"
        prefix = f"{app_id}."
        inputs = [prefix + sim.USAGE_CALLS, prefix + sim.USAGE_CONFERENCING, prefix + sim.COMMANDS]
        # One output topic for each pass of the ceiling loop.
        ceiling_outs = [f"bench-ceiling-out-{tag}", f"bench-ceiling-out-{tag}-after"]
        # The worker's changelogs are created up front as well. A first worker start
        # on preloaded topics otherwise races its own topic creation: Faust sees the
        # changelog with 0 partitions and every record fails with PartitionsMismatch
        # (found by this harness; see docs/performance.md).
        changelogs = [f"{app_id}-{table}-changelog" for table in ("accounts",)]
        await create_topics(
            broker.bootstrap,
            [*inputs, *ceiling_outs, *changelogs],
            PARTITIONS,
            compact=frozenset(changelogs),
        )

        t = time.perf_counter()
        work = Workload(args.tenants, seed=6, run_tag=tag)
        setup = work.setup()
        await preload(broker.bootstrap, prefix, setup, PARTITIONS)
        counts = await preload(broker.bootstrap, prefix, work.usage(events), PARTITIONS)
        walls["preload"] = time.perf_counter() - t
        log(f"preloaded {len(setup)} commands + {events} usage events {counts}")

        t = time.perf_counter()
        before = await measures.ceiling(broker.bootstrap, inputs[:2], ceiling_outs[0], events)
        walls["ceiling"] = time.perf_counter() - t
        log(f"ceiling: {before:,.0f} events/s")

        worker = BenchWorker(broker.bootstrap, app_id, prefix, PARTITIONS, root)
        profiler: subprocess.Popen[bytes] | None = None
        on_start = None
        if args.profile:
            out = Path(args.profile_out)

            def on_start(pid: int) -> None:
                nonlocal profiler
                profiler = start_profiler(pid, args.profile, out)

        t = time.perf_counter()
        drain = await measures.drain(
            worker,
            len(setup) + events,
            within=args.drain_timeout,
            on_start=on_start,
            broker_pid=broker.pid,
        )
        walls["drain"] = time.perf_counter() - t
        if profiler is not None:
            profiler.wait(args.profile + 30)
        log(f"drain: {drain}")

        t = time.perf_counter()
        rate = args.latency_rate or max(1.0, drain.events_per_s / 2)
        if not args.quick:
            latency_events = phase_events(rate, latency_events)
        lat_events = list(work.usage(latency_events))
        tx0 = await measures.transactions(worker)
        cpu0 = measures.cpu_mark(worker.pid, broker_pid)
        lat = await measures.latency(
            broker.bootstrap,
            prefix,
            prefix + "credits.ledger",
            lat_events,
            rate=rate,
            partitions=PARTITIONS,
        )
        walls["latency"] = time.perf_counter() - t
        # Where the machine's two cores went meanwhile: the worker shares them with the
        # broker and with this process's sends and reads.
        lat.split.update(measures.cores_between(cpu0, measures.cpu_mark(worker.pid, broker_pid)))
        lat.split["transactions_per_s"] = round(
            (await measures.transactions(worker) - tx0) / walls["latency"], 1
        )
        log(f"latency: {lat}")
        worker.stop()

        # The ceiling loop again, now that the worker is stopped. The machine's speed
        # drifts within a run as well as between runs (docs/performance.md, "The
        # ceiling on either side of the drain"), so the drain between the two passes
        # is set against their mean, and both are reported.
        t = time.perf_counter()
        after = await measures.ceiling(broker.bootstrap, inputs[:2], ceiling_outs[1], events)
        walls["ceiling_after"] = time.perf_counter() - t
        ceiling = (before + after) / 2
        log(f"ceiling after: {after:,.0f} events/s; mean {ceiling:,.0f}")

        # The same phase with a relay in place of the worker (bench/floor.py), after a
        # warm-up pass of a third of it: what the machine gives any transactional
        # consumer at this rate, in this run.
        t = time.perf_counter()
        floors = await floor.measure(
            broker.bootstrap,
            prefix,
            [list(work.usage(max(1, len(lat_events) // 3))), list(work.usage(len(lat_events)))],
            rate,
            broker_pid,
        )
        lat_floor = floors[-1]
        walls["latency_floor"] = time.perf_counter() - t
        log(f"latency floor: {lat_floor}")

        t = time.perf_counter()
        rec_tenants = args.recovery_tenants
        if rec_tenants is None:
            rec_tenants = QUICK_RECOVERY_TENANTS if args.quick else FULL_RECOVERY_TENANTS
        restart = await recovery.measure(broker.bootstrap, tag, rec_tenants, PARTITIONS, root)
        walls["recovery"] = time.perf_counter() - t
        log(f"recovery: {restart}")

        marks_result: dict[str, Any] | None = None
        n_marks = args.marks
        if n_marks is None:
            n_marks = QUICK_MARKS if args.quick else FULL_MARKS
        if n_marks:
            t = time.perf_counter()
            marks_result = await marks.measure(
                broker.bootstrap, tag, n_marks, PARTITIONS, broker.kafka_data_dir
            )
            walls["marks"] = time.perf_counter() - t
            log(f"marks: {marks_result}")

        scaling: dict[str, Any] | None = None
        if args.scaling:
            t = time.perf_counter()
            scaling = await two_workers(
                broker.bootstrap,
                app_id,
                prefix,
                root,
                len(setup) + events + latency_events,
                broker.pid,
            )
            against_one_worker(scaling, scaling["two_workers_events_per_s"], drain, ceiling)
            walls["scaling"] = time.perf_counter() - t
            log(f"scaling: {scaling}")

        processes: dict[str, Any] | None = None
        if args.processes > 1:
            t = time.perf_counter()
            processes = await processes_drain(
                broker.bootstrap,
                app_id,
                prefix,
                root,
                len(setup) + events + latency_events,
                broker.pid,
                args.processes,
            )
            against_one_worker(processes, processes["events_per_s"], drain, ceiling)
            walls["processes"] = time.perf_counter() - t
            log(f"processes: {processes}")
    finally:
        if worker is not None:
            worker.stop()
        await broker.astop()

    return {
        "ceiling_events_per_s": round(ceiling, 1),
        # The two passes the mean above is of, before the drain and after the latency
        # phase, and the drain against each.
        "ceiling": {
            "before_events_per_s": round(before, 1),
            "after_events_per_s": round(after, 1),
            "ratio_to_before": round(drain.events_per_s / before, 4),
            "ratio_to_after": round(drain.events_per_s / after, 4),
        },
        "drain_events_per_s": round(drain.events_per_s, 1),
        "ratio_to_ceiling": round(drain.events_per_s / ceiling, 4),
        "cpu_seconds_per_1000": round(drain.cpu_seconds_per_1000, 4),
        "broker_cpu_seconds_per_1000": _rounded(drain.broker_cpu_seconds_per_1000),
        "machine_busy": _rounded(drain.machine_busy),
        "peak_rss_mb": round(drain.peak_rss_mb, 1),
        "latency_ms": {**latency_ms(lat), "max": round(lat.max_ms, 2)},
        "latency": {k: v for k, v in asdict(lat).items() if not k.endswith("_ms")},
        "latency_floor": floor_result(lat_floor, lat),
        "drain": asdict(drain),
        "events": events,
        "setup_commands": len(setup),
        "topic_counts": counts,
        "tenants": args.tenants,
        "partitions": PARTITIONS,
        "workers": 1,
        "processing_guarantee": "kafka_transactions",
        "kafka_version": kafka_version(),
        "python": sys.version.split()[0],
        "worker_build": build,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "recovery": restart,
        "marks": marks_result,
        "scaling": scaling,
        "processes": processes,
        "wall_seconds": {k: round(v, 1) for k, v in walls.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: does it still run")
    parser.add_argument("--events", type=int, help="usage events to preload")
    parser.add_argument("--tenants", type=int, default=TENANTS)
    parser.add_argument("--out", default="bench/results.json")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--profile", type=int, default=0, help="py-spy the drain for S seconds")
    parser.add_argument("--profile-out", default="bench/profile.raw.txt")
    parser.add_argument(
        "--scaling", action="store_true", help="also drain with two workers (item 5)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="also drain with one `meter worker --processes N` (issue 19), N > 1",
    )
    parser.add_argument(
        "--recovery-tenants", type=int, help="tenants in the restart measurement (item 4)"
    )
    parser.add_argument(
        "--marks", type=int, help="dedupe marks in the marks phase (issue 19), 0 to skip"
    )
    parser.add_argument(
        "--latency-rate", type=float, help="events/s in the latency phase (half the drain's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir (logs, data)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="meter-bench-"))
    try:
        result = asyncio.run(bench(args, root))
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)
    result["wall_seconds"]["total"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
