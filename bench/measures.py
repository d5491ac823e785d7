"""The three measurements of one run: the ceiling, the drain and the latency."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import procstat
from bench.worker import BenchWorker
from bench.workload import Event, producer
from processor.kafka import glue
from processor.kafka.routing import partition_for

# ----------------------------------------------------------------------- 1. ceiling


async def ceiling(bootstrap: str, topics: Sequence[str], out_topic: str, expected: int) -> float:
    """events/s of the simplest loop doing the processor's shape of work.

    Consume, decode, update a dict, produce one output per event. Sends are queued,
    not awaited one by one; each fetched batch waits for its sends before the next, as
    a processor that commits after its outputs land would.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    prod = producer(bootstrap, linger_ms=5)
    await consumer.start()
    await prod.start()
    # The loop runs in this process, which holds every module the bench imports
    # (Faust's, the worker's) and its own data. The collector's full passes over them
    # slowed the loop (docs/performance.md, "The ceiling on either side of the
    # drain"), a cost a loop in a process of its own does not pay. They are
    # frozen out of the collector while the loop runs; it keeps collecting the loop's
    # own objects at Python's default thresholds.
    gc.collect()
    gc.freeze()
    try:
        cluster = await glue.fetch_metadata(consumer)
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t))
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        state: dict[str, int] = {}
        seen = 0
        started: float | None = None
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if started is None and batch:
                started = time.perf_counter()
            pending = []
            for records in batch.values():
                for r in records:
                    event = orjson.loads(r.value)
                    tenant = event["tenant_id"]
                    balance = state.get(tenant, 0) - event["duration_seconds"]
                    state[tenant] = balance
                    out = orjson.dumps(
                        {"tenant_id": tenant, "cause_id": event["event_id"], "balance": balance}
                    )
                    pending.append(await prod.send(out_topic, out, key=r.key))
            seen += sum(len(v) for v in batch.values())
            if pending:
                await asyncio.gather(*pending)
        assert started is not None
        return expected / (time.perf_counter() - started)
    finally:
        gc.unfreeze()
        await prod.stop()
        await consumer.stop()


# -------------------------------------------------------------------------- 2. drain


@dataclass
class Drain:
    events: int
    seconds: float
    events_per_s: float
    cpu_seconds_per_1000: float
    peak_rss_mb: float
    startup_seconds: float
    # The broker's CPU over the same span, and the share of the machine's cores busy:
    # worker and broker share two cores, so together they set the drain rate.
    broker_cpu_seconds_per_1000: float | None = None
    machine_busy: float | None = None
    # Kafka transactions the worker(s) committed per 1,000 events over the same span.
    transactions_per_1000: float | None = None


async def drain(
    worker: BenchWorker | Sequence[BenchWorker],
    expected: int,
    within: float,
    on_start: Callable[[int], None] | None = None,
    broker_pid: int | None = None,
) -> Drain:
    """Start the worker(s) on the preloaded topics and time them until every record is
    handled.

    The clock starts at the first poll that sees a handled record, not at process
    start: Faust's boot, topic creation and first rebalance are not throughput. With
    several workers (or processes) it starts again once each has handled a record: the
    first to join handles records alone until the others' join rebalance is over. The
    records handled before the clock's start are left out of the rate. /metrics is polled
    every 0.25 s, so the end is known to within a quarter second. With several
    workers, their counts and CPU are summed and peak memory is the largest.
    """
    workers = [worker] if isinstance(worker, BenchWorker) else list(worker)
    launched = time.perf_counter()
    for w in workers:
        w.start()
    deadline = launched + within

    def cpu() -> float:
        return sum(procstat.cpu_seconds(w.pid) for w in workers)

    def broker_cpu() -> float:
        return procstat.cpu_seconds(broker_pid) if broker_pid is not None else 0.0

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        t0 = cpu0 = None
        n0 = 0
        every_one = False  # whether the clock started with every worker handling
        while True:
            for w in workers:
                w.check_alive()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"workers did not drain {expected} records in {within}s")
            counts = [await w.records_done(http) for w in workers]
            done = sum(c or 0 for c in counts)
            now = time.perf_counter()
            if done:
                handling = all(w.all_handling for w in workers)
                # Started at the first handled record, started again once every worker
                # handles them (unless that is already the end: a tiny drain).
                if t0 is None or (handling and not every_one and done < expected):
                    if t0 is None and on_start is not None:
                        on_start(workers[0].pid)
                    t0, n0, cpu0, every_one = now, done, cpu(), handling
                    tx0 = sum(w.transactions for w in workers)
                    broker0, machine0 = broker_cpu(), procstat.machine_busy_seconds()
                if done >= expected:
                    cpu1 = cpu()
                    tx1 = sum(w.transactions for w in workers)
                    broker1, machine1 = broker_cpu(), procstat.machine_busy_seconds()
                    break
            await asyncio.sleep(0.25)
    assert t0 is not None and cpu0 is not None
    measured = done - n0
    seconds = now - t0
    return Drain(
        events=measured,
        seconds=seconds,
        events_per_s=measured / seconds,
        cpu_seconds_per_1000=(cpu1 - cpu0) / measured * 1000,
        peak_rss_mb=max(procstat.peak_rss_mb(w.pid) for w in workers),
        startup_seconds=t0 - launched,
        broker_cpu_seconds_per_1000=None
        if broker_pid is None
        else (broker1 - broker0) / measured * 1000,
        machine_busy=procstat.busy_share(machine0, machine1),
        transactions_per_1000=(tx1 - tx0) / measured * 1000,
    )


async def transactions(worker: BenchWorker) -> float:
    """The worker's meter_transactions_total now."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        await worker.records_done(http)
    return worker.transactions


# ------------------------------------------------------------------------ 3. latency


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolated one."""
    rank = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[rank]


@dataclass
class Latency:
    rate: float
    sent: int
    tracked: int
    matched: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    # Median latency of the last tenth of the sends minus that of the first tenth:
    # near zero when the worker keeps up, growing when a backlog builds.
    backlog_growth_ms: float
    # Where the latency goes (ms, p50 and p99 of each part): from the send to the
    # worker writing the ledger entry (its CreateTime, set as the worker appends it to
    # a round's transaction: fetch, staging, the wait for the partition's round), and
    # from there to the entry being read (the round's commit, then the read_committed
    # fetch). Wall clock on both sides, at the millisecond the record's timestamp has.
    split: dict[str, float] = field(default_factory=dict)
    # The p99 of the records sent in each second of the phase, in order: a phase's
    # p99 is often made by a second or two in which the worker's loop fell behind
    # (docs/performance.md, "The phase second by second").
    p99_ms_by_second: list[float] = field(default_factory=list)


async def latency(
    bootstrap: str,
    prefix: str,
    ledger_topic: str,
    events: Sequence[Event],
    rate: float,
    partitions: int,
    settle: float = 30.0,
) -> Latency:
    """Append → ledger entry readable, per usage record, at a steady `rate` events/s.

    The clock starts when the record is handed to the producer (acks=all, no linger),
    just before it is appended: the producer's ack, which comes after the append, can be
    handled in this process later than the worker's whole path takes (seen in the quick
    form once the worker got fast), so it cannot bound the append from below. The
    figure thus includes the produce request and is an upper bound on append-to-readable.
    Readable time is when a read_committed consumer of credits.ledger, tailing from its
    end, returns the entry whose cause_id is the event's id. Only events with a positive
    duration are tracked: a zero-second call writes no entry. Producer and consumer
    share this process and its clock; only records the broker acknowledged count.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
    )
    # acks=all and no linger: each record is appended as soon as it is sent, as a
    # telephony switch publishing one call record at a time would.
    prod = producer(bootstrap, linger_ms=0, acks="all")
    await consumer.start()
    await prod.start()
    # This process's own pauses would count as the worker's latency: a full collection
    # over the preloaded workload (a million events in `make bench`) stopped the sends
    # and the reader for 100-300 ms (docs/performance.md, "The latency bench's own
    # pauses"). The objects held so far are frozen out of the collector, which stays off
    # while the clock runs; the phase allocates little.
    gc.collect()
    gc.freeze()
    gc.disable()
    sent: dict[str, float] = {}
    acked: set[str] = set()
    arrived: dict[str, float] = {}
    # Wall-clock send time and ledger entry CreateTime, in ms (`Latency.split`).
    sent_wall: dict[str, float] = {}
    written: dict[str, float] = {}
    tracked = {e.event_id for e in events if e.charged}
    try:
        cluster = await glue.fetch_metadata(consumer)
        tps = [TopicPartition(ledger_topic, p) for p in cluster.partitions_for_topic(ledger_topic)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the lazy seek now, before anything is produced
            await consumer.position(tp)

        async def read() -> None:
            while len(arrived) < len(tracked):
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for records in batch.values():
                    for r in records:
                        cause = orjson.loads(r.value).get("cause_id")
                        if cause in tracked and cause not in arrived:
                            arrived[cause] = now
                            written[cause] = r.timestamp

        reader = asyncio.create_task(read())

        # Counted down as the broker answers each send: waiting on one event at the
        # end, not on a gather over every send's future, which blocked the loop (and
        # the last sends and reads) for as long as building it took.
        unanswered = len(events)
        all_answered = asyncio.Event()

        def on_ack(event_id: str) -> object:
            def done(fut: asyncio.Future[object]) -> None:
                nonlocal unanswered
                if not fut.cancelled() and fut.exception() is None:
                    acked.add(event_id)
                unanswered -= 1
                if not unanswered:
                    all_answered.set()

            return done

        # Paced in 10 ms ticks: smooth enough for the rates a worker reaches.
        tick = 0.01
        start = time.perf_counter()
        for i, ev in enumerate(events):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > tick:
                await asyncio.sleep(delay)
            sent[ev.event_id] = time.perf_counter()
            sent_wall[ev.event_id] = time.time() * 1000
            fut = await prod.send(
                prefix + ev.topic,
                ev.value,
                key=ev.key,
                partition=partition_for(ev.key.decode(), partitions),
            )
            fut.add_done_callback(on_ack(ev.event_id))
        await all_answered.wait()
        # Entries still missing after `settle` are reported as tracked - matched.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, settle)
    finally:
        gc.enable()
        gc.unfreeze()
        await prod.stop()
        await consumer.stop()
    lat = sorted((arrived[e] - sent[e]) * 1000 for e in arrived if e in acked)
    if not lat:
        raise RuntimeError("no ledger entry matched any tracked event")
    in_order = [
        (arrived[e.event_id] - sent[e.event_id]) * 1000
        for e in events
        if e.event_id in arrived and e.event_id in acked
    ]
    tenth = max(1, len(in_order) // 10)
    growth = percentile(sorted(in_order[-tenth:]), 0.5) - percentile(sorted(in_order[:tenth]), 0.5)
    return Latency(
        rate=rate,
        sent=len(events),
        tracked=len(tracked),
        matched=len(lat),
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        p999_ms=percentile(lat, 0.999),
        max_ms=lat[-1],
        backlog_growth_ms=growth,
        split=_split(sent, sent_wall, written, arrived, acked),
        p99_ms_by_second=p99_by_second(sent, arrived, acked),
    )


def p99_by_second(
    sent: dict[str, float], arrived: dict[str, float], acked: set[str]
) -> list[float]:
    """The p99 latency (ms) of the records sent in each second after the first send;
    a second with no record read reports 0."""
    if not sent:
        return []
    start = min(sent.values())
    seconds: dict[int, list[float]] = {}
    for e, at in arrived.items():
        if e in acked:
            seconds.setdefault(int(sent[e] - start), []).append((at - sent[e]) * 1000)
    if not seconds:
        return []
    return [
        round(percentile(sorted(seconds[s]), 0.99), 1) if s in seconds else 0.0
        for s in range(max(seconds) + 1)
    ]


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds used so far by the worker's and the broker's process trees, by this
    process alone, and the machine's (busy, all) seconds: `cores_between` two marks."""

    worker: float
    broker: float
    bench: float
    machine: tuple[float, float]
    at: float


def cpu_mark(worker_pid: int, broker_pid: int) -> CpuMark:
    return CpuMark(
        procstat.cpu_seconds(worker_pid),
        procstat.cpu_seconds(broker_pid),
        time.process_time(),
        procstat.machine_busy_seconds(),
        time.perf_counter(),
    )


def cores_between(before: CpuMark, after: CpuMark) -> dict[str, float]:
    """The cores each used on average between the two marks (the worker's, the
    broker's, the bench's own), and the machine's busy share."""
    seconds = max(after.at - before.at, 1e-9)
    return {
        "worker_cores": round((after.worker - before.worker) / seconds, 2),
        "broker_cores": round((after.broker - before.broker) / seconds, 2),
        "bench_cores": round((after.bench - before.bench) / seconds, 2),
        "machine_busy": round(procstat.busy_share(before.machine, after.machine), 2),
    }


def _split(
    sent: dict[str, float],
    sent_wall: dict[str, float],
    written: dict[str, float],
    arrived: dict[str, float],
    acked: set[str],
) -> dict[str, float]:
    ids = [e for e in arrived if e in acked]
    to_written = sorted(written[e] - sent_wall[e] for e in ids)
    # The arrival on the wall clock: its send's wall time plus the measured latency.
    to_read = sorted(sent_wall[e] + (arrived[e] - sent[e]) * 1000 - written[e] for e in ids)
    return {
        "sent_to_written_p50": round(percentile(to_written, 0.5), 1),
        "sent_to_written_p99": round(percentile(to_written, 0.99), 1),
        "written_to_read_p50": round(percentile(to_read, 0.5), 1),
        "written_to_read_p99": round(percentile(to_read, 0.99), 1),
    }
