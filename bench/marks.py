"""The marks phase of `make bench`: what dedupe marks cost a worker, at millions.

N marks (one per applied event of a week's window, over 100,000 tenants) are written
to a marks topic as the worker's flusher writes them: one record per partition per
round of 2,000 events (processor/worker/marks_log.py). A fresh process (a restart)
then reads them back as a worker does at assignment, into the worker's store
(processor/worker/marks.py), and reports:

- bytes per mark in memory: the reading process's RSS growth over the read / N;
- bytes per mark on disk: the topic's log segments in the broker's log dir / N;
- restart seconds: the read back, from the consumer's start to the last mark held;
- look-up microseconds: `store.get` of a dedupe key, one held and one not.

And, in another fresh process, the same N marks grown one `put` at a time into an empty
store, as a live worker grows them over its first week (`grow_marks`): the process's RSS
growth / marks held (`bytes_per_mark_grown`), the put's and look-up's microseconds, and
the longest put and sweep slice in CPU time (a pause of the worker's loop). The clock
moves as at `--grown-rate` events per second (100: a week is 60 million marks), marks
expire a week after their event, and the marks sweep runs as the worker's timer runs it
(`SWEEP_ROUNDS`), so a rate whose week holds fewer than N marks measures a full window
being swept.

`python -m bench.marks --marks 10000000` on a private broker; `python -m bench.run`
runs it as a phase (`--marks N`, 0 to skip). `python -m bench.marks --grown-only
--marks N` measures the grown store alone, without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import procstat
from bench.standalone import print_on_private_broker
from bench.workload import producer
from processor.core.dedupe import dedupe_key, dedupe_tenant
from processor.core.stored import Mark, Position
from processor.kafka.changelog import ChangelogReader
from processor.kafka.routing import partition_for
from processor.kafka.topics import marks_retention_ms
from processor.worker.marks import Budget, MarkStore
from processor.worker.marks_log import MarksLog, marks_records, recover_marks
from processor.worker.timer import SWEEP_MARKS, SWEEP_SHARDS, SWEEP_SLICES, sweep_grace

TENANTS = 100_000
ROUND = 2_000
WEEK = 7 * 86_400
LOOKUPS = 100_000
# A worker taking a modest 100 events/s: a week is 60 million marks (issue 19).
GROWN_RATE = 100.0
# The grown store's clock moves per round; the sweep runs every this many rounds, as
# many timer turns as the worker's timer (METER_TIMER_INTERVAL_SECONDS' default) would
# have run in that time, stopping once a pass finds nothing more due (the clock stands
# still meanwhile): a pass over every shard per turn would cost the bench more than the
# puts.
SWEEP_ROUNDS = 10
TIMER_SECONDS = 5.0


def _key(i: int) -> str:
    return dedupe_key(f"t{i % TENANTS:07d}", "call", f"ev-{i:010d}")


def _marks(n: int, now: int, parts: int) -> Iterator[tuple[str, Mark]]:
    # Spread over the window as a week of steady traffic leaves them: the oldest
    # expires soon, the newest in a week.
    for i in range(n):
        expires = now + 3600 + (WEEK * i) // max(n, 1)
        yield _key(i), Mark(expires, Position(f"usage.calls:{i % parts}", 1_000_000 + i // parts))


async def write_marks(bootstrap: str, topic: str, n: int, parts: int, now: int) -> float:
    """Write `n` marks as the flusher does, round by round; returns the seconds taken."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = {"cleanup.policy": "delete", "retention.ms": str(marks_retention_ms(7, 300))}
        await admin.create_topics([NewTopic(topic, parts, 1, topic_configs=configs)])
    finally:
        await admin.close()
    log = MarksLog(topic, dedupe_tenant)
    began = time.perf_counter()
    prod = producer(bootstrap)
    await prod.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        batch: list[tuple[str, Mark | None]] = []
        for item in _marks(n, now, parts):
            batch.append(item)
            if len(batch) == ROUND:
                for partition, value in marks_records(log, batch, parts):
                    pending.append(await prod.send(topic, value, partition=partition))
                batch = []
            if len(pending) >= 2_000:
                await asyncio.gather(*pending)
                pending.clear()
        for partition, value in marks_records(log, batch, parts):
            pending.append(await prod.send(topic, value, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await prod.stop()
    return time.perf_counter() - began


async def read_marks(bootstrap: str, topic: str, n: int, parts: int, now: int) -> dict[str, Any]:
    """In a fresh process: read the marks back as a worker does, and measure."""
    store = MarkStore(parts)
    reader = ChangelogReader(bootstrap, {}, within=600.0)
    # The consumer's own buffers and the imports are in the baseline, not the marks.
    await reader.end_offsets([f"{topic}:0"])
    gc.collect()
    before = procstat.rss_mb(os.getpid())
    began = time.perf_counter()
    held = await recover_marks(reader, store, set(range(parts)), topic, None, now=now)
    seconds = time.perf_counter() - began
    gc.collect()
    after = procstat.rss_mb(os.getpid())
    # What the read left freed but still mapped (glibc keeps freed heap until trimmed).
    trimmed = after
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = procstat.rss_mb(os.getpid())
    hit_us, miss_us = _lookups(store, 0, n)
    return {
        "held": held,
        "restart_seconds": round(seconds, 1),
        "rss_mb_before": round(before, 1),
        "rss_mb_after": round(after, 1),
        "bytes_per_mark_memory": round((after - before) * 1024 * 1024 / max(held, 1), 1),
        "bytes_per_mark_memory_trimmed": round((trimmed - before) * 1024 * 1024 / max(held, 1), 1),
        "bytes_per_mark_estimated": round(store.nbytes() / max(held, 1), 1),
        "lookup_us_hit": round(hit_us, 2),
        "lookup_us_miss": round(miss_us, 2),
    }


def _lookups(store: MarkStore, first: int, n: int) -> tuple[float, float]:
    """Microseconds of `store.get`: of keys held (marks `first` to `n`), and of keys
    never held."""
    rng = random.Random(7)
    hits = [_key(rng.randrange(first, n)) for _ in range(LOOKUPS)] if n > first else []
    misses = [_key(n + i) for i in range(LOOKUPS)]
    get = store.get
    # A worker has computed a tenant's partition (cached) before it looks a mark up:
    # one pass to warm that cache, then the measured one.
    for k in hits + misses:
        get(k)
    t = time.perf_counter()
    found = sum(1 for k in hits if get(k) is not None)
    hit_us = (time.perf_counter() - t) / max(len(hits), 1) * 1e6
    t = time.perf_counter()
    wrong = sum(1 for k in misses if get(k) is not None)
    miss_us = (time.perf_counter() - t) / len(misses) * 1e6
    if found != len(hits) or wrong:
        raise AssertionError(f"look-ups: {found}/{len(hits)} found, {wrong} false")
    return hit_us, miss_us


def grow_marks(n: int, parts: int, rate: float, now: int) -> dict[str, Any]:
    """In a fresh process: `n` marks put one at a time into an empty store, the sweep
    running as the worker's timer runs it, and measure (the module's docstring)."""
    store = MarkStore(parts)
    grace = sweep_grace(WEEK)
    # The tenants' partitions are cached by the worker's routing, not held by the
    # marks: computed before the baseline.
    for t in range(TENANTS):
        partition_for(f"t{t:07d}", parts)
    gc.collect()
    before = procstat.rss_mb(os.getpid())
    put_seconds = sweep_seconds = 0.0
    put_max = sweep_max = 0.0
    clock = time.perf_counter
    # A put the collector ran within is the collector's pause, not the store's: counted
    # apart, and left out of the longest put.
    passes = [0]

    def collected(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            passes[0] += 1

    gc.callbacks.append(collected)
    collected_in_puts = 0
    batch: list[tuple[str, Mark]] = []
    at = now
    slices = 0
    for start in range(0, n, ROUND):
        at = now + int(start / rate)
        # The round's marks are made outside the timed puts.
        batch = [
            (
                _key(i),
                Mark(now + int(i / rate) + WEEK, Position(f"usage.calls:{i % parts}", i // parts)),
            )
            for i in range(start, min(start + ROUND, n))
        ]
        for k, mark in batch:
            seen = passes[0]
            cpu = time.thread_time()
            began = clock()
            store[k] = mark
            put_seconds += clock() - began
            # The longest in CPU time: on a shared machine a put may wait for a core.
            if passes[0] == seen:
                put_max = max(put_max, time.thread_time() - cpu)
            else:
                collected_in_puts += 1
        if (start // ROUND + 1) % SWEEP_ROUNDS and start + ROUND < n:
            continue
        # The timer's turns (RechargeTimer.sweep_seen) of the time these rounds took,
        # each slices until one ends with budget to spare; each slice is a pause of the
        # loop. The clock stands still meanwhile: once every shard has been looked at
        # with budget to spare, the rest would find nothing due.
        turns = max(1, math.ceil(SWEEP_ROUNDS * ROUND / rate / TIMER_SECONDS))
        shards = sum(len(table.data) for table in store.tables.values())
        looked = 0
        for _ in range(turns):
            for _ in range(SWEEP_SLICES):
                budget = Budget(SWEEP_SHARDS, SWEEP_MARKS)
                cpu = time.thread_time()
                store.sweep(at, budget, grace)
                took = time.thread_time() - cpu
                sweep_seconds += took
                sweep_max = max(sweep_max, took)
                slices += 1
                looked += SWEEP_SHARDS - budget.shards
                if budget.shards > 0 and budget.marks > 0:
                    break
            if looked >= shards:
                break
    gc.callbacks.remove(collected)
    del batch
    gc.collect()
    after = procstat.rss_mb(os.getpid())
    held = len(store)
    # Look-ups of marks not yet expired at the last sweep (older ones may be gone).
    first = max(0, int((at - now - WEEK) * rate))
    while first < n and now + int(first / rate) + WEEK <= at:
        first += 1
    hit_us, miss_us = _lookups(store, first, n)
    return {
        "grown_marks_put": n,
        "grown_marks_held": held,
        "grown_rate": rate,
        "bytes_per_mark_grown": round((after - before) * 1024 * 1024 / max(held, 1), 1),
        "bytes_per_mark_grown_estimated": round(store.nbytes() / max(held, 1), 1),
        "grown_put_us": round(put_seconds / max(n, 1) * 1e6, 2),
        "grown_put_max_cpu_ms": round(put_max * 1e3, 2),
        "grown_puts_with_a_collection": collected_in_puts,
        "grown_sweep_slices": slices,
        "grown_sweep_slice_cpu_ms_mean": round(sweep_seconds / max(slices, 1) * 1e3, 2),
        "grown_sweep_slice_max_cpu_ms": round(sweep_max * 1e3, 2),
        "grown_lookup_us_hit": round(hit_us, 2),
        "grown_lookup_us_miss": round(miss_us, 2),
    }


async def grow_in_fresh_process(n: int, parts: int, rate: float, now: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.marks", "--grow", "--marks", str(n)]
    argv += ["--partitions", str(parts), "--now", str(now), "--grown-rate", str(rate)]
    out = await asyncio.to_thread(
        subprocess.run, argv, check=True, capture_output=True, text=True, timeout=3600
    )
    grown: dict[str, Any] = json.loads(out.stdout)
    return grown


def disk_bytes(log_dir: Path | None, topic: str) -> int | None:
    if log_dir is None:
        return None
    return sum(
        f.stat().st_size
        for d in log_dir.glob(f"{topic}-*")
        if d.is_dir()
        for f in d.iterdir()
        if f.suffix == ".log"
    )


async def measure(
    bootstrap: str,
    tag: str,
    n: int,
    parts: int,
    log_dir: Path | None,
    grown_rate: float = GROWN_RATE,
) -> dict[str, Any]:
    """The marks phase: write `n` marks, read them back in a fresh process, and grow
    `n` one at a time in another."""
    topic = f"bench-marks-{tag}-dedupe-marks"
    now = int(time.time())
    written = await write_marks(bootstrap, topic, n, parts, now)
    argv = [sys.executable, "-m", "bench.marks", "--read", topic, "--bootstrap", bootstrap]
    argv += ["--marks", str(n), "--partitions", str(parts), "--now", str(now)]
    out = await asyncio.to_thread(
        subprocess.run, argv, check=True, capture_output=True, text=True, timeout=1800
    )
    read = json.loads(out.stdout)
    size = disk_bytes(log_dir, topic)
    grown = await grow_in_fresh_process(n, parts, grown_rate, now)
    return {
        "marks": n,
        "write_seconds": round(written, 1),
        **read,
        "bytes_per_mark_disk": None if size is None else round(size / max(n, 1), 1),
        **grown,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.marks --marks N`, on a private broker."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.marks", description=__doc__)
    parser.add_argument("--marks", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument(
        "--grown-rate",
        type=float,
        default=GROWN_RATE,
        help="events per second of the grown store's clock (marks expire a week on)",
    )
    parser.add_argument(
        "--grown-only", action="store_true", help="only the grown store, without a broker"
    )
    # The grown store's half, run by `measure` in a fresh process.
    parser.add_argument("--grow", action="store_true", help=argparse.SUPPRESS)
    # The restart's half, run by `measure` in a fresh process.
    parser.add_argument("--read", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--now", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.grow or args.grown_only:
        now = int(time.time()) if args.now is None else args.now
        print(json.dumps(grow_marks(args.marks, args.partitions, args.grown_rate, now)))
        return 0

    if args.read:
        result = asyncio.run(
            read_marks(args.bootstrap, args.read, args.marks, args.partitions, args.now)
        )
        print(json.dumps(result))
        return 0

    return print_on_private_broker(
        "meter-marks-",
        lambda broker, tag, _root: measure(
            broker.bootstrap,
            tag,
            args.marks,
            args.partitions,
            broker.kafka_data_dir,
            args.grown_rate,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
