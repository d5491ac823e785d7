"""The bookkeeping behind processor/consumer.py: only records the handler took commit."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from faust.types import TP
from intervaltree import Interval, IntervalTree  # type: ignore[import-untyped]

from processor.consumer import GuardedConsumer, Taken

A, B = TP("usage.calls", 0), TP("usage.calls", 1)


def test_a_taken_record_releases_once_per_time_it_was_taken() -> None:
    taken = Taken()
    taken.took(A, 17)
    taken.took(A, 17)  # read twice (a stale copy and a re-read one), processed twice
    assert taken.release(A, 17)
    assert taken.release(A, 17)
    assert not taken.release(A, 17)


def test_a_record_the_handler_never_took_does_not_release() -> None:
    taken = Taken()
    taken.took(A, 18)
    assert not taken.release(A, 17)  # skipped by the stream: its ack must not commit
    assert not taken.release(B, 18)
    assert taken.release(A, 18)


def test_revoked_partitions_are_forgotten() -> None:
    taken = Taken()
    taken.took(A, 1)
    taken.took(B, 1)
    taken.forget([A])
    assert not taken.release(A, 1)
    assert taken.release(B, 1)


def _consumer(committed: int | None, acked: list[int], refused: set[int]) -> Any:
    """A GuardedConsumer with just the bookkeeping Faust's `_new_offset` reads."""
    c: Any = object.__new__(GuardedConsumer)
    c.refused = {A: refused} if refused else {}
    c._acked = defaultdict(list, {A: list(acked)})
    c._acked_index = defaultdict(set, {A: set(acked)})
    c._gap = defaultdict(IntervalTree)
    c._committed_offset = defaultdict(lambda: None, {A: committed})
    return c


def test_no_commit_reaches_past_a_refused_record() -> None:
    # 5..9 processed, 10 skipped by the stream (refused), 11..14 processed.
    c = _consumer(committed=5, acked=[5, 6, 7, 8, 9, 11, 12, 13, 14], refused={10})
    assert c._new_offset(A) == 10  # next to read: the refused record
    assert c._acked[A] == [11, 12, 13, 14]  # kept for when 10 is processed


def test_a_refused_record_at_the_head_blocks_the_commit_faust_would_make() -> None:
    # Faust alone commits 15 here: it treats a head gap of one as no gap, and with no
    # committed offset it checks no head at all.
    for committed in (10, None):
        c = _consumer(committed=committed, acked=[11, 12, 13, 14], refused={10})
        assert c._new_offset(A) is None
        assert c._acked[A] == [11, 12, 13, 14]


def test_without_refusals_faust_decides() -> None:
    c = _consumer(committed=5, acked=[5, 6, 7], refused=set())
    assert c._new_offset(A) == 8


def test_a_record_missing_at_the_committed_offset_blocks_the_commit() -> None:
    # 54 was dropped from a stream's queue at a rebalance: never acked, never refused.
    # Faust alone commits 57 here, past it.
    c = _consumer(committed=54, acked=[55, 56], refused=set())
    assert c._new_offset(A) is None


def test_a_known_gap_at_the_committed_offset_does_not_block() -> None:
    # A transaction marker at 54: recorded as a gap when the read resumed after it.
    c = _consumer(committed=54, acked=[55, 56], refused=set())
    c._gap[A].addi(54, 55)
    assert c._new_offset(A) == 57


# ---- gaps ------------------------------------------------------------------------


async def test_a_gap_ends_before_the_record_that_revealed_it() -> None:
    # Committed 5 (next to read), 5 read and acked; the next record fetched is 8: 6 and
    # 7 are missing (a transaction marker, compaction). Faust records [6, 8] as the gap.
    # 8 is then dropped from a stream's queue at a rebalance, 9 is processed: with 8 in
    # the gap, the commit would pass 8, which never reached a balance.
    c = _consumer(committed=5, acked=[5, 9], refused=set())
    await c._add_gap(A, 6, 8)
    assert sorted(c._gap[A]) == [Interval(6, 8)]
    assert c._new_offset(A) == 8  # next to read: 8 itself


# ---- what the fetch loop sees of the guarded topics -----------------------------------


@dataclass(frozen=True)
class Fetched:
    offset: int


def _guarded(monkeypatch: Any, batch: list[tuple[TP, int]]) -> Any:
    """A GuardedConsumer over A and B whose fetch returns `batch`; seeks move nothing."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    async def fetched(self: Any, timeout: float) -> Any:
        for tp, offset in batch:
            yield tp, Fetched(offset)

    async def seek(self: Any, partition: TP, offset: int) -> None:
        self.sought.append((partition, offset))

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fetched)
    monkeypatch.setattr(faust_aiokafka.Consumer, "seek", seek)
    c = _consumer(committed=None, acked=[], refused=set())
    c.guarded = frozenset({A.topic})
    c.epochs, c.fetched, c.jumps, c.expected, c.seeking = Counter(), {}, {}, {}, set()
    c._seeks_running = set()
    c._read_offset = defaultdict(lambda: 1_000)  # stale, as after a seek
    c.sought = []
    c.batch = batch
    return c


async def _drain(c: Any, on: Any = None) -> list[tuple[TP, int, Any]]:
    """What Faust's fetch loop sees: each record, and the read offset it then reads."""
    seen = []
    async for tp, message in c.getmany(timeout=1.0):
        seen.append((tp, message.offset, c._read_offset[tp]))
        c._read_offset[tp] = message.offset
        if on is not None:
            await on(tp, message.offset)
    return seen


async def test_the_fetch_loop_sees_no_stale_read_offset_for_a_guarded_topic(
    monkeypatch: Any,
) -> None:
    other = TP("meter-accounts-changelog", 0)
    c = _guarded(monkeypatch, [(A, 40), (A, 41), (other, 7)])
    # Faust would drop 40 and 41 (below 1,000) and then record them as a gap.
    assert await _drain(c) == [(A, 40, None), (A, 41, None), (other, 7, 1_000)]


async def test_gaps_are_the_offsets_between_two_records_fetched_in_turn(
    monkeypatch: Any,
) -> None:
    # 43..44 hold no record (a transaction's marker, say).
    c = _guarded(monkeypatch, [(A, 41), (A, 42), (A, 45), (B, 9)])
    await _drain(c)
    assert sorted(c._gap[A]) == [Interval(43, 45)]
    assert c.jumps == {A: {43: 45}}


async def test_a_batch_fetched_before_a_seek_is_not_delivered_after_it(
    monkeypatch: Any,
) -> None:
    c = _guarded(monkeypatch, [(A, 40), (A, 41), (A, 42), (A, 43)])

    async def seek_at_41(tp: TP, offset: int) -> None:
        if offset == 41:
            await c.seek(A, 30)  # the rest of this batch would run ahead of 30..40
            batch[:] = [(A, 30), (A, 31)]  # what the log holds from there

    batch = c.batch
    assert [o for _, o, _ in await _drain(c, seek_at_41)] == [40, 41]
    assert c.sought == [(A, 30)] and c.expected[A] == 30 and c.fetched[A] == 29
    # The fetch from the new position is delivered, and its first record is no gap.
    assert [o for _, o, _ in await _drain(c)] == [30, 31]
    assert not c.jumps


async def test_a_partition_is_taken_in_order_and_a_hole_is_read_again() -> None:
    c: Any = object.__new__(GuardedConsumer)
    c.guarded = frozenset({A.topic})
    c.jumps, c.expected, c.seeking, c._seeks_running = {A: {13: 15}}, {A: 10}, set(), set()
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    c.seek = seek
    assert c.admit(A, 10) and c.admit(A, 11) and c.admit(A, 12)
    assert c.admit(A, 15)  # 13..14 hold no record
    assert not c.admit(A, 17)  # 16 never came: taking 17 would mark 16 applied
    assert not c.admit(A, 18)
    await asyncio.sleep(0)
    assert sought == [(A, 16)]  # one seek back, however many records came after
    assert c.admit(A, 12)  # a record read again is taken (its account recognises it)
    assert c.admit(A, 16) and c.admit(A, 17)
    assert not c.seeking
