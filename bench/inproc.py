"""The worker's per-record path in process: CPU per record, no broker, no Faust.

    python -m bench.inproc [--records N] [--tenants N] [--round N]

Workload records (the bench's usage mix, 12 partitions, each on its tenant's partition)
go through a `Pipeline` on plain dicts, staged in rounds of 1,000 (`--round`: the
latency phase's rounds carry 100-500) and flushed to a publisher that keeps nothing,
with the worker's collector thresholds. It times what the full bench's drain cannot
resolve: a change of a few percent in staging, decided by alternating runs of the two
codes (the machine's speed drifts between runs). Prints the process CPU per record over
the usage records (the setup top-ups are not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta

from bench.workload import Event, Workload
from processor.config.settings import Settings
from processor.core.dedupe import DedupeWindow, dedupe_tenant
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.core.state import RechargePolicy
from processor.dev import simulator as sim
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.observability import metrics
from processor.worker.codec import dump_stored
from processor.worker.collector import Collector
from processor.worker.marks import MarkStore
from processor.worker.marks_log import MarksLog
from processor.worker.pipeline import Pipeline
from processor.worker.records import Changelog, Out, Record, Source

PARTITIONS = 12
ROUND = 1000


class _Discard:
    # As the worker's transactional publisher: a batch's outputs and state in one round.
    atomic = True

    async def publish(self, records: Sequence[Out]) -> None:
        return None


def _records(events: Iterable[Event], names: TopicNames) -> list[tuple[Source, Record]]:
    sources = {
        sim.COMMANDS: (Source.COMMANDS, names.commands),
        sim.USAGE_CALLS: (Source.CALLS, names.calls),
        sim.USAGE_CONFERENCING: (Source.CONFERENCING, names.conferencing),
    }
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for e in events:
        source, topic = sources[e.topic]
        partition = partition_for(e.key.decode(), PARTITIONS)
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append((source, Record(topic, partition, offset, e.key, e.value)))
    return out


def _run(pipeline: Pipeline, records: list[tuple[Source, Record]], size: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        for start in range(0, len(records), size):
            for source, rec in records[start : start + size]:
                pipeline.intake.stage(source, rec)
            loop.run_until_complete(pipeline.flusher.flush())
    finally:
        loop.close()


def measure(records: int, tenants: int, size: int = ROUND) -> float:
    """CPU seconds per usage record through staging and flushing, `size` records a
    round."""
    names = TopicNames.from_settings(Settings(_env_file=None))
    pipeline = Pipeline.build(
        load_rate_card(example_rate_card_path()),
        RechargePolicy(timeout=timedelta(hours=1)),
        DedupeWindow(7),
        {},
        # The worker's own marks store, and its marks records (processor/worker/marks.py).
        MarkStore(PARTITIONS),
        names,
        PARTITIONS,
        _Discard(),
        changelogs=(
            Changelog("accounts-changelog", dump_stored, str),
            MarksLog("dedupe-marks", dedupe_tenant),
        ),
    )
    work = Workload(tenants, seed=6, run_tag="inproc")
    setup = _records(work.setup(), names)
    usage = _records(work.usage(records), names)
    # The worker's collector policy, so that its passes cost here what they cost there;
    # given back afterwards, for a caller that goes on in this process.
    collector = Collector(metrics.GC_PAUSE)
    collector.install()
    try:
        _run(pipeline, setup, ROUND)
        started = time.process_time()
        _run(pipeline, usage, size)
        return (time.process_time() - started) / records
    finally:
        collector.uninstall()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--round", type=int, default=ROUND, help="records a round")
    args = parser.parse_args(argv)
    per_record = measure(args.records, args.tenants, args.round)
    print(
        f"{per_record * 1e6:.1f} us CPU per record ({args.records:,} records, "
        f"{args.round:,} a round)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
