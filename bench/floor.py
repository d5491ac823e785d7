"""The latency harness's own floor: a relay as light as aiokafka allows, in place of the worker.

    python -m bench.floor [--rate 9000] [--passes 2] [--plain] [--work-us W] [--half-drain N]
    python -m bench.floor relay --bootstrap HOST:PORT --prefix P [--plain] [--work-us W]

Item 3 of the benchmark times a usage record from the producer to its ledger entry
being readable. With the broker, the harness and the worker on the same two cores,
part of that is the path itself. The relay, a process of its own as the worker is,
reads the usage topics and writes what the worker's rounds write, with none of the
worker's work in between: a round takes every record fetched while the last one was in
flight and commits, in one transaction of one producer speaking transactions v2 (the
worker's `TransactionsV2Producer`), a ledger entry per record naming its `cause_id`, a
state record per tenant and a marks record per partition. `measures.latency` times it
exactly as it times the worker, at the same rate. `--plain`: one entry per record and
no transaction (the floor before transactions, 2026-12-02).

`make bench` runs this after the worker's latency phase, on its own topics, at the
same rate (`measure`): the worker's p99 next to what the machine gives a relay in the
same run. The standalone form starts its own broker; its first pass warms the broker's
new topics up (its JIT, the log segments), the later ones are the floor.

`--work-us W` gives the relay W microseconds of its thread's CPU a record, a stand-in
for the worker's own work, so the relay models a worker whose only cost besides that
work is the lightest transactional client. `--half-drain N` first drains N preloaded
events with such a relay and times the phase at half the rate it drained, as `make
bench` times the worker's (docs/performance.md, "The lightest consumer at half its own
drain rate").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer

from bench import measures
from bench.worker import CHECKOUT
from bench.workload import Event, Workload, create_topics, preload, producer
from processor.dev import simulator as sim
from processor.dev.kafka_local import LocalKafka
from processor.kafka import glue

PARTITIONS = 12
EVENTS = 6000
READY = "ready"
# A round takes at most the worker's METER_BATCH_MAX records, and the relay stages at
# most two rounds ahead: in a drain, a fetch loop left to run ahead would do the work
# of records long before the rounds that commit them, and a drain's rate would lie.
ROUND_MAX = 6000
STAGED_MAX = 2 * ROUND_MAX
# A drain's clock starts once a fifth of its records are committed: the broker's first
# transactions on new partitions are slow ("Transactions v2").
DRAIN_WARM_SHARE = 0.2
# A round's records, as the relay fetched them: partition, key, event id.
Fetched = tuple[int, bytes | None, str]


@dataclass(frozen=True)
class FloorTopics:
    """The relay's topics, apart from the worker's so it never sees the floor's records."""

    inputs: tuple[str, ...]
    ledger: str
    state: str
    marks: str

    @classmethod
    def under(cls, prefix: str) -> FloorTopics:
        base = f"{prefix}floor."
        return cls(
            inputs=(base + sim.USAGE_CALLS, base + sim.USAGE_CONFERENCING),
            ledger=base + "credits.ledger",
            state=base + "state",
            marks=base + "marks",
        )

    @property
    def send_prefix(self) -> str:
        """What `measures.latency` puts before an event's topic to reach the inputs."""
        return self.ledger.removesuffix("credits.ledger")

    @property
    def every(self) -> list[str]:
        return [*self.inputs, self.ledger, self.state, self.marks]


# A mark's share of its partition's marks record: about what the worker's packed
# marks take a record (processor/worker/marks_log.py).
MARK_BYTES = 24


def round_records(
    fetched: Sequence[Fetched], topics: FloorTopics
) -> dict[tuple[str, int], list[tuple[bytes | None, bytes]]]:
    """A round's records by topic partition: a ledger entry per record, on its
    partition, in order; the newest state per key; one marks record per partition."""
    out: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
    state: dict[bytes | None, int] = {}
    marks: dict[int, int] = {}
    for partition, key, event_id in fetched:
        entry = orjson.dumps({"cause_id": event_id, "amount": "0.0000", "balance": "0.0000"})
        out.setdefault((topics.ledger, partition), []).append((key, entry))
        state[key] = partition
        marks[partition] = marks.get(partition, 0) + 1
    for key, partition in state.items():
        value = orjson.dumps([3, key.decode() if key else None, "0.0000", 0, 0])
        out.setdefault((topics.state, partition), []).append((key, value))
    for partition, count in marks.items():
        out.setdefault((topics.marks, partition), []).append((None, b"m" * MARK_BYTES * count))
    return out


def spend(work_us: float) -> None:
    """Burn `work_us` microseconds of this thread's CPU (not wall time: a busy loop
    preempted by the broker would otherwise cost less than it says)."""
    if work_us <= 0:
        return
    end = time.thread_time() + work_us / 1e6
    while time.thread_time() < end:
        pass


@dataclass(frozen=True)
class RelayDrain:
    """A relay's drain of preloaded events, from its first fifth on."""

    events: int
    seconds: float
    events_per_s: float
    cpu_us_per_event: float


async def _assigned(consumer: AIOKafkaConsumer) -> None:
    """Until the group gave the consumer its partitions and their "latest" positions
    are resolved: a record sent before that would be skipped."""
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    for tp in consumer.assignment():
        await consumer.position(tp)


def _consumer(bootstrap: str, topics: FloorTopics, earliest: bool = False) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics.inputs,
        bootstrap_servers=bootstrap,
        group_id=f"floor-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest" if earliest else "latest",
        fetch_max_wait_ms=20,  # as the worker asks (processor/worker/consumer.py)
    )


async def transactional_relay(
    bootstrap: str,
    topics: FloorTopics,
    ready: Callable[[], None],
    work_us: float = 0.0,
    drain: int | None = None,
) -> RelayDrain | None:
    """Rounds as the worker's: records are staged as they are fetched, and a round
    commits all staged so far (up to ROUND_MAX) while the next ones are fetched.

    `work_us`: CPU spent on each record as it is staged. `drain`: read the inputs from
    their start and return once that many records are committed, with the rate."""
    consumer = _consumer(bootstrap, topics, earliest=drain is not None)
    prod = glue.TransactionsV2Producer(
        bootstrap_servers=bootstrap,
        transactional_id=f"floor-{uuid.uuid4().hex[:6]}",
        transaction_timeout_ms=10_000,
        max_batch_size=1024 * 1024,
    )
    await consumer.start()
    await prod.start()
    staged: list[Fetched] = []
    waiting = asyncio.Event()
    room = asyncio.Event()  # set while fewer than STAGED_MAX records wait for a round

    async def fetch() -> None:
        while True:
            while len(staged) >= STAGED_MAX:
                room.clear()
                await room.wait()
            fetched = await consumer.getmany(timeout_ms=100, max_records=ROUND_MAX)
            for tp, records in fetched.items():
                for r in records:
                    staged.append((tp.partition, r.key, orjson.loads(r.value)["event_id"]))
                    spend(work_us)
            if staged:
                waiting.set()
            # getmany answers from its buffer without suspending: let the rounds run.
            await asyncio.sleep(0)

    fetching: asyncio.Task[None] | None = None
    committed = 0
    warmed = False
    try:
        await _assigned(consumer)
        ready()
        # Records, wall and CPU time at the drain's start: moved to the end of the first
        # round past the warm share, unless that round ends the drain.
        clock = (0, time.perf_counter(), time.process_time())
        fetching = asyncio.create_task(fetch())
        while True:
            await waiting.wait()
            waiting.clear()
            taken = staged[:ROUND_MAX]
            del staged[:ROUND_MAX]
            room.set()
            if staged:
                waiting.set()
            await prod.begin_transaction()
            sends = []
            for (topic, partition), records in round_records(taken, topics).items():
                batch = prod.create_batch()
                for key, value in records:
                    batch.append(key=key, value=value, timestamp=None)
                sends.append(await prod.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*sends)
            await prod.commit_transaction()
            committed += len(taken)
            if drain is None:
                continue
            if not warmed and drain * DRAIN_WARM_SHARE <= committed < drain:
                clock = (committed, time.perf_counter(), time.process_time())
                warmed = True
            if committed >= drain:
                events = committed - clock[0]
                seconds = time.perf_counter() - clock[1]
                cpu = time.process_time() - clock[2]
                return RelayDrain(events, seconds, events / seconds, cpu / events * 1e6)
    finally:
        if fetching is not None:
            fetching.cancel()
        await consumer.stop()
        await prod.stop()


async def plain_relay(bootstrap: str, topics: FloorTopics, ready: Callable[[], None]) -> None:
    """Each usage record becomes one ledger record naming it, no transaction."""
    consumer = _consumer(bootstrap, topics)
    prod = producer(bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await prod.start()
    try:
        await _assigned(consumer)
        ready()
        while True:
            fetched = await consumer.getmany(timeout_ms=100)
            sends = []
            for records in fetched.values():
                for r in records:
                    entry = {"cause_id": orjson.loads(r.value)["event_id"]}
                    sends.append(await prod.send(topics.ledger, orjson.dumps(entry), key=r.key))
            if sends:
                await asyncio.gather(*sends)
    finally:
        await consumer.stop()
        await prod.stop()


class RelayProcess:
    """`python -m bench.floor relay` in a process of its own, ready once it says so."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    async def start(
        cls,
        bootstrap: str,
        prefix: str,
        plain: bool = False,
        within: float = 60.0,
        work_us: float = 0.0,
        drain: int | None = None,
    ) -> RelayProcess:
        args = ["relay", "--bootstrap", bootstrap, "--prefix", prefix, "--work-us", str(work_us)]
        if drain is not None:
            args += ["--drain", str(drain)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floor",
            *args,
            *(["--plain"] if plain else []),
            stdout=asyncio.subprocess.PIPE,
            cwd=CHECKOUT,  # `bench` is imported from this checkout
        )
        relay = cls(proc)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), within)
            if line.decode().strip() != READY:
                raise RuntimeError(f"the floor's relay ended before it was ready: {line!r}")
        except BaseException:
            await relay.stop()
            raise
        return relay

    async def drained(self, within: float) -> RelayDrain:
        """What a relay started with `drain` reports once it has committed them all."""
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), within)
        if not line:
            raise RuntimeError("the floor's relay ended before its drain was done")
        return RelayDrain(**orjson.loads(line))

    async def stop(self) -> None:
        if self._proc.returncode is None:
            self._proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            await self._proc.wait()


@dataclass(frozen=True)
class Floor:
    latency: measures.Latency
    # Cores used meanwhile by the relay, the broker and this process.
    cores: dict[str, float]


async def measure(
    bootstrap: str,
    prefix: str,
    passes: Sequence[Sequence[Event]],
    rate: float,
    broker_pid: int,
    plain: bool = False,
    work_us: float = 0.0,
) -> list[Floor]:
    """The relay's latency at `rate`, timed as the worker's (on topics of its own), for
    each pass of events in turn. Count the first as a warm-up: on partitions the broker
    has just created, its first transactions' markers come seconds late
    (docs/performance.md, "Transactions v2"), where the worker's drain warmed its own."""
    topics = FloorTopics.under(prefix)
    await create_topics(bootstrap, topics.every, PARTITIONS)
    relay = await RelayProcess.start(bootstrap, prefix, plain, work_us=work_us)
    floors = []
    try:
        for events in passes:
            before = measures.cpu_mark(relay.pid, broker_pid)
            lat = await measures.latency(
                bootstrap, topics.send_prefix, topics.ledger, events, rate, PARTITIONS
            )
            cores = measures.cores_between(before, measures.cpu_mark(relay.pid, broker_pid))
            cores["relay_cores"] = cores.pop("worker_cores")
            floors.append(Floor(lat, cores))
    finally:
        await relay.stop()
    return floors


async def drain_rate(
    bootstrap: str, prefix: str, work: Workload, events: int, work_us: float
) -> RelayDrain:
    """A relay's drain of `events` preloaded usage events, on topics of its own."""
    topics = FloorTopics.under(prefix)
    await create_topics(bootstrap, topics.every, PARTITIONS)
    await preload(bootstrap, topics.send_prefix, work.usage(events), PARTITIONS)
    relay = await RelayProcess.start(bootstrap, prefix, work_us=work_us, drain=events)
    try:
        return await relay.drained(within=600.0)
    finally:
        await relay.stop()


async def standalone(
    rate: float, passes: int, plain: bool, work_us: float = 0.0, half_drain: int = 0
) -> None:
    root = Path(tempfile.mkdtemp(prefix="floor-"))
    broker = LocalKafka(root / "kafka")
    await broker.astart()
    try:
        tag = uuid.uuid4().hex[:6]
        work = Workload(10_000, seed=6, run_tag=tag)
        if half_drain:
            drained = await drain_rate(
                broker.bootstrap, f"floor-drain-{tag}.", work, half_drain, work_us
            )
            rate = drained.events_per_s / 2
            print(f"drain: {drained}; the phase at half of it", flush=True)
        size = max(EVENTS, int(rate * 10))
        runs = [list(work.usage(size)) for _ in range(passes)]
        pid = broker.pid
        if pid is None:
            raise RuntimeError("the broker has no process")
        floors = await measure(
            broker.bootstrap, f"floor-{tag}.", runs, rate, pid, plain, work_us=work_us
        )
        for n, floor in enumerate(floors):
            lat = floor.latency
            print(
                f"pass {n + 1} at {rate:,.0f}/s: p50 {lat.p50_ms:.1f} p99 {lat.p99_ms:.1f} "
                f"p99.9 {lat.p999_ms:.1f} ms (growth {lat.backlog_growth_ms:+.1f} ms) "
                f"{lat.split} {floor.cores}",
                flush=True,
            )
    finally:
        await broker.astop()


async def relay_main(
    bootstrap: str, prefix: str, plain: bool, work_us: float, drain: int | None
) -> None:
    def ready() -> None:
        print(READY, flush=True)

    topics = FloorTopics.under(prefix)
    if plain:
        await plain_relay(bootstrap, topics, ready)
        return
    drained = await transactional_relay(bootstrap, topics, ready, work_us, drain)
    if drained is not None:
        print(orjson.dumps(asdict(drained)).decode(), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="no transactions")
    sub = parser.add_subparsers(dest="command")
    relay = sub.add_parser("relay", help="the relay itself (started by the measurement)")
    relay.add_argument("--bootstrap", required=True)
    relay.add_argument("--prefix", required=True)
    relay.add_argument("--plain", action="store_true", help="no transactions")
    relay.add_argument("--work-us", type=float, default=0.0)
    relay.add_argument("--drain", type=int, default=None, help="report after this many")
    parser.add_argument("--rate", type=float, default=9000.0, help="events/s sent")
    parser.add_argument("--passes", type=int, default=2, help="timed passes (first warms)")
    parser.add_argument(
        "--work-us", type=float, default=0.0, help="CPU microseconds of work a record"
    )
    parser.add_argument(
        "--half-drain",
        type=int,
        default=0,
        metavar="N",
        help="drain N preloaded events first, and time the phase at half that rate",
    )
    args = parser.parse_args(argv)
    if args.plain and (args.work_us or args.half_drain):
        parser.error("--work-us and --half-drain model the transactional relay, not --plain")
    if args.command == "relay":
        with contextlib.suppress(KeyboardInterrupt):
            # The worker's loop (processor/ops/service_commands.py).
            uvloop.run(
                relay_main(args.bootstrap, args.prefix, args.plain, args.work_us, args.drain)
            )
        return
    start = time.perf_counter()
    uvloop.run(standalone(args.rate, args.passes, args.plain, args.work_us, args.half_drain))
    print(f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
