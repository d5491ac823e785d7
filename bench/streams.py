"""The Kafka Streams yardstick of issue 19, against one worker and the ceiling, in one run.

    python -m bench.streams [--events N] [--order ceiling,streams,worker,ceiling]

Issue 19 asks the worker to overtake "a Kafka Streams application doing the same job".
This run puts one beside it (bench/streams_app/src/Meter.java: exactly-once v2, one
stream thread, 100 ms commits; what it does and leaves out is in its comment) on one
private broker: the same preloaded records as `make bench`, the ceiling loop of
`bench.measures` before and after, the Streams application's drain and one
`meter worker`'s, in the order given. Each drain is set against the mean of the ceiling
passes. Needs Maven and a JDK once, for the application's jars (`bench/streams_app/`).
Prints a JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import measures
from bench.run import PARTITIONS, TENANTS, log
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


def export_rate_card(path: Path) -> None:
    """The worker's example rate card as the application reads it: one rate a line."""
    card = load_rate_card(example_rate_card_path())
    lines = [
        f"{r.table.value}\t{r.prefix}\t{r.per_minute}\t{r.increment_seconds}"
        f"\t{r.minimum_seconds}\t{r.connect_fee}"
        for r in card.rates
    ]
    path.write_text("\n".join(lines) + "\n")


def streams_drain(
    classpath: str, bootstrap: str, prefix: str, root: Path, events: int
) -> dict[str, float]:
    """The application's drain of the preloaded usage records, as it times it: from its
    first record processed to the last, and over the second half (its JIT warm). Its CPU
    is the whole process's, start-up and shutdown included (an upper bound), on all its
    threads: the JVM's clients and RocksDB run beside the stream thread."""
    card, state = root / "card.tsv", root / "streams-state"
    export_rate_card(card)
    state.mkdir()
    cmd = [java_executable(), "-Xmx1g", "-cp", classpath, "Meter", bootstrap, prefix]
    cmd.append(str(events))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [*cmd, str(card), str(state)], capture_output=True, text=True, timeout=900, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = [line.split() for line in out.stdout.splitlines() if line.startswith("RESULT")]
    if not found:
        raise RuntimeError(f"the Streams application gave no result:\n{out.stderr[-3000:]}")
    _, _, rate, second_half = found[0]
    return {
        "events_per_s": float(rate),
        "second_half_events_per_s": float(second_half),
        "process_cpu_seconds_per_1000": round(cpu / events * 1000, 4),
    }


async def run(events: int, order: list[str], root: Path, classpath: str) -> dict[str, Any]:
    broker = LocalKafka(root / "kafka")
    await broker.astart()
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
        ceilings: list[float] = []
        result: dict[str, Any] = {"events": events, "order": order}
        for step in order:
            if step == "ceiling":
                out = outs[len(ceilings)]
                ceilings.append(await measures.ceiling(broker.bootstrap, inputs[:2], out, events))
            elif step == "streams":
                result["streams"] = streams_drain(classpath, broker.bootstrap, prefix, root, events)
            else:
                worker = BenchWorker(broker.bootstrap, app_id, prefix, PARTITIONS, root)
                try:
                    drain = await measures.drain(
                        worker, len(setup) + events, within=900.0, broker_pid=broker.pid
                    )
                finally:
                    worker.stop()
                result["worker"] = {
                    "events_per_s": round(drain.events_per_s, 1),
                    "cpu_seconds_per_1000": round(drain.cpu_seconds_per_1000, 4),
                }
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
    args = parser.parse_args(argv)
    order = args.order.split(",")
    if any(step not in STEPS for step in order) or "ceiling" not in order:
        parser.error(f"--order: steps among {', '.join(STEPS)}, at least one ceiling")
    root = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    try:
        classpath = build_app(root / "classes")
        result = asyncio.run(run(args.events, order, root, classpath))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
