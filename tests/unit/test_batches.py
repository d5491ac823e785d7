"""A batch through the Pipeline: staged, then flushed outputs first, state after.

docs/guarantees.md rests on this order: a changelog record of an account value may
reach Kafka only once the outputs of every record it applied are there, so a value
never needs to carry them; and nothing is written locally before the flush landed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processor.config.settings import Settings
from processor.core.dedupe import DedupeWindow, dedupe_key, dedupe_tenant
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.core.state import RechargePolicy
from processor.core.stored import Mark, StoredAccount
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.testing import MemoryPublisher
from processor.worker.codec import dump_stored, load_stored
from processor.worker.flusher import BATCH_MAX, BATCH_MAX_BYTES, FetchInHand
from processor.worker.marks import Budget, MarkStore, digest
from processor.worker.marks_log import MarksLog, unpack_marks
from processor.worker.pipeline import Pipeline
from processor.worker.records import Changelog, Out, Record, Source
from processor.worker.staged import Staged
from tests.support import events
from tests.support.values import present

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
NAMES = TopicNames.from_settings(Settings(_env_file=None))
CARD = load_rate_card(example_rate_card_path())
PARTITIONS = 4


AT = "2026-11-25T09:59:00Z"


def call(event_id: str, tenant: str, seconds: int = 61) -> bytes:
    return json.dumps(events.call(event_id, tenant=tenant, seconds=seconds, at=AT)).encode()


def funds(command_id: str, tenant: str, amount: str = "10.00") -> bytes:
    return json.dumps(events.funds(command_id, tenant=tenant, amount=amount, at=AT)).encode()


@dataclass
class Journal:
    """A publisher that records each publish call, and can be told to fail one."""

    calls: list[list[Out]] = field(default_factory=list)
    fail_on: int | None = None
    atomic: bool = False

    async def publish(self, records: Sequence[Out]) -> None:
        self.calls.append(list(records))
        if self.fail_on == len(self.calls):
            raise ConnectionError("broker refused the batch")


@dataclass
class Rig:
    pub: Any = field(default_factory=Journal)
    accounts: dict[str, StoredAccount] = field(default_factory=dict)
    seen: MutableMapping[str, Mark] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    batch_max: int = BATCH_MAX
    batch_max_bytes: int = BATCH_MAX_BYTES
    fetch_in_hand: FetchInHand | None = None

    def __post_init__(self) -> None:
        self.pipeline = Pipeline.build(
            CARD,
            RechargePolicy(timeout=timedelta(hours=1)),
            DedupeWindow(7),
            self.accounts,
            self.seen,
            NAMES,
            PARTITIONS,
            self.pub,
            clock=lambda: T0,
            changelogs=(
                Changelog("accounts-changelog", dump_stored, str),
                MarksLog("dedupe-marks", dedupe_tenant),
            ),
            batch_max=self.batch_max,
            batch_max_bytes=self.batch_max_bytes,
            fetch_in_hand=self.fetch_in_hand,
        )

    def stage(self, source: Source, topic: str, tenant: str, value: bytes) -> str:
        p = partition_for(tenant, PARTITIONS)
        offset = self.offsets.get(f"{topic}:{p}", 0)
        self.offsets[f"{topic}:{p}"] = offset + 1
        return self.pipeline.intake.stage(source, Record(topic, p, offset, tenant.encode(), value))


def a_batch(rig: Rig) -> None:
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme")) == "applied"
    for i in range(5):
        assert rig.stage(Source.CALLS, NAMES.calls, "acme", call(f"e{i}", "acme")) == "applied"
    assert rig.stage(Source.CALLS, NAMES.calls, "zeta", call("z1", "zeta")) == "applied"


async def test_outputs_are_published_before_the_state_and_once_per_batch() -> None:
    rig = Rig()
    a_batch(rig)
    assert rig.pub.calls == []  # staging waits for nothing and sends nothing
    await rig.pipeline.flusher.flush()
    outputs, state = rig.pub.calls
    # The top-up's command result too (added), in the same round as its entry.
    assert {o.topic for o in outputs} == {NAMES.ledger, NAMES.alerts, NAMES.command_results}
    assert not any(o.state for o in outputs) and all(o.state for o in state)
    assert len([o for o in outputs if o.topic == NAMES.ledger]) == 7  # one per change
    # One account value per touched tenant (the last); the marks: one record per
    # partition of the round, one mark in it per applied record.
    accounts = [o for o in state if o.topic == "accounts-changelog"]
    marks = [o for o in state if o.topic == "dedupe-marks"]
    assert sorted(o.key for o in accounts) == [b"acme", b"zeta"]
    partitions = {partition_for("acme", PARTITIONS), partition_for("zeta", PARTITIONS)}
    assert sorted(o.partition for o in marks) == sorted(partitions)
    held = [m for o in marks for m in unpack_marks(o.value or b"")]
    assert len(held) == 7
    acme = load_stored(next(o.value for o in accounts if o.key == b"acme"))
    assert acme.seq == 6 and acme.applied[f"{NAMES.calls}:{partition_for('acme', 4)}"] == 4
    # Written after its outputs were acknowledged: it need carry none of them.
    assert acme.outbox == ()
    # Each record goes to its tenant's changelog partition, where recovery looks.
    for o in accounts:
        assert o.key is not None
        assert o.partition == partition_for(dedupe_tenant(o.key.decode()), PARTITIONS)
    for o in marks:
        assert o.owner == o.partition
        for d, _tp, _offset, _expires in unpack_marks(o.value or b""):
            tenant = "acme" if o.partition == partition_for("acme", PARTITIONS) else "zeta"
            assert d in {digest(k) for k in rig.pipeline.engine.seen if k.startswith(tenant)}
    assert {tp for _d, tp, _o, _e in held} >= {f"{NAMES.calls}:{partition_for('acme', 4)}"}
    # And the local store holds exactly what the changelog got.
    assert rig.accounts["acme"] == acme


async def test_an_atomic_publisher_gets_outputs_and_state_in_one_round() -> None:
    rig = Rig(pub=Journal(atomic=True))
    a_batch(rig)
    # A re-route: a call for acme read from another tenant's partition.
    elsewhere = (partition_for("acme", PARTITIONS) + 1) % PARTITIONS
    rerouted = Record(NAMES.calls, elsewhere, 0, b"wrong", call("r1", "acme"))
    assert rig.pipeline.intake.stage(Source.CALLS, rerouted) == "rerouted"
    await rig.pipeline.flusher.flush()
    (round_,) = rig.pub.calls
    assert {o.topic for o in round_ if not o.state} == {
        NAMES.ledger,
        NAMES.alerts,
        NAMES.reroute,
        NAMES.command_results,
    }
    # Two account values, and seven marks in one record per partition.
    marks = [o for o in round_ if o.topic == "dedupe-marks"]
    assert len([o for o in round_ if o.state]) == 2 + len(marks) and len(marks) == 2
    assert sum(len(list(unpack_marks(o.value or b""))) for o in marks) == 7
    # Each record is carried by the transaction of the partition whose records caused
    # it: a tenant's outputs and state by its partition, a re-route by the record's.
    for o in round_:
        if o.topic == NAMES.reroute:
            assert o.owner == elsewhere
        elif o.topic == "dedupe-marks":
            assert o.owner == o.partition
        else:
            tenant = dedupe_tenant(o.key.decode()) if o.key else ""
            assert o.owner == partition_for(tenant, PARTITIONS), o
    assert rig.accounts["acme"].seq == 6  # settled once the round landed


async def test_an_atomic_round_that_fails_writes_no_state_locally() -> None:
    rig = Rig(pub=Journal(fail_on=1, atomic=True))
    a_batch(rig)
    with pytest.raises(ConnectionError):
        await rig.pipeline.flusher.flush()
    assert rig.accounts == {} and rig.seen == {}


async def test_nothing_is_staged_twice_and_an_empty_flush_publishes_nothing() -> None:
    rig = Rig()
    a_batch(rig)
    await rig.pipeline.flusher.flush()
    await rig.pipeline.flusher.flush()
    assert len(rig.pub.calls) == 2


async def test_a_failed_output_publish_writes_no_state_anywhere() -> None:
    rig = Rig(pub=Journal(fail_on=1))
    a_batch(rig)
    with pytest.raises(ConnectionError):
        await rig.pipeline.flusher.flush()
    assert len(rig.pub.calls) == 1  # the state was never sent
    assert rig.accounts == {} and rig.seen == {}  # nor written locally


async def test_a_failed_state_publish_leaves_the_local_store_as_it_was() -> None:
    rig = Rig(pub=Journal(fail_on=2))
    a_batch(rig)
    with pytest.raises(ConnectionError):
        await rig.pipeline.flusher.flush()
    assert rig.accounts == {} and rig.seen == {}


async def test_a_batch_reads_its_own_writes_and_those_being_flushed() -> None:
    rig = Rig(pub=MemoryPublisher())
    rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme"))
    # A duplicate within the batch is recognised from the staged mark.
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme")) == "duplicate"
    await rig.pipeline.flusher.flush()
    assert rig.accounts["acme"].account.balance == CARD.quantize(CARD.zero + 10)
    ledger = rig.pub.values(NAMES.ledger)
    assert [e["balance_after"] for e in ledger] == ["10.0000"]


def test_staged_reads_pending_then_flushing_then_base() -> None:
    base = {"a": 1, "b": 2}
    s: Staged[str, int] = Staged(base)
    s["a"] = 10
    first = s.take()
    assert first == {"a": 10}
    s["b"] = 20  # staged while the first batch flushes
    assert (s["a"], s["b"], s.get("c")) == (10, 20, None)
    assert dict(s) == {"a": 10, "b": 20}
    s["a"] = 11
    second = s.take()  # flushes overlap: a second batch in flight
    assert (s["a"], s.get("a")) == (11, 11)  # the newest layer wins
    with pytest.raises(RuntimeError):
        s.settle(second)  # the earlier batch must land first
    s.settle(first)
    assert base == {"a": 10, "b": 2} and s["a"] == 11
    s.settle(second)
    assert base == {"a": 11, "b": 20} and len(s) == 2
    with pytest.raises(TypeError):
        del s["a"]


def test_a_forgotten_key_stays_readable_until_its_tombstone_settles() -> None:
    base = {"a": 1, "b": 2}
    s: Staged[str, int] = Staged(base)
    s["b"] = 20
    assert s.forget("a") and not s.forget("b")  # "b" is written by the batch in progress
    assert not s.forget("c")  # nothing to forget
    assert s.get("a") == 1 and s["a"] == 1  # until the tombstone has landed
    layer = s.take()
    assert layer == {"a": None, "b": 20}
    assert not s.forget("a")  # in flight
    s.settle(layer)
    assert base == {"b": 20}
    assert s.get("a") is None
    with pytest.raises(KeyError):
        s["a"]


def test_a_pipeline_built_without_bounds_has_the_settings_defaults() -> None:
    cfg = Settings(_env_file=None)
    assert (cfg.batch_max, cfg.batch_max_bytes) == (BATCH_MAX, BATCH_MAX_BYTES)


@pytest.mark.parametrize(("count", "size", "full_at"), [(3, 10, 3), (100, 400, 3)])
async def test_staging_stops_at_the_count_or_the_bytes_whichever_comes_first(
    count: int, size: int, full_at: int
) -> None:
    # 3 records, or 1,000 bytes of input: large records hold bounded memory whatever
    # their count, and many small ones a bounded count.
    rig = Rig(batch_max=count, batch_max_bytes=1000)
    flusher = rig.pipeline.flusher
    for _ in range(full_at):
        assert not flusher.full()
        flusher.hold(object(), size)
    assert flusher.full()
    await flusher.flush()  # taken: room again
    assert not flusher.full()


async def test_marks_past_their_window_leave_the_store_with_nothing_sent() -> None:
    rig = Rig(seen=MarkStore(PARTITIONS))
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme")) == "applied"
    assert rig.stage(Source.CALLS, NAMES.calls, "acme", call("e1", "acme")) == "applied"
    await rig.pipeline.flusher.flush()
    key = dedupe_key("acme", "call", "e1")
    assert key in rig.seen
    mark = rig.seen[key]
    sent = len(rig.pub.calls)

    flusher = rig.pipeline.flusher
    assert flusher.sweep_seen(mark.expires - 60, Budget(100, 100)) == 0  # not yet
    assert flusher.sweep_seen(mark.expires, Budget(100, 100)) == 2
    await rig.pipeline.flusher.flush()
    assert len(rig.pub.calls) == sent  # no tombstones: the marks topic forgets by age
    assert key not in rig.seen
    # Past its window a re-sent event is metered again, as the contract allows.
    assert rig.stage(Source.CALLS, NAMES.calls, "acme", call("e1", "acme")) == "applied"


@dataclass
class Gated:
    """A publisher whose acknowledgements the test releases (or refuses) one call at a
    time: each call is one round of the flusher."""

    calls: list[list[Out]] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)
    refused: set[int] = field(default_factory=set)
    atomic: bool = False

    async def publish(self, records: Sequence[Out]) -> None:
        index = len(self.calls)
        self.calls.append(list(records))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if index in self.refused:
            raise ConnectionError("broker refused the batch")

    def refuse(self, index: int) -> None:
        self.refused.add(index)
        self.gates[index].set()

    def kinds(self) -> list[str]:
        return [
            "+".join(
                k
                for k, on in (
                    ("outputs", any(not o.state for o in call)),
                    ("state", any(o.state for o in call)),
                )
                if on
            )
            for call in self.calls
        ]

    def balances(self, index: int) -> dict[bytes | None, str]:
        """The account values written in one call: tenant -> balance."""
        return {
            o.key: str(load_stored(present(o.value)).account.balance)
            for o in self.calls[index]
            if o.topic == "accounts-changelog"
        }


async def settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_batch_staged_while_one_flushes_rides_the_next_round_with_its_state() -> None:
    rig = Rig(pub=Gated())
    pub: Gated = rig.pub
    rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme"))
    first = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    assert pub.kinds() == ["outputs"]

    # Batch 2 is staged on top of batch 1's values while batch 1's outputs are in flight.
    assert rig.stage(Source.CALLS, NAMES.calls, "acme", call("e1", "acme")) == "applied"
    second = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    assert pub.kinds() == ["outputs"]  # one round at a time
    pub.gates[0].set()  # batch 1's outputs acknowledged
    await settle_loop()
    # Round 2: batch 1's state, and batch 2's outputs beside it.
    assert pub.kinds() == ["outputs", "outputs+state"]
    assert pub.balances(1) == {b"acme": "10.0000"}  # batch 1's value, not batch 2's
    assert rig.accounts == {} and not first.done()  # nothing settles before its ack
    pub.gates[1].set()
    await first
    assert rig.accounts["acme"].account.balance == CARD.quantize(CARD.zero + 10)
    await settle_loop()
    # Round 3: batch 2's state, only now that its outputs are in.
    assert pub.kinds() == ["outputs", "outputs+state", "state"] and not second.done()
    assert rig.accounts["acme"].seq == 1
    pub.gates[2].set()
    await second
    assert rig.accounts["acme"].seq == 2


async def test_a_refused_round_fails_its_batches_and_every_later_one() -> None:
    rig = Rig(pub=Gated())
    pub: Gated = rig.pub
    a_batch(rig)
    first = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    rig.stage(Source.CALLS, NAMES.calls, "zeta", call("z2", "zeta"))
    second = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    pub.gates[0].set()
    await settle_loop()
    assert pub.kinds() == ["outputs", "outputs+state"]
    rig.stage(Source.CALLS, NAMES.calls, "zeta", call("z3", "zeta"))
    third = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    pub.refuse(1)  # batch 1's state and batch 2's outputs are refused
    for flush in (first, second, third):
        with pytest.raises(ConnectionError):
            await flush
    # Batch 2's and 3's state never went out: they would carry batch 1's values.
    assert pub.kinds() == ["outputs", "outputs+state"]
    assert rig.accounts == {} and rig.seen == {}
    # And a flush after that fails at once: the worker is to restart and replay.
    rig.stage(Source.CALLS, NAMES.calls, "zeta", call("z4", "zeta"))
    with pytest.raises(ConnectionError):
        await rig.pipeline.flusher.flush()
    assert len(pub.calls) == 2


async def test_a_batch_without_outputs_writes_its_state_in_the_first_free_round() -> None:
    rig = Rig(pub=Gated())
    pub: Gated = rig.pub
    rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme"))
    first = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    pub.gates[0].set()
    await settle_loop()
    pub.gates[1].set()
    await first
    # A duplicate writes nothing but must still land after the batches before it.
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme")) == "duplicate"
    await rig.pipeline.flusher.flush()  # nothing to publish: no round needed
    assert pub.kinds() == ["outputs", "state"]


@dataclass
class Watching(Gated):
    """A gated publisher that notes, at each round it is given, the local accounts."""

    accounts: dict[str, StoredAccount] = field(default_factory=dict)
    settled_at_call: list[dict[str, int]] = field(default_factory=list)

    async def publish(self, records: Sequence[Out]) -> None:
        self.settled_at_call.append({k: v.seq for k, v in self.accounts.items()})
        await super().publish(records)


async def two_rounds(rig: Rig) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """Two flushes of acme's records: the first round in flight, the second staged behind
    it (an atomic publisher: one round each)."""
    rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("c1", "acme"))
    first = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    assert rig.stage(Source.CALLS, NAMES.calls, "acme", call("e1", "acme")) == "applied"
    second = asyncio.create_task(rig.pipeline.flusher.flush())
    await settle_loop()
    return first, second


async def test_a_round_lands_while_the_next_one_is_in_flight_not_before_it_is_sent() -> None:
    accounts: dict[str, StoredAccount] = {}
    pub = Watching(atomic=True, accounts=accounts)
    rig = Rig(pub=pub, accounts=accounts)
    first, second = await two_rounds(rig)
    pub.gates[0].set()
    await first
    # Round 2 went out before round 1 settled locally (the records staged meanwhile do
    # not wait for that), and round 1 settled without waiting for round 2's answer.
    assert pub.settled_at_call == [{}, {}]
    assert rig.accounts["acme"].seq == 1 and not second.done()
    pub.gates[1].set()
    await second
    assert rig.accounts["acme"].seq == 2


async def test_a_refused_round_still_lets_the_round_before_it_land() -> None:
    rig = Rig(pub=Gated(atomic=True))
    pub: Gated = rig.pub
    first, second = await two_rounds(rig)
    pub.gates[0].set()
    await settle_loop()
    pub.refuse(1)
    await first  # in Kafka: settled locally
    with pytest.raises(ConnectionError):
        await second
    assert rig.accounts["acme"].seq == 1


# ---- no round cut in the middle of a fetch --------------------------------------------


@dataclass
class Announcing(Journal):
    """A journal that says when it is first given a round."""

    published: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, records: Sequence[Out]) -> None:
        await super().publish(records)
        self.published.set()


class Fetch:
    """The fetch loop's side of `fetch_in_hand`: a fetch whose rest is still to come
    until `ended`."""

    def __init__(self) -> None:
        self.rest: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def in_hand(self) -> asyncio.Future[None] | None:
        return None if self.rest.done() else self.rest

    def ended(self) -> None:
        self.rest.set_result(None)


def ledger_entries(records: Sequence[Out]) -> int:
    return sum(o.topic == NAMES.ledger for o in records)


def held(rig: Rig, source: Source, topic: str, value: bytes, token: str) -> None:
    """One record of a fetch staged and held, as the worker's fetch loop does it."""
    rig.stage(source, topic, "acme", value)
    rig.pipeline.flusher.hold(token, len(value))


async def test_a_round_waits_for_the_rest_of_the_fetch_in_hand() -> None:
    fetch = Fetch()
    rig = Rig(pub=Journal(atomic=True), fetch_in_hand=fetch.in_hand)
    held(rig, Source.COMMANDS, NAMES.commands, funds("c1", "acme"), "m1")
    await settle_loop()
    assert rig.pub.calls == []  # the first part of the fetch waits for the rest
    held(rig, Source.CALLS, NAMES.calls, call("e1", "acme"), "m2")
    fetch.ended()
    await settle_loop()
    # One round carries the whole fetch: the credit and the call's debit.
    assert len(rig.pub.calls) == 1 and ledger_entries(rig.pub.calls[0]) == 2


async def test_a_round_waits_for_the_rest_of_a_fetch_no_longer_than_its_bound() -> None:
    fetch = Fetch()  # never ends: a fetch loop held elsewhere
    rig = Rig(pub=Announcing(atomic=True), fetch_in_hand=fetch.in_hand)
    held(rig, Source.COMMANDS, NAMES.commands, funds("c1", "acme"), "m1")
    await asyncio.wait_for(rig.pub.published.wait(), 10 * rig.pipeline.flusher.fetch_wait)
    assert ledger_entries(rig.pub.calls[0]) == 1 and not fetch.rest.done()


async def test_a_full_flusher_takes_at_once_without_waiting_for_the_fetch() -> None:
    fetch = Fetch()
    rig = Rig(pub=Journal(atomic=True), fetch_in_hand=fetch.in_hand, batch_max=2)
    held(rig, Source.COMMANDS, NAMES.commands, funds("c1", "acme"), "m1")
    held(rig, Source.CALLS, NAMES.calls, call("e1", "acme"), "m2")
    assert rig.pipeline.flusher.full()
    await settle_loop()
    # The fetch loop waits for this take before it hands over more: no waiting here.
    assert len(rig.pub.calls) == 1 and not fetch.rest.done()
