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

`python -m bench.marks --marks 10000000` on a private broker; `python -m bench.run`
runs it as a phase (`--marks N`, 0 to skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
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
from processor.kafka.topics import marks_retention_ms
from processor.worker.marks import MarkStore
from processor.worker.marks_log import MarksLog, marks_records, recover_marks

TENANTS = 100_000
ROUND = 2_000
WEEK = 7 * 86_400
LOOKUPS = 100_000


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
    rng = random.Random(7)
    hits = [_key(rng.randrange(n)) for _ in range(LOOKUPS)] if n else []
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
    bootstrap: str, tag: str, n: int, parts: int, log_dir: Path | None
) -> dict[str, Any]:
    """The marks phase: write `n` marks, read them back in a fresh process."""
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
    return {
        "marks": n,
        "write_seconds": round(written, 1),
        **read,
        "bytes_per_mark_disk": None if size is None else round(size / max(n, 1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.marks --marks N`, on a private broker."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.marks", description=__doc__)
    parser.add_argument("--marks", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=12)
    # The restart's half, run by `measure` in a fresh process.
    parser.add_argument("--read", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--now", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.read:
        result = asyncio.run(
            read_marks(args.bootstrap, args.read, args.marks, args.partitions, args.now)
        )
        print(json.dumps(result))
        return 0

    return print_on_private_broker(
        "meter-marks-",
        lambda broker, tag, _root: measure(
            broker.bootstrap, tag, args.marks, args.partitions, broker.kafka_data_dir
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
