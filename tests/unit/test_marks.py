"""The compact dedupe marks (processor/worker/marks.py) and their records in Kafka
(processor/worker/marks_log.py): a look-up answers as a dict of the live marks would,
after any writes, sweeps and recoveries."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from hashlib import blake2b
from typing import Any

import pytest
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.dedupe import dedupe_key, dedupe_tenant
from processor.core.stored import Mark, Position
from processor.kafka.routing import partition_for
from processor.worker import marks as marks_module
from processor.worker.codec import dump_mark
from processor.worker.marks import (
    DIGEST_BYTES,
    NEVER,
    SHARD_MAX,
    Budget,
    MarkStore,
    MarkTable,
    digest,
)
from processor.worker.marks_log import (
    ENTRY,
    MARKS_PER_RECORD,
    MarksLog,
    marks_records,
    pack_marks,
    read_record,
    recover_marks,
    unpack_marks,
)

PARTITIONS = 3
LOG = MarksLog("app-dedupe-marks", dedupe_tenant)
WIDE = Budget(1 << 30, 1 << 30)


def key(tenant: int, event: int) -> str:
    return dedupe_key(f"t{tenant}", "call", f"e{event}")


class FakeReader:
    """ChangelogReader's surface over records held in memory: topic -> partition ->
    [(key, value)]."""

    def __init__(self, topics: dict[str, dict[int, list[tuple[bytes | None, bytes | None]]]]):
        self.topics = topics
        self.read_tps: list[TP] = []

    async def read(
        self, tps: Iterable[TP], apply: Callable[[int, bytes | None, bytes | None], None]
    ) -> dict[TP, int]:
        out = {}
        for tp in sorted(set(tps)):
            self.read_tps.append(tp)
            records = self.topics.get(tp.topic, {}).get(tp.partition, [])
            for k, v in records:
                apply(tp.partition, k, v)
            out[tp] = len(records) - 1
        return out

    async def end_offsets(self, tps: Iterable[str]) -> dict[str, int]:
        found = {}
        for tp in tps:
            topic, _, partition = tp.rpartition(":")
            if topic in self.topics:
                found[tp] = len(self.topics[topic].get(int(partition), []))
        return found


def reader(records: Any) -> Any:
    return FakeReader(records)


# An operation: ("put", tenant, event, expires, offset) | ("sweep", now) | ("recover", now)
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.integers(0, 5),
            st.integers(0, 40),
            st.integers(0, 100),
            st.integers(0, 1 << 40),
        ),
        st.tuples(st.just("sweep"), st.integers(0, 100)),
        st.tuples(st.just("recover"), st.integers(0, 100)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, shard_max=st.sampled_from([1, 2, 3, SHARD_MAX]))
async def test_a_look_up_answers_as_a_dict_of_the_live_marks(
    ops: list[tuple[Any, ...]], shard_max: int
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        # Tiny shards: most writes split one, the directory doubles often.
        mp.setattr(marks_module, "SHARD_BYTES", shard_max * DIGEST_BYTES)
        store = MarkStore(PARTITIONS)
        model: dict[str, Mark] = {}
        last: dict[str, int] = {}
        written: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        now = 0
        for op in ops:
            if op[0] == "put":
                _, tenant, event, expires, offset = op
                k = key(tenant, event)
                # The engine writes a mark again with a window at least as late (its
                # event's time, or the clock, only moves on): recovery keeps the
                # newest unexpired one.
                expires = last[k] = max(expires, last.get(k, 0))
                mark = Mark(expires, Position(f"usage.calls:{tenant % 2}", offset))
                store[k] = mark
                model[k] = mark
                for partition, value in marks_records(LOG, [(k, mark)], PARTITIONS):
                    written.setdefault(partition, []).append((None, value))
            elif op[0] == "sweep":
                now = max(now, op[1])
                store.sweep(now, Budget(WIDE.shards, WIDE.marks))
                model = {k: m for k, m in model.items() if m.expires > now}
            else:
                now = max(now, op[1])
                store = MarkStore(PARTITIONS)
                await recover_marks(
                    reader({LOG.topic: written}),
                    store,
                    set(range(PARTITIONS)),
                    LOG.topic,
                    None,
                    now=now,
                )
                model = {k: m for k, m in model.items() if m.expires > now}
            for tenant in range(6):
                for event in range(41):
                    k = key(tenant, event)
                    assert store.get(k) == model.get(k), (k, op)
            assert len(store) == len(model)


def test_shards_split_as_they_fill_and_every_mark_stays_found() -> None:
    table = MarkTable()
    digests = [digest(key(0, i)) for i in range(5000)]
    for i, d in enumerate(digests):
        table.put(d, i, 1000 + i)
    assert len(table.data) > 5000 // SHARD_MAX
    assert all(n <= SHARD_MAX for n in table.shard_sizes())
    assert len(table.directory) == 1 << table.depth
    assert all(table.get(d) == (i, 1000 + i) for i, d in enumerate(digests))
    assert table.get(digest("never written")) is None
    assert table.count == 5000


def test_a_mark_written_again_replaces_the_one_before() -> None:
    store = MarkStore(PARTITIONS)
    k = key(1, 1)
    store[k] = Mark(50, Position("usage.calls:0", 3))
    store[k] = Mark(90, Position("usage.calls:1", 4))
    assert store[k] == Mark(90, Position("usage.calls:1", 4))
    assert len(store) == 1
    store.sweep(60, Budget(100, 100))
    assert store[k] == Mark(90, Position("usage.calls:1", 4))
    del store[k]
    assert k not in store


def _split_often(marks: int, shard_marks: int) -> tuple[MarkStore, int]:
    """A store of `marks` marks (expiring at 10) in shards of `shard_marks`, and its
    number of shards."""
    store = MarkStore(PARTITIONS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(marks_module, "SHARD_BYTES", shard_marks * DIGEST_BYTES)
        for i in range(marks):
            store[key(i % 7, i)] = Mark(10, Position("usage.calls:0", i))
    return store, sum(len(t.data) for t in store.tables.values())


def test_a_sweep_does_a_bounded_amount_of_work_and_takes_turns() -> None:
    store, shards = _split_often(600, 4)
    assert shards > 100
    dropped = 0
    for _ in range(shards):
        budget = Budget(10, 1_000)
        dropped += store.sweep(20, budget)
        assert budget.shards >= 0
        if dropped == 600:
            break
    assert dropped == 600 and len(store) == 0
    # Within its grace a mark past its window may stay; past it, it goes.
    store[key(0, 0)] = Mark(10, Position("usage.calls:0", 0))
    assert store.sweep(15, Budget(1000, 1000), grace=10) == 0
    assert store.sweep(21, Budget(1000, 1000), grace=10) == 1
    # A budget of marks stops the sweep: a slice stays short.
    for i in range(50):
        store[key(0, i)] = Mark(10, Position("usage.calls:0", i))
    budget = Budget(1000, 1)
    assert 0 < store.sweep(20, budget) < 50 and budget.marks <= 0


def test_a_sweep_leaves_shards_of_its_budget_only_once_every_shard_was_looked_at() -> None:
    """The timer goes on slice after slice until one leaves budget to spare."""
    store, shards = _split_often(900, 2)
    budget = Budget(shards - 1, 1 << 20)
    store.sweep(5, budget)
    assert budget.shards == 0
    budget = Budget(shards + 1, 1 << 20)
    store.sweep(5, budget)
    assert budget.shards == 1


def test_a_mark_far_ahead_is_held_as_never_expiring() -> None:
    store = MarkStore(PARTITIONS)
    store[key(0, 1)] = Mark(1 << 40, Position("usage.calls:0", 1))
    assert store[key(0, 1)].expires == NEVER
    store.sweep(NEVER - 1, Budget(100, 100))
    assert key(0, 1) in store


def test_a_marks_record_round_trips_and_skips_what_expired() -> None:
    marks = [
        (key(0, i), Mark(100 + i, Position(f"usage.calls:{i % 3}", 1_000 + i))) for i in range(10)
    ]
    raw = pack_marks(marks)
    assert raw[0] == 1  # the layout's version
    names, _entries = read_record(raw)
    assert sorted(names) == ["usage.calls:0", "usage.calls:1", "usage.calls:2"]
    back = list(unpack_marks(raw))
    assert back == [(digest(k), m.position.tp, m.position.offset, m.expires) for k, m in marks]
    assert [e for _, _, _, e in unpack_marks(raw, now=104)] == list(range(105, 110))
    assert list(unpack_marks(raw, now=109)) == []  # the whole record is past
    assert len(raw) < 20 + 3 * 16 + 10 * ENTRY.size
    with pytest.raises(ValueError, match="version"):
        list(unpack_marks(b"\x07" + raw[1:]))
    with pytest.raises(ValueError, match="length"):
        list(unpack_marks(raw[:-1]))


def test_a_round_is_one_record_per_partition() -> None:
    marks = [
        (key(t, i), Mark(100, Position("usage.calls:0", i))) for t in range(6) for i in range(5)
    ]
    records = marks_records(LOG, [*marks, (key(9, 9), None)], PARTITIONS)
    partitions = {partition_for(f"t{t}", PARTITIONS) for t in range(6)}
    assert sorted(p for p, _ in records) == sorted(partitions)
    for partition, raw in records:
        held = {d for d, *_ in unpack_marks(raw)}
        assert held == {
            digest(k) for k, _ in marks if partition_for(dedupe_tenant(k), PARTITIONS) == partition
        }
    # A very large round is cut into several records.
    many = [
        (key(0, i), Mark(100, Position("usage.calls:0", i))) for i in range(MARKS_PER_RECORD + 1)
    ]
    assert len(marks_records(LOG, many, PARTITIONS)) == 2


async def test_recovery_reads_the_legacy_changelog_first_then_the_marks_topic() -> None:
    """An upgrade in the middle of a window: marks the old worker wrote (one JSON
    record per mark, tombstones for forgotten ones) still catch repeats."""
    p = partition_for("t0", PARTITIONS)
    legacy = "app-dedupe-changelog"
    old = Mark(500, Position("usage.calls:0", 7))
    rewritten = Mark(600, Position("usage.calls:0", 9))
    records = {
        legacy: {
            p: [
                (key(0, 1).encode(), dump_mark(old)),
                (key(0, 2).encode(), dump_mark(old)),
                (key(0, 2).encode(), None),  # forgotten
                (key(0, 3).encode(), dump_mark(Mark(50, old.position))),  # expired
                (key(0, 4).encode(), dump_mark(old)),
            ]
        },
        LOG.topic: {p: [(None, pack_marks([(key(0, 4), rewritten), (key(0, 5), rewritten)]))]},
    }
    store = MarkStore(PARTITIONS)
    store[key(0, 9)] = old  # held before: read again, so dropped
    r = reader(records)
    held = await recover_marks(r, store, {p}, LOG.topic, legacy, now=100)
    assert held == 2
    assert store.get(key(0, 1)) == old
    assert store.get(key(0, 2)) is None
    assert store.get(key(0, 3)) is None
    assert store.get(key(0, 4)) == rewritten  # the newer write wins
    assert store.get(key(0, 5)) == rewritten
    assert store.get(key(0, 9)) is None
    assert [tp.topic for tp in r.read_tps] == [legacy, LOG.topic]
    # No legacy topic: only the marks topic is read.
    r = reader({LOG.topic: records[LOG.topic]})
    store = MarkStore(PARTITIONS)
    await recover_marks(r, store, {p}, LOG.topic, legacy, now=100)
    assert [tp.topic for tp in r.read_tps] == [LOG.topic]
    assert store.get(key(0, 1)) is None and store.get(key(0, 5)) == rewritten


def test_the_store_keeps_only_the_partitions_it_is_given() -> None:
    store = MarkStore(PARTITIONS)
    for t in range(6):
        store[key(t, 0)] = Mark(100, Position("usage.calls:0", t))
    keep = {partition_for("t0", PARTITIONS)}
    store.keep_only(keep)
    assert set(store.tables) == keep
    assert key(0, 0) in store
    with pytest.raises(TypeError):
        iter(store)


def test_a_bulk_load_holds_what_puts_one_by_one_would() -> None:
    """Recovery's way in: the newest of two marks under one digest wins, and the
    shards are as a table grown one put at a time would have them."""
    n = 20_000
    keys = bytearray()
    vals = bytearray()
    expected: dict[bytes, tuple[int, int]] = {}
    for i in [*range(n), *range(0, n, 7)]:  # every 7th written again, later
        d = digest(key(i % 50, i))
        value = (i, 5_000 + i + (n if d in expected else 0))
        keys += d
        vals += marks_module.VALUE.pack(*value)
        expected[d] = value
    table = MarkTable()
    table.load(keys, vals)
    assert table.count == n
    assert all(table.get(d) == v for d, v in expected.items())
    assert table.get(digest("never written")) is None
    assert all(n <= SHARD_MAX for n in table.shard_sizes())
    assert len(table.directory) == 1 << table.depth
    # It goes on like any table: puts, splits and sweeps.
    for i in range(n, n + 5_000):
        table.put(digest(key(0, i)), i, 1)
    assert table.get(digest(key(0, n + 10))) == (n + 10, 1)
    assert table.sweep(4_999 + n // 2, Budget(1 << 20, 1 << 30)) > 5_000


def test_the_digest_cache_never_holds_more_than_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(marks_module, "CACHED_DIGESTS", 8)
    for n in range(100):
        key = dedupe_key("acme", "usage", f"event-{n}")
        assert digest(key) == blake2b(key.encode(), digest_size=DIGEST_BYTES).digest()
        assert len(marks_module._digests) <= 8  # noqa: SLF001
