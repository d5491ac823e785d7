"""The Kafka Streams yardstick of issue 19, against one worker and the ceiling, in one run.

    python -m bench.streams [--events N] [--order ceiling,streams,worker,ceiling]
                            [--latency] [--latency-rate R] [--commit-ms N]

Issue 19 asks the worker to overtake "a Kafka Streams application doing the same job".
This run puts one beside it (bench/streams_app/src/Meter.java: exactly-once v2, one
stream thread, 100 ms commits; what it does and leaves out is in its comment) on one
private broker: the same preloaded records as `make bench`, the ceiling loop of
`bench.measures` before and after, the Streams application's drain and one
`meter worker`'s, in the order given. Each drain is set against the mean of the ceiling
passes. With `--latency`, each drained side is then timed as `make bench` times the
worker: 10 s of new usage events at half its own drain rate (or at `--latency-rate`),
each event's ledger entry read back from that side's ledger topic. Needs Maven and a
JDK once, for the application's jars (`bench/streams_app/`). Prints a JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import measures, procstat
from bench.run import FULL_LATENCY_EVENTS, PARTITIONS, TENANTS, latency_ms, log, phase_events
from bench.worker import BenchWorker
from bench.workload import Workload, create_topics, preload
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.dev import simulator as sim
from processor.dev.kafka_local import LocalKafka, java_executable

APP = Path(__file__).resolve().parent / "streams_app"
STEPS = ("ceiling", "streams", "worker")


def build_app(build_dir: Path) -> str:
    """The application's jars fetched (once) and its source compiled; its classpath."""
    libs = APP / "target" / "libs"
    if not any(libs.glob("kafka-streams-*.jar")):
        mvn = shutil.which("mvn")
        if mvn is None:
            raise SystemExit("Maven (mvn) is needed once to fetch Kafka Streams' jars")
        # Maven's quiet output still writes colour codes to stdout, where the result goes.
        subprocess.run(
            [mvn, "-q", "-B", "-f", str(APP / "pom.xml"), "dependency:copy-dependencies"],
            check=True,
            stdout=sys.stderr,
        )
    classpath = f"{build_dir}:{libs}/*"
    # The JDK the broker runs on (JAVA_HOME, else PATH): its compiler sits beside it.
    javac = str(Path(java_executable()).resolve().with_name("javac"))
    subprocess.run(
        [javac, "-cp", f"{libs}/*", "-d", str(build_dir), str(APP / "src" / "Meter.java")],
        check=True,
    )
    return classpath


def app_command(classpath: str) -> list[str]:
    """The command that runs the application, before its arguments."""
    return [java_executable(), "-Xmx1g", "-cp", classpath, "Meter"]


def export_rate_card(path: Path) -> None:
    """The worker's example rate card as the application reads it: one rate a line."""
    card = load_rate_card(example_rate_card_path())
    lines = [
        f"{r.table.value}\t{r.prefix}\t{r.per_minute}\t{r.increment_seconds}"
        f"\t{r.minimum_seconds}\t{r.connect_fee}"
        for r in card.rates
    ]
    path.write_text("\n".join(lines) + "\n")


class Phase:
    """The latency phase after a drain (`measures.latency`), as `make bench` times the
    worker's: at half the drain's rate (or at `rate`), for 10 s, tailing the ledger
    topic given; its result, with the cores used, as JSON. Its events stay on the input
    topics, so a drain after it counts them too (`sent`)."""

    def __init__(self, bootstrap: str, prefix: str, work: Workload, broker_pid: int, rate: float):
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.work = work
        self.broker_pid = broker_pid
        self.rate = rate
        self.sent = 0

    async def time(self, drained_per_s: float, pid: int, ledger_topic: str) -> dict[str, Any]:
        rate = self.rate or drained_per_s / 2
        events = list(self.work.usage(phase_events(rate, FULL_LATENCY_EVENTS)))
        before = measures.cpu_mark(pid, self.broker_pid)
        lat = await measures.latency(
            self.bootstrap, self.prefix, ledger_topic, events, rate=rate, partitions=PARTITIONS
        )
        self.sent += len(events)
        cores = measures.cores_between(before, measures.cpu_mark(pid, self.broker_pid))
        # The process timed: the application's or the worker's.
        cores["process_cores"] = cores.pop("worker_cores")
        return {
            "rate": round(lat.rate, 1),
            "latency_ms": latency_ms(lat),
            "tracked": lat.tracked,
            "matched": lat.matched,
            "split": {**lat.split, **cores},
            "p99_ms_by_second": lat.p99_ms_by_second,
        }


async def streams_drain(
    app_cmd: Sequence[str],
    bootstrap: str,
    prefix: str,
    root: Path,
    events: int,
    commit_ms: int,
    phase: Phase | None,
) -> dict[str, Any]:
    """The application's drain of the preloaded usage records, as it times it: from its
    first record processed to the last, and over the second half (its JIT warm); then,
    given a phase, its latency. Its CPU is the whole process's up to the drain's end,
    start-up included (an upper bound), on all its threads: the JVM's clients and
    RocksDB run beside the stream thread."""
    card, state = root / "card.tsv", root / "streams-state"
    export_rate_card(card)
    state.mkdir()
    args = [bootstrap, prefix, str(events), str(card), str(state), str(commit_ms), "stay"]
    with (root / "streams.log").open("wb") as err:
        app = await asyncio.create_subprocess_exec(
            *app_cmd,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
        assert app.stdin is not None and app.stdout is not None
        try:
            line = b""
            async with asyncio.timeout(900):
                while not line.startswith(b"RESULT"):
                    line = await app.stdout.readline()
                    if not line:
                        tail = (root / "streams.log").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"the Streams application gave no result:\n{tail}")
            cpu = procstat.cpu_seconds(app.pid)
            _, _, rate, second_half = line.split()
            result: dict[str, Any] = {
                "events_per_s": float(rate),
                "second_half_events_per_s": float(second_half),
                "process_cpu_seconds_per_1000": round(cpu / events * 1000, 4),
                "commit_interval_ms": commit_ms,
            }
            if phase is not None:
                result["latency"] = await phase.time(float(rate), app.pid, prefix + "ks.ledger")
        finally:
            # Its standard input closed, the application closes its streams and exits.
            app.stdin.close()
            try:
                await asyncio.wait_for(app.wait(), 60)
            except TimeoutError:
                app.kill()
                await app.wait()
    return result


async def run(
    events: int,
    order: list[str],
    root: Path,
    app_cmd: Sequence[str],
    commit_ms: int = 100,
    latency: bool = False,
    latency_rate: float = 0.0,
) -> dict[str, Any]:
    broker = LocalKafka(root / "kafka")
    await broker.astart()
    broker_pid = broker.pid
    assert broker_pid is not None, "a started broker has a process"
    try:
        app_id = "bench-streams"
        prefix = f"{app_id}."
        inputs = [prefix + sim.USAGE_CALLS, prefix + sim.USAGE_CONFERENCING, prefix + sim.COMMANDS]
        passes = order.count("ceiling")
        outs = [f"ceiling-out-{i}" for i in range(passes)]
        changelogs = [f"{app_id}-accounts-changelog"]
        sinks = [prefix + "ks.ledger", prefix + "ks.recharge"]
        await create_topics(
            broker.bootstrap,
            [*inputs, *outs, *changelogs, *sinks],
            PARTITIONS,
            compact=frozenset(changelogs),
        )
        work = Workload(TENANTS, seed=6, run_tag="streams")
        setup = work.setup()
        await preload(broker.bootstrap, prefix, setup, PARTITIONS)
        await preload(broker.bootstrap, prefix, work.usage(events), PARTITIONS)
        phase = Phase(broker.bootstrap, prefix, work, broker_pid, latency_rate) if latency else None
        ceilings: list[float] = []
        result: dict[str, Any] = {"events": events, "order": order}
        for step in order:
            if step == "ceiling":
                out = outs[len(ceilings)]
                ceilings.append(await measures.ceiling(broker.bootstrap, inputs[:2], out, events))
            elif step == "streams":
                # The application counts every usage record, a phase's before it too.
                before = phase.sent if phase else 0
                result["streams"] = await streams_drain(
                    app_cmd, broker.bootstrap, prefix, root, events + before, commit_ms, phase
                )
            else:
                worker = BenchWorker(broker.bootstrap, app_id, prefix, PARTITIONS, root)
                try:
                    expected = len(setup) + events + (phase.sent if phase else 0)
                    drain = await measures.drain(
                        worker, expected, within=900.0, broker_pid=broker.pid
                    )
                    result["worker"] = {
                        "events_per_s": round(drain.events_per_s, 1),
                        "cpu_seconds_per_1000": round(drain.cpu_seconds_per_1000, 4),
                    }
                    if phase is not None:
                        result["worker"]["latency"] = await phase.time(
                            drain.events_per_s, worker.pid, prefix + "credits.ledger"
                        )
                finally:
                    worker.stop()
            log(f"{step}: {result.get(step, ceilings[-1:])}")
        mean = sum(ceilings) / len(ceilings)
        result["ceiling_events_per_s"] = [round(c, 1) for c in ceilings]
        for name in ("streams", "worker"):
            if name in result:
                result[name]["ratio_to_ceiling"] = round(result[name]["events_per_s"] / mean, 4)
        if "streams" in result and "worker" in result:
            result["worker_over_streams"] = round(
                result["worker"]["events_per_s"] / result["streams"]["events_per_s"], 4
            )
        result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return result
    finally:
        await broker.astop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--order", default="ceiling,streams,worker,ceiling")
    parser.add_argument(
        "--commit-ms", type=int, default=100, help="the application's commit interval"
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="after each drain, the latency phase of `make bench` at half its rate",
    )
    parser.add_argument(
        "--latency-rate", type=float, default=0.0, help="the phases at this rate instead"
    )
    args = parser.parse_args(argv)
    order = args.order.split(",")
    if any(step not in STEPS for step in order) or "ceiling" not in order:
        parser.error(f"--order: steps among {', '.join(STEPS)}, at least one ceiling")
    root = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    try:
        app_cmd = app_command(build_app(root / "classes"))
        result = asyncio.run(
            run(
                args.events,
                order,
                root,
                app_cmd,
                args.commit_ms,
                args.latency or bool(args.latency_rate),
                args.latency_rate,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
