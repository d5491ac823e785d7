"""A round's marks settled into the marks store in bulk, from what the flusher packed
for Kafka (`MarkStore.put_entries`, processor/worker/flusher.py `_settle`), leave the
store as settling each batch key by key does, and reads during the flight see the
newest mark of every key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.config.settings import Settings
from processor.core.dedupe import dedupe_key, dedupe_tenant
from processor.core.stored import Mark, Position
from processor.kafka.topics import TopicNames
from processor.observability.worker_hooks import WorkerHooks
from processor.worker import marks as marks_module
from processor.worker.codec import dump_stored
from processor.worker.flusher import Flusher
from processor.worker.marks import (
    DIGEST_BYTES,
    NEVER,
    OFFSET_BITS,
    OFFSET_MASK,
    SHARD_MAX,
    VALUE,
    MarkStore,
    MarkTable,
)
from processor.worker.marks_log import MarksLog, entry_of, round_marks, unpack_marks
from processor.worker.records import Changelog, Out
from processor.worker.staged import Staged

PARTITIONS = 3
LOG = MarksLog("dedupe-marks", dedupe_tenant)
HOOKS = WorkerHooks(TopicNames.from_settings(Settings(_env_file=None)), "EUR")


def key(tenant: int, event: int) -> str:
    return dedupe_key(f"t{tenant}", "call", f"e{event}")


KEYS = [key(t, e) for t in range(8) for e in range(6)]


class PerKey(MutableMapping[str, Mark]):
    """The marks store behind a plain mapping: the flusher settles it key by key
    (`store[key] = mark`), as it did before the bulk path."""

    def __init__(self, store: MarkStore) -> None:
        self.store = store

    def get(self, key: str, default: Mark | None = None) -> Mark | None:  # type: ignore[override]
        return self.store.get(key, default)

    def __getitem__(self, key: str) -> Mark:
        return self.store[key]

    def __setitem__(self, key: str, mark: Mark) -> None:
        self.store[key] = mark

    def __delitem__(self, key: str) -> None:
        del self.store[key]

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)


@dataclass
class Gated:
    """A publisher whose rounds the test lets land one at a time."""

    atomic: bool = True
    calls: list[list[Out]] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)

    async def publish(self, records: Sequence[Out]) -> None:
        self.calls.append(list(records))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()

    def land_next(self) -> bool:
        waiting = [g for g in self.gates if not g.is_set()]
        if waiting:
            waiting[0].set()
        return bool(waiting)


@dataclass
class Side:
    """One flusher over a marks store, settled in bulk or (`per_key`) key by key."""

    per_key: bool
    atomic: bool = True
    store: MarkStore = field(default_factory=lambda: MarkStore(PARTITIONS))

    def __post_init__(self) -> None:
        self.pub = Gated(atomic=self.atomic)
        base: MutableMapping[str, Mark] = PerKey(self.store) if self.per_key else self.store
        self.seen: Staged[str, Mark] = Staged(base)
        self.flusher = Flusher(
            self.pub,
            Staged({}),
            self.seen,
            PARTITIONS,
            HOOKS,
            changelogs=(Changelog("accounts-changelog", dump_stored, str), LOG),
        )
        self.flushes: list[asyncio.Task[None]] = []

    def take(self) -> None:
        self.flushes.append(asyncio.ensure_future(self.flusher.flush()))


async def run_loop() -> None:
    for _ in range(8):
        await asyncio.sleep(0)


def held(store: MarkStore) -> dict[int, Any]:
    """What each table holds, shard by shard, with positions by name (the two stores
    may have interned the input topic-partitions in another order)."""
    out: dict[int, Any] = {}
    for partition, table in store.tables.items():
        shards = []
        for slot, data in enumerate(table.data):
            half = len(data) >> 1
            values = list(VALUE.iter_unpack(data[half:]))
            digests = [data[i : i + DIGEST_BYTES] for i in range(0, half, DIGEST_BYTES)]
            marks = [
                (d, store.tps[p >> OFFSET_BITS], p & OFFSET_MASK, e)
                for d, (p, e) in zip(digests, values, strict=True)
            ]
            # The soonest expiry is a bound: per key, a mark written twice in one round
            # lowers it by the one replaced, in bulk only the newest counts.
            assert table.soonest[slot] <= min((e for _, e in values), default=1 << 40)
            shards.append(marks)
        out[partition] = (shards, bytes(table.depths), list(table.directory), table.count)
    return out


# A step: ("write", key index, expires, topic-partition, offset) | ("take",) | ("land",)
# | ("forget", key index)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.integers(0, len(KEYS) - 1),
            st.integers(0, NEVER),
            st.integers(0, 2),
            st.integers(0, OFFSET_MASK),
        ),
        st.tuples(st.just("take")),
        st.tuples(st.just("land")),
        st.tuples(st.just("forget"), st.integers(0, len(KEYS) - 1)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(steps=steps, shard_max=st.sampled_from([1, 2, SHARD_MAX]), atomic=st.booleans())
async def test_a_round_settled_in_bulk_leaves_the_store_as_settled_key_by_key(
    steps: list[tuple[Any, ...]], shard_max: int, atomic: bool
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        # Tiny shards: the round's puts split shards and double directories.
        mp.setattr(marks_module, "SHARD_BYTES", shard_max * DIGEST_BYTES)
        bulk, per_key = Side(per_key=False, atomic=atomic), Side(per_key=True, atomic=atomic)
        sides = (bulk, per_key)
        model: dict[str, Mark] = {}
        for step in [*steps, ("take",), *[("land",)] * (len(steps) + 1)]:
            forgot = set()
            for side in sides:
                if step[0] == "write":
                    _, k, expires, tp, offset = step
                    side.seen[KEYS[k]] = Mark(expires, Position(f"usage.calls:{tp}", offset))
                elif step[0] == "take":
                    side.take()
                elif step[0] == "land":
                    side.pub.land_next()
                else:
                    forgot.add(side.seen.forget(KEYS[step[1]]))
            if step[0] == "write":
                _, k, expires, tp, offset = step
                model[KEYS[k]] = Mark(expires, Position(f"usage.calls:{tp}", offset))
            elif step[0] == "forget":
                assert len(forgot) == 1
                if forgot == {True}:
                    model.pop(KEYS[step[1]])
            await run_loop()
            reads = [{k: side.seen.get(k) for k in KEYS} for side in sides]
            assert reads[0] == reads[1]
            # Reads see the newest write, whether staged, in flight or settled (a key
            # forgotten reads as before until its tombstone has landed).
            assert all(reads[0][k] == mark for k, mark in model.items())
            assert held(bulk.store) == held(per_key.store), step
            assert bulk.pub.calls == per_key.pub.calls
        for side in sides:
            assert all(f.done() and f.exception() is None for f in side.flushes)
            assert side.seen.in_flight == {} and side.seen.flushing == []
            assert {k: side.store.get(k) for k in KEYS} == {k: model.get(k) for k in KEYS}


async def test_a_key_written_twice_in_a_round_and_again_while_it_flies() -> None:
    """The brief's cases by hand: several partitions, a key written in two batches of
    one round, and again in the next round while the first is in flight."""
    bulk, per_key = Side(per_key=False), Side(per_key=True)
    twice, again = key(0, 1), key(5, 2)
    for side in (bulk, per_key):
        side.store[again] = Mark(10, Position("usage.calls:0", 1))
        for t in range(8):
            side.seen[key(t, 0)] = Mark(100 + t, Position(f"usage.calls:{t % 3}", t))
        side.seen[twice] = Mark(200, Position("usage.calls:1", 50))
        side.take()  # round 1, in flight
        await run_loop()
        side.seen[twice] = Mark(201, Position("usage.calls:1", 51))
        side.seen[again] = Mark(300, Position("usage.calls:2", 60))
        side.take()
        side.seen[twice] = Mark(202, Position("usage.calls:1", 52))
        side.take()  # with the one before: both in round 2, `twice` in each
        await run_loop()
        assert len(side.pub.calls) == 1 and len(side.seen.flushing) == 3
        side.pub.land_next()  # round 1 settles; round 2 is in flight
        await run_loop()
        assert side.store.get(twice) == Mark(200, Position("usage.calls:1", 50))
        assert side.store.get(again) == Mark(10, Position("usage.calls:0", 1))
        assert side.seen.get(twice) == Mark(202, Position("usage.calls:1", 52))
        assert side.seen.get(again) == Mark(300, Position("usage.calls:2", 60))
        assert len(side.pub.calls) == 2
        side.seen[again] = Mark(400, Position("usage.calls:2", 70))  # round 3, staged
        side.pub.land_next()
        await run_loop()
        assert side.store.get(twice) == Mark(202, Position("usage.calls:1", 52))
        assert side.store.get(again) == Mark(300, Position("usage.calls:2", 60))
        assert side.seen.get(again) == Mark(400, Position("usage.calls:2", 70))
        # Round 2 wrote each key once: its newest mark.
        written = [m for o in side.pub.calls[1] for m in unpack_marks(o.value or b"")]
        assert len(written) == 2
        side.take()
        await run_loop()
        side.pub.land_next()
        await run_loop()
        assert side.store.get(again) == Mark(400, Position("usage.calls:2", 70))
        assert all(f.done() and f.exception() is None for f in side.flushes)
        assert side.seen.in_flight == {}
    assert held(bulk.store) == held(per_key.store)
    assert len(bulk.store.tables) == PARTITIONS


def test_put_entries_holds_what_setting_each_key_does() -> None:
    marks = [
        (key(t, e), Mark(1000 + e, Position(f"usage.calls:{e % 2}", t * 100 + e)))
        for t in range(20)
        for e in range(30)
    ]
    marks += marks[::7]  # written again, later
    one_by_one, bulk = MarkStore(PARTITIONS), MarkStore(PARTITIONS)
    for k, mark in marks:
        one_by_one[k] = mark
    entries = round_marks(LOG, marks, PARTITIONS).entries
    assert entries is not None and sorted(entries) == list(range(PARTITIONS))
    for partition, group in entries.items():
        bulk.put_entries(partition, group)
    assert held(bulk) == held(one_by_one)
    assert entries[0][0] == entry_of(*next(m for m in marks if bulk.partition_of(m[0]) == 0))
    with pytest.raises(ValueError, match="out of the range"):
        bulk.put_entries(0, [(b"d" * DIGEST_BYTES, "usage.calls:0", OFFSET_MASK + 1, 5)])


def test_a_round_that_forgets_a_key_is_settled_key_by_key() -> None:
    packed = round_marks(LOG, [(key(0, 0), None), (key(1, 0), Mark(5, Position("a:0", 1)))], 3)
    assert packed.entries is None and len(packed.records) == 1


def test_a_digest_found_across_two_held_ones_is_not_taken_for_a_mark() -> None:
    """`get` and `put` look a digest up with one `bytes.find` over a shard's digests:
    a match straddling two of them is not a mark."""
    table = MarkTable()
    first, second = b"\x01" * 6 + b"abcdef", b"ghijkl" + b"\x02" * 6
    table.put(first, 1, 10)
    table.put(second, 2, 20)
    straddling = b"abcdef" + b"ghijkl"
    assert table.get(straddling) is None
    table.put(straddling, 3, 30)
    assert table.count == 3
    assert [table.get(d) for d in (first, second, straddling)] == [(1, 10), (2, 20), (3, 30)]
    table.put(straddling, 4, 40)  # in place
    assert table.count == 3 and table.get(straddling) == (4, 40)
    assert table.get(first) == (1, 10) and table.get(second) == (2, 20)
