"""The latency floor's relay writes what a worker's round writes, on topics of its own."""

from __future__ import annotations

import time

import orjson

from bench.floor import MARK_BYTES, FloorTopics, round_records, spend
from processor.dev import simulator as sim

TOPICS = FloorTopics.under("bench-abc.")


def test_the_floor_reads_and_writes_apart_from_the_worker() -> None:
    assert TOPICS.inputs == (
        "bench-abc.floor." + sim.USAGE_CALLS,
        "bench-abc.floor." + sim.USAGE_CONFERENCING,
    )
    # measures.latency sends an event to the send prefix and its own topic.
    assert TOPICS.send_prefix + sim.USAGE_CALLS in TOPICS.inputs
    assert TOPICS.ledger == "bench-abc.floor.credits.ledger"
    assert len(set(TOPICS.every)) == 5
    assert all(t.startswith("bench-abc.floor.") for t in TOPICS.every)


def test_a_round_writes_an_entry_a_record_the_newest_state_a_key_and_marks_a_partition() -> None:
    fetched = [(3, b"t1", "e1"), (5, b"t2", "e2"), (3, b"t1", "e3"), (3, b"t3", "e4")]
    out = round_records(fetched, TOPICS)
    ledger3 = [orjson.loads(v)["cause_id"] for _, v in out[(TOPICS.ledger, 3)]]
    assert ledger3 == ["e1", "e3", "e4"]  # in order, each on its record's partition
    assert [k for k, _ in out[(TOPICS.ledger, 3)]] == [b"t1", b"t1", b"t3"]
    assert [orjson.loads(v)["cause_id"] for _, v in out[(TOPICS.ledger, 5)]] == ["e2"]
    assert [k for k, _ in out[(TOPICS.state, 3)]] == [b"t1", b"t3"]
    assert [k for k, _ in out[(TOPICS.state, 5)]] == [b"t2"]
    assert out[(TOPICS.marks, 3)] == [(None, b"m" * MARK_BYTES * 3)]
    assert out[(TOPICS.marks, 5)] == [(None, b"m" * MARK_BYTES)]
    assert len(out) == 6


def test_an_empty_round_writes_nothing() -> None:
    assert round_records([], TOPICS) == {}


def test_spend_burns_the_threads_cpu_it_is_asked_for() -> None:
    start = time.thread_time()
    for _ in range(100):
        spend(200.0)
    assert time.thread_time() - start >= 100 * 200e-6
    before = time.thread_time()
    spend(0.0)
    assert time.thread_time() - before < 0.01
