"""The rest of issue 3's fault suite, on the real broker with real `meter worker` processes.

3. workers joining and leaving during load, 4. the broker hard-killed mid-load,
5. a worker frozen past its session timeout and resumed (a zombie), 6. a crash right
after a threshold crossing; and a worker joining just as a burst arrives (the narrowest
form of 3). Each runs `traffic()` (about 200 tenants, ~5% re-sent duplicates, a mix
of commands) and ends with a reconciliation that must find zero discrepancies and at
most one recharge request id per tenant. A failed reconciliation says which input
records never reached a balance, where the group's offsets stand, and the changelog
history of a few mismatched accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from processor.config.settings import Settings
from processor.core.outputs import derive_id
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.dev.kafka_local import LocalKafka
from processor.kafka import glue
from processor.kafka.topics import TopicNames
from processor.ops.reconcile import Report, read_topic, reconcile
from tests.integration.diagnose import (
    changelog_audit,
    explained,
    input_progress,
    never_applied,
    spans,
)
from tests.integration.harness import (
    Client,
    Deployment,
    Worker,
    eventually,
    now_rfc3339,
    strike,
)
from tests.integration.test_faults import (
    one_request_per_tenant,
    produce,
    reconciled,
    traffic,
)

pytestmark = pytest.mark.integration

NOW = now_rfc3339()  # event time within the dedupe window
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


# ---- a fleet of workers that the teardown always cleans up --------------------------


class Fleet:
    """Every worker process a test starts, killed (and its log shown) at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Worker] = []

    def deployment(self, bootstrap: str, name: str = "d") -> Deployment:
        d = Deployment(bootstrap, self.root / name, partitions=4)
        d.root.mkdir(parents=True)
        return d

    def start(self, d: Deployment, index: int) -> Worker:
        w = Worker(d, index).start()
        self.started.append(w)
        return w

    def close(self) -> None:
        for w in self.started:
            if w.proc is not None and w.proc.poll() is None:
                resume(w)  # a stopped process would not show its last words
                w.kill()
        seen: set[Path] = set()
        for w in self.started:
            if w.log_path not in seen:
                seen.add(w.log_path)
                print(f"--- {w.log_path.name} (tail) ---\n{w.log_tail(40)}")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    f.close()


def freeze(w: Worker) -> None:
    assert w.proc is not None
    os.killpg(w.proc.pid, signal.SIGSTOP)


def resume(w: Worker) -> None:
    assert w.proc is not None
    os.killpg(w.proc.pid, signal.SIGCONT)


# ---- measuring --------------------------------------------------------------------


def load_figures(records: list[tuple[str, dict[str, Any]]]) -> str:
    # traffic() re-sends a duplicate by appending the very same object again.
    duplicates = sum(1 for a, b in itertools.pairwise(records) if b[1] is a[1])
    commands = sum(1 for topic, _ in records if topic == "credits.commands")
    return f"records sent: {len(records)}, duplicates: {duplicates}, commands: {commands}"


def tenants_of(records: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
    return sorted({body["tenant_id"] for _, body in records})


async def timed_ready(w: Worker, timeout: float = 90.0) -> float:
    started = time.monotonic()
    await w.wait_ready(timeout)
    return round(time.monotonic() - started, 1)


async def account(http: aiohttp.ClientSession, w: Worker, tenant: str) -> tuple[int, bytes]:
    try:
        async with http.get(f"{w.url}/tenants/{tenant}/account") as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc).encode()


async def answers_everywhere(
    workers: list[Worker], tenants: list[str], timeout: float = 90.0, same_body: bool = True
) -> dict[str, bytes]:
    """Poll until every worker answers 200 for every tenant (with one body, if asked:
    only once no input is moving the balances any more)."""

    async def check() -> dict[str, bytes] | str:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            bodies: dict[str, bytes] = {}
            for t in tenants:
                answers = [await account(http, w, t) for w in workers]
                if any(status != 200 for status, _ in answers):
                    return f"not yet: {t}: {[(s, b[:120]) for s, b in answers]}"
                if same_body and len({body for _, body in answers}) != 1:
                    return f"not yet: {t}: bodies differ: {[b for _, b in answers]}"
                bodies[t] = answers[0][1]
            return bodies

    result: dict[str, bytes] = await eventually(
        check, timeout, interval=0.5, what="every worker answering 200 for every tenant"
    )
    return result


async def readiness(w: Worker) -> tuple[int, Any]:
    try:
        return await w.get("/ready")
    except aiohttp.ClientError as exc:
        return 0, repr(exc)


async def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    """The consumer group's state and member count, as the coordinator sees them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await described_state(admin, group)
    finally:
        await admin.close()


async def described_state(admin: AIOKafkaAdminClient, group: str) -> tuple[str, int]:
    """`group_state` through a started admin client: a poll of a few milliseconds."""
    [response] = await admin.describe_consumer_groups([group])
    _error, _group, state, _ptype, _protocol, members, *_ = response.groups[0]
    return str(state), len(members)


async def settled(bootstrap: str, group: str, members: int, timeout: float = 90.0) -> float:
    """Wait until the group is Stable with exactly `members` members; seconds waited."""
    started = time.monotonic()

    async def check() -> str:
        try:
            state, count = await group_state(bootstrap, group)
        except (KafkaError, OSError) as exc:
            return f"not yet: {exc!r}"
        if state == "Stable" and count == members:
            return "ok"
        return f"not yet: {state} with {count} members"

    await eventually(check, timeout, interval=0.3, what=f"group stable with {members} members")
    return round(time.monotonic() - started, 1)


async def records_handled(w: Worker) -> float:
    """The worker's meter_records_total, summed over its labels."""
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
        http.get(f"{w.url}/metrics") as resp,
    ):
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("meter_records_total{")
    )


def report_figures(report: Report) -> str:
    return (
        f"inputs read: {report.inputs}, ledger entries: {report.ledger_entries} "
        f"(records {report.ledger_records}), recharge request records: "
        f"{report.recharge_requests}, discrepancies: {report.discrepancies}"
    )


def check_report(report: Report) -> None:
    assert report.discrepancies == 0, report.render()
    assert report.distinct_applied > 0 and report.ledger_entries == report.distinct_applied


# ---- 3. workers joining and leaving during load ----------------------------------------


async def test_workers_joining_and_leaving_during_load(fleet: Fleet, kafka: Any) -> None:
    d = fleet.deployment(kafka.bootstrap)
    started = time.monotonic()
    w0 = fleet.start(d, 0)
    ready = {"w0 (first)": await timed_ready(w0)}
    records = traffic(events=6000, seed=31)
    load = asyncio.create_task(produce(d, records, per_second=250))
    rng = random.Random(3)

    await asyncio.sleep(rng.uniform(1.0, 2.5))  # a random moment for each change
    w1 = fleet.start(d, 1)
    ready["w1 joins"] = await timed_ready(w1)
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    w2 = fleet.start(d, 2)
    joined = time.monotonic()
    # Four partitions on three workers: Faust's sticky assignor may leave the newcomer
    # without partitions (the two others already hold ceil(4/3) = 2 each). It is a
    # member all the same, and answers reads by asking the owners.
    await settled(d.bootstrap, d.app_id, members=3)
    early = tenants_of(records[:300])
    await answers_everywhere([w0, w1, w2], early, same_body=False)
    ready["w2 joins (member, serving reads)"] = round(time.monotonic() - joined, 1)
    w2_ready = await readiness(w2)
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    # w1 leaves gracefully: SIGTERM, the group hands its partitions over.
    left = await strike(d, w1.stop, total=len(records), what="w1 stopped")
    assert w1.proc is not None and w1.proc.returncode == 0, w1.log_tail()
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    # w0 leaves without a word: the group notices after the session timeout.
    gone = await strike(d, w0.kill, total=len(records), what="w0 killed")
    killed = time.monotonic()
    assert not load.done(), "the load ended before the membership changes: slow it down"
    # A supervisor brings the killed one back (same data dir): three joins, two leaves.
    w0 = fleet.start(d, 0)
    ready["w0 restarted"] = await timed_ready(w0)
    await load
    survivors = [w2, w0]
    stable_after = await settled(d.bootstrap, d.app_id, members=len(survivors))
    settled_s = round(time.monotonic() - killed, 1)

    tenants = tenants_of(records)
    await answers_everywhere(survivors, tenants)
    try:
        report = await reconciled(d, lambda: w2.url)
    except AssertionError as exc:
        raise await explained(d, exc) from None
    print(report.render())
    check_report(report)
    await one_request_per_tenant(d)
    # The read API: every surviving worker answers 200 for a sample, with one body.
    sample = random.Random(7).sample(tenants, 40)
    bodies = await answers_everywhere(survivors, sample, timeout=10)
    for t in sample:
        assert json.loads(bodies[t])["tenant_id"] == t
    print(
        f"FIGURES scenario 3: {load_figures(records)}, tenants: {len(tenants)}, "
        f"joins: 3, graceful stops: 1, kill -9: 1, ready seconds: {ready}, "
        f"w2's /ready while three were in the group: {w2_ready}, "
        f"kill to group stable: {settled_s}s (last wait {stable_after}s), "
        f"at the stop: {left}, at the kill: {gone}, "
        f"{report_figures(report)}, sample of {len(sample)} tenants identical on "
        f"{len(survivors)} workers, wall: {time.monotonic() - started:.1f}s"
    )


# ---- 4. the broker hard-killed and restarted mid-load ----------------------------------


async def produce_through_outages(
    d: Deployment, records: list[tuple[str, dict[str, Any]]], per_second: float
) -> int:
    """Like `produce`, but a send that fails (broker gone) is retried until it lands.

    A send that failed may still have reached the broker before it died; its retry is
    then a re-sent duplicate, which the processor must recognise like any other.
    Returns how many sends were retried.
    """
    retried = 0
    async with Client(d) as c:
        started = time.monotonic()
        for i, (topic, body) in enumerate(records):
            while True:
                try:
                    await asyncio.wait_for(c.send(topic, body), timeout=3)
                    break
                except (KafkaError, TimeoutError, OSError):
                    retried += 1
                    await asyncio.sleep(0.5)  # the broker is away; try again shortly
            ahead = i / per_second - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)  # pacing the load, not waiting for readiness
    return retried


async def burst(d: Deployment, records: list[tuple[str, dict[str, Any]]]) -> None:
    """Send all at once (not one ack at a time): a backlog for the workers."""
    async with Client(d) as c:
        pending = [
            await c.producer.send(
                d.topic(topic), json.dumps(body).encode(), key=body["tenant_id"].encode()
            )
            for topic, body in records
        ]
        await asyncio.gather(*pending)


class Supervisor:
    """Restarts the worker whenever it exits, as systemd or Kubernetes would."""

    def __init__(self, fleet: Fleet, d: Deployment, index: int) -> None:
        self.fleet, self.d, self.index = fleet, d, index
        self.worker = fleet.start(d, index)
        self.restarts: list[tuple[int | None, float]] = []  # (exit code, seconds to ready)
        self._task: asyncio.Task[None] | None = None

    def watch(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.2)  # polling a child process for its exit
            proc = self.worker.proc
            assert proc is not None
            if proc.poll() is None:
                continue
            code = proc.returncode
            print(f"supervisor: worker exited with {code}; restarting it")
            began = time.monotonic()
            self.worker = self.fleet.start(self.d, self.index)
            try:
                await self.worker.wait_ready(120)
            except AssertionError:
                self.restarts.append((code, -1.0))
                continue
            self.restarts.append((code, round(time.monotonic() - began, 1)))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def test_broker_hard_killed_and_restarted_mid_load(
    local_kafka_factory: Callable[..., LocalKafka], fleet: Fleet
) -> None:
    began = time.monotonic()
    broker = local_kafka_factory()
    await broker.astart()
    d = fleet.deployment(broker.bootstrap)
    sup = Supervisor(fleet, d, 0)
    first_ready = await timed_ready(sup.worker)
    sup.watch()
    records = traffic(events=5000, seed=41)
    load = asyncio.create_task(produce_through_outages(d, records, per_second=300))
    rng = random.Random(4)
    await asyncio.sleep(rng.uniform(3.0, 6.0))  # a random moment mid-load
    # SIGKILL: no controlled shutdown, no flush. Nothing can be read from the broker
    # after it, so the evidence is read just before.
    hit = await strike(
        d, broker.kill, total=len(records), what="broker killed", broker_up_after=False
    )
    killed = time.monotonic()
    assert not load.done(), f"the load ended before the broker was killed ({hit})"
    await asyncio.sleep(rng.uniform(2.0, 5.0))  # the outage: the broker stays dead a while
    await broker.astart()
    broker_back = round(time.monotonic() - killed, 1)
    retried = await load
    load_done = round(time.monotonic() - killed, 1)

    async def worker_ready() -> bool:
        w = sup.worker
        if w.proc is None or w.proc.poll() is not None:
            return False  # the supervisor will restart it
        try:
            async with (
                aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
                http.get(f"{w.url}/ready") as resp,
            ):
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    await eventually(worker_ready, 120, interval=0.5, what="the worker ready after the outage")
    recovered = round(time.monotonic() - killed, 1)
    await answers_everywhere([sup.worker], tenants_of(records), timeout=60)
    try:
        report = await reconciled(d, lambda: sup.worker.url)
    except AssertionError as exc:
        raise await explained(d, exc) from None
    clean = round(time.monotonic() - killed, 1)
    await sup.close()
    print(report.render())
    check_report(report)
    await one_request_per_tenant(d)
    print(
        f"FIGURES scenario 4: {load_figures(records)}, at the kill: {hit}, "
        f"sends retried over the outage: "
        f"{retried}, worker ready before: {first_ready}s, broker back after kill: "
        f"{broker_back}s, load done after kill: {load_done}s, worker ready after kill: "
        f"{recovered}s, reconciled clean after kill: {clean}s, worker restarts by the "
        f"supervisor (exit code, s to ready): "
        f"{sup.restarts}, {report_figures(report)}, wall: {time.monotonic() - began:.1f}s"
    )


# ---- 5. a worker frozen past its session timeout, then resumed -------------------------


async def compact_eagerly(bootstrap: str, topic: str) -> None:
    """Have the broker's cleaner compact `topic` as soon as it can."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = {
            "cleanup.policy": "compact",  # alter_configs replaces every topic setting
            "min.cleanable.dirty.ratio": "0",
            "segment.ms": "1000",
            "min.compaction.lag.ms": "0",
        }
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


async def values_left(d: Deployment, topic: str) -> int:
    """Account values the (compacted) changelog still holds."""
    return sum(1 for raw in await read_topic(d.bootstrap, topic) if raw.value is not None)


async def handled_if_alive(w: Worker) -> float:
    """Records the worker handled, or 0 once it has exited (a fenced zombie)."""
    try:
        return await records_handled(w)
    except (aiohttp.ClientError, OSError):
        return 0


async def rejoined(sup: Supervisor, d: Deployment) -> None:
    """The supervised worker (the zombie, or its restart) is in the group and ready."""

    async def ready() -> bool:
        proc = sup.worker.proc
        if proc is None or proc.poll() is not None:
            return False  # exited; the supervisor is starting it again
        try:
            status, _ = await sup.worker.get("/ready")
        except (aiohttp.ClientError, OSError):
            return False  # starting, or exiting
        return status == 200

    await settled(d.bootstrap, d.app_id, members=2, timeout=120)
    await eventually(ready, timeout=120, interval=0.5, what="the zombie or its restart ready")
    await settled(d.bootstrap, d.app_id, members=2, timeout=120)


async def test_frozen_worker_resumed_after_it_was_replaced_changes_nothing_twice(
    fleet: Fleet, kafka: Any
) -> None:
    began = time.monotonic()
    d = fleet.deployment(kafka.bootstrap)
    # The zombie's first transaction after its resume fails (its producer was fenced
    # when w1 took its partitions over), and it exits to start afresh: supervised, as
    # systemd or Kubernetes would.
    sup = Supervisor(fleet, d, 0)
    sup.watch()
    w1 = fleet.start(d, 1)
    await asyncio.gather(sup.worker.wait_ready(), w1.wait_ready())
    # Ready again once the group is stable: the load must not race the first
    # rebalance (that race is its own test, below).
    await settled(d.bootstrap, d.app_id, members=2)
    await asyncio.gather(sup.worker.wait_ready(), w1.wait_ready())
    # Compaction as eager as the broker allows: it keeps only the last write of each
    # key, so a zombie's late write, were it ever committed, would be all that is left.
    changelog = f"{d.app_id}-accounts-changelog"
    await compact_eagerly(d.bootstrap, changelog)
    records = traffic(events=7000, seed=51)
    bursts, steady = [records[:1500], records[1500:3000]], records[3000:]
    # Paced to outlast both freeze cycles (~35 s each): each freeze asserts the steady
    # load was still running (at 140/s it ended before the second freeze).
    load = asyncio.create_task(produce(d, steady, per_second=60))
    rng = random.Random(5)
    takeovers: list[float] = []
    awake: list[float] = []
    rejoins: list[float] = []
    freezes: list[str] = []
    for chunk in bursts:
        # A burst, faster than the workers keep up with, so that the worker is frozen
        # with records fetched but not yet processed.
        await burst(d, chunk)
        await asyncio.sleep(rng.uniform(0.3, 1.5))  # a random moment to freeze
        w0 = sup.worker
        before = await records_handled(w0)
        froze = await strike(
            d, functools.partial(freeze, w0), total=len(records), what=f"freeze #{len(freezes) + 1}"
        )
        freezes.append(str(froze))
        frozen = time.monotonic()
        # Past the session timeout (6 s): the group drops w0, w1 takes every partition.
        await settled(d.bootstrap, d.app_id, members=1, timeout=60)
        await w1.wait_ready()
        takeovers.append(round(time.monotonic() - frozen, 1))
        await asyncio.sleep(2.0)  # w1 works alone for a while; the zombie's buffers go stale
        resume(w0)  # the zombie wakes with its fetched records and its old state
        resumed = time.monotonic()
        await asyncio.sleep(1.0)  # what it does in its first second awake is the point
        awake.append(await handled_if_alive(w0) - before)
        await rejoined(sup, d)
        await w1.wait_ready()
        rejoins.append(round(time.monotonic() - resumed, 1))
    steady_through = not load.done()  # the steady load outlasted both freezes
    await load
    tenants = tenants_of(records)
    await answers_everywhere([sup.worker, w1], tenants)
    try:
        report = await reconciled(d, lambda: w1.url)
    except AssertionError as exc:
        raise await explained(d, exc) from None
    print(report.render())
    check_report(report)
    await one_request_per_tenant(d)

    # State rebuilt from the changelogs alone, compacted, on a new machine, must still
    # give every balance exactly once.
    # The cleaner has been compacting the changelog all along (segments roll every
    # second). What it keeps of each key is the last committed write, so the rebuild
    # below is right if and only if no committed write is older than the one before it:
    # `late` below, which transactions keep at zero.
    left = await values_left(d, changelog)
    await sup.close()
    sup.worker.kill()
    w1.kill()
    fresh = fleet.start(d, 2)
    rebuild = await timed_ready(fresh)
    await answers_everywhere([fresh], tenants)
    try:
        rebuilt = await reconciled(d, lambda: fresh.url)
    except AssertionError as exc:
        raise await explained(d, exc) from None
    print(rebuilt.render())
    check_report(rebuilt)
    writes, late, conflicting = await changelog_audit(d)
    print(
        f"FIGURES scenario 5: {load_figures(records)}, freeze cycles: {len(bursts)}, "
        f"at each freeze: {freezes}, "
        f"frozen to takeover: {takeovers}s, records the zombie handled in its first "
        f"second awake: {awake}, resume to rejoined: {rejoins}s, zombie restarts "
        f"(exit code, seconds to ready): {sup.restarts}, steady load running "
        f"throughout: {steady_through}, "
        f"{report_figures(report)}; rebuilt from the "
        f"changelogs on a fresh worker (ready in {rebuild}s): {report_figures(rebuilt)}, "
        f"account changelog: {writes} writes, {late} late (older than one before), "
        f"{conflicting} with the newest order but other contents, {left} account "
        f"values left in the compacted changelog before the rebuild, "
        f"wall: {time.monotonic() - began:.1f}s"
    )
    # Transactions fence the zombie: no account value it wrote after the takeover was
    # committed, so the changelog never goes back in time for any tenant.
    assert late == 0 and conflicting == 0
    print(f"zombie log after resume:\n{sup.worker.log_tail(25)}")


# ---- 6. a crash right after a threshold crossing ----------------------------------------


class RequestWatch:
    """Tails credits.recharge-requests from its start."""

    def __init__(self, d: Deployment) -> None:
        self.topic = d.topic("credits.recharge-requests")
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=d.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        self.seen: list[dict[str, Any]] = []

    async def start(self) -> None:
        await self.consumer.start()
        cluster = await glue.fetch_metadata(self.consumer)
        partitions = cluster.partitions_for_topic(self.topic) or set()
        assert partitions, f"{self.topic} does not exist"
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def poll(self) -> list[dict[str, Any]]:
        batch = await self.consumer.getmany(timeout_ms=50)
        for records in batch.values():
            self.seen.extend(json.loads(r.value) for r in records if r.value)
        return self.seen

    async def first_for(self, tenant: str, timeout: float) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            for r in await self.poll():
                if r["tenant_id"] == tenant:
                    return r
            return None

        result: dict[str, Any] = await eventually(
            found, timeout, interval=0.01, what=f"a recharge request for {tenant}"
        )
        return result

    async def stop(self) -> None:
        await self.consumer.stop()


def body_of(status_body: tuple[int, bytes]) -> dict[str, Any] | None:
    status, raw = status_body
    return json.loads(raw) if status == 200 else None


async def account_where(
    w: Worker, tenant: str, test: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    last: list[Any] = []

    async def check() -> dict[str, Any] | None:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            got = await account(http, w, tenant)
        last[:] = [got]
        view = body_of(got)
        return view if view is not None and test(view) else None

    try:
        result: dict[str, Any] = await eventually(check, 60, interval=0.2, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {last}") from None
    return result


async def test_crash_right_after_a_threshold_crossing_requests_once(
    fleet: Fleet, kafka: Any
) -> None:
    began = time.monotonic()
    d = fleet.deployment(kafka.bootstrap)
    w = fleet.start(d, 0)
    await w.wait_ready()
    records = traffic(events=3000, seed=61)
    load = asyncio.create_task(produce(d, records, per_second=300))

    x = "cx-threshold"
    setup: list[dict[str, Any]] = [
        {
            "type": "funds_added",
            "command_id": "cx-open",
            "tenant_id": x,
            "occurred_at": NOW,
            "amount": "10.00",
            "currency": "USD",
            "source": "manual",
        },
        {
            "type": "auto_recharge_configured",
            "command_id": "cx-ar",
            "tenant_id": x,
            "occurred_at": NOW,
            "enabled": True,
            "recharge_amount": "25.00",
            "trigger_balance": "5.00",
        },
    ]
    # UK mobile, per second, 0.12/min plus a 0.01 connect fee: 3000 s cost 6.01.
    usage = {
        "event_id": "cx-call-1",
        "tenant_id": x,
        "occurred_at": NOW,
        "call_id": "cx-k1",
        "call_type": "outbound",
        "source_number": "+14155550100",
        "destination_number": "+447700900123",
        "duration_seconds": 3000,
    }
    expected_id = derive_id("recharge", x, "1")
    watch = RequestWatch(d)
    await watch.start()
    try:
        async with Client(d) as c:
            for cmd in setup:
                await c.send("credits.commands", cmd)
            await account_where(
                w,
                x,
                lambda v: v["balance"] == "10.0000" and v["auto_recharge"] is not None,
                "the tenant funded and configured",
            )
            await asyncio.sleep(random.Random(6).uniform(0.5, 2.0))  # mid-load
            await c.send("usage.calls", usage)
            sent = time.monotonic()
            first = await watch.first_for(x, timeout=30)
            # Right after the request is out, before offsets are committed. Inputs in
            # all: the load, the setup, the usage, its 3 re-sends, 2 answers, 1 call.
            crash = await strike(d, w.kill, total=len(records) + 9, what="kill -9")
            crossing_to_kill = round(time.monotonic() - sent, 2)
            assert first["request_id"] == expected_id, first
            assert first["balance"] == "3.9900" and first["attempt"] == 1, first

            w = fleet.start(d, 0)
            restart_ready = await timed_ready(w)
            for _ in range(3):  # telephony re-sends the same usage event
                await c.send("usage.calls", usage)
            pending = await account_where(
                w,
                x,
                lambda v: v["pending_recharge"] is not None,
                "the request still pending after the restart",
            )
            assert pending["balance"] == "3.9900", pending
            assert pending["pending_recharge"]["request_id"] == expected_id, pending
            assert pending["pending_recharge"]["attempt"] == 1, pending

            # Billing charges the request and answers with its id (twice: it retries).
            answer = {
                "type": "funds_added",
                "command_id": f"billing-{expected_id}",
                "tenant_id": x,
                "occurred_at": NOW,
                "amount": "25.00",
                "currency": "USD",
                "source": "auto_recharge",
                "recharge_request_id": expected_id,
            }
            await c.send("credits.commands", answer)
            await c.send("credits.commands", answer)
            closed = await account_where(
                w,
                x,
                lambda v: v["pending_recharge"] is None,
                "the pending request closed by the funds",
            )
            assert closed["balance"] == "28.9900", closed
            # One more call, above the trigger still; once it shows, everything the
            # funds caused has been processed.
            await c.send(
                "usage.calls",
                {**usage, "event_id": "cx-call-2", "call_id": "cx-k2", "duration_seconds": 60},
            )
            after = await account_where(
                w,
                x,
                lambda v: v["balance"] != "28.9900",
                "the call after the funds applied",
            )
            assert after["balance"] == "28.8600" and after["pending_recharge"] is None, after
        await load
        try:
            report = await reconciled(d, lambda: w.url)
        except AssertionError as exc:
            raise await explained(d, exc) from None
        print(report.render())
        check_report(report)
        await one_request_per_tenant(d)
        for _ in range(3):
            await watch.poll()  # whatever else reached the topic by now
        mine = [r for r in watch.seen if r["tenant_id"] == x]
        ids = {r["request_id"] for r in mine}
        assert ids == {expected_id}, mine
        assert {r["attempt"] for r in mine} == {1}, mine
        final = body_of(await _account_once(w, x))
        assert final is not None and final["pending_recharge"] is None, final
    finally:
        await watch.stop()
    print(
        f"FIGURES scenario 6: {load_figures(records)}, usage sent to request seen and "
        f"worker killed: {crossing_to_kill}s, at the kill: {crash}, "
        f"restart-to-ready: {restart_ready}s, "
        f"usage re-sent: 3, billing answer sent: 2, request records for the tenant: "
        f"{len(mine)} (ids: {len(ids)}), {report_figures(report)}, "
        f"wall: {time.monotonic() - began:.1f}s"
    )


async def _account_once(w: Worker, tenant: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        return await account(http, w, tenant)


# ---- a worker joining as a burst arrives -------------------------------------------------


async def test_a_worker_joining_as_a_burst_arrives_applies_every_record(
    fleet: Fleet, kafka: Any
) -> None:
    """The group starts rebalancing for a joining worker just as a burst arrives.

    The first worker has fetched records it has not yet processed and has committed
    nothing on its partitions yet. Faust skips prefetched records of the old
    generation, and a partition with no committed offset is not sought back, so the
    records must still be processed (not skipped, not committed past, not left behind).
    """
    began = time.monotonic()
    d = fleet.deployment(kafka.bootstrap)
    w0 = fleet.start(d, 0)
    await w0.wait_ready()
    records = traffic(events=3000, seed=71)
    # One client for the whole watch: a client started per poll took long enough that
    # the join's short rebalance fell between two polls.
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:
        w1 = fleet.start(d, 1)

        async def rebalancing() -> str:
            state, members = await described_state(admin, d.app_id)
            if state != "Stable":
                return state
            # On a loaded machine the join's rebalance can fall between two polls. The
            # group Stable with both members means it is over: the burst then follows
            # it instead of meeting it (the FIGURES line says which).
            return "over before a poll saw it" if members == 2 else "not yet"

        state = await eventually(rebalancing, 60, interval=0.02, what="the join's rebalance")
    finally:
        await admin.close()
    joined = round(time.monotonic() - began, 1)
    await burst(d, records)
    await settled(d.bootstrap, d.app_id, members=2)
    await asyncio.gather(w0.wait_ready(), w1.wait_ready())

    async def caught_up() -> str:
        progress = await input_progress(d)
        behind = {tp: ce for tp, ce in progress.items() if ce[0] != ce[1] and ce[1] > 0}
        return f"not yet: {behind}" if behind else "ok"

    stalled = ""
    try:
        await eventually(caught_up, 45, interval=1, what="every input committed to its end")
    except AssertionError as exc:
        stalled = str(exc)
    cfg = Settings(_env_file=None, METER_TOPIC_PREFIX=d.prefix, METER_APP_ID=d.app_id)
    card = load_rate_card(example_rate_card_path())
    report = await reconcile(d.bootstrap, TopicNames.from_settings(cfg), card, w1.url)
    missing = await never_applied(d)
    progress = await input_progress(d)
    print(report.render())
    print(
        f"FIGURES join during burst: {load_figures(records)}, rebalance ({state}) began "
        f"{joined}s in, burst sent then, never applied: "
        f"{ {tp: spans(o) for tp, o in sorted(missing.items())} }, committed/end offsets: "
        f"{progress}, stalled: {bool(stalled)}, {report_figures(report)}, "
        f"wall: {time.monotonic() - began:.1f}s"
    )
    assert not missing and report.discrepancies == 0, (
        f"records never applied: { {tp: spans(o) for tp, o in sorted(missing.items())} }\n"
        f"committed/end offsets per input partition: {progress}\n"
        f"{stalled}\n{report.render()}"
    )
    await one_request_per_tenant(d)
