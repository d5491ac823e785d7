"""The bookkeeping behind processor/worker/consumer.py: only records the handler took commit."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import CommitFailedError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from intervaltree import Interval, IntervalTree
from mode.utils.locks import Event

from processor.kafka import glue
from processor.kafka.glue import ConsumerThread
from processor.kafka.stepping import step
from processor.worker import consumer
from processor.worker.consumer import GuardedConsumer, Taken
from tests.support.worker_app import worker_faust_app

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
    glue.set_consumer_state(
        c,
        acked=defaultdict(list, {A: list(acked)}),
        acked_index=defaultdict(set, {A: set(acked)}),
        gap=defaultdict(IntervalTree),
        committed_offset=defaultdict(lambda: None, {A: committed}),
    )
    return c


def test_no_commit_reaches_past_a_refused_record() -> None:
    # 5..9 processed, 10 skipped by the stream (refused), 11..14 processed.
    c = _consumer(committed=5, acked=[5, 6, 7, 8, 9, 11, 12, 13, 14], refused={10})
    assert c.commit_offset(A) == 10  # next to read: the refused record
    assert c.acked[A] == [11, 12, 13, 14]  # kept for when 10 is processed


def test_a_refused_record_at_the_head_blocks_the_commit_faust_would_make() -> None:
    # Faust alone commits 15 here: it treats a head gap of one as no gap, and with no
    # committed offset it checks no head at all.
    for committed in (10, None):
        c = _consumer(committed=committed, acked=[11, 12, 13, 14], refused={10})
        assert c.commit_offset(A) is None
        assert c.acked[A] == [11, 12, 13, 14]


def test_without_refusals_faust_decides() -> None:
    c = _consumer(committed=5, acked=[5, 6, 7], refused=set())
    assert c.commit_offset(A) == 8


def test_a_record_missing_at_the_committed_offset_blocks_the_commit() -> None:
    # 54 was dropped from a stream's queue at a rebalance: never acked, never refused.
    # Faust alone commits 57 here, past it.
    c = _consumer(committed=54, acked=[55, 56], refused=set())
    assert c.commit_offset(A) is None


def test_a_known_gap_at_the_committed_offset_does_not_block() -> None:
    # A transaction marker at 54: recorded as a gap when the read resumed after it.
    c = _consumer(committed=54, acked=[55, 56], refused=set())
    c.gaps[A].addi(54, 55)
    assert c.commit_offset(A) == 57


# ---- gaps ------------------------------------------------------------------------


async def test_a_gap_ends_before_the_record_that_revealed_it() -> None:
    # Committed 5 (next to read), 5 read and acked; the next record fetched is 8: 6 and
    # 7 are missing (a transaction marker, compaction). Faust records [6, 8] as the gap.
    # 8 is then dropped from a stream's queue at a rebalance, 9 is processed: with 8 in
    # the gap, the commit would pass 8, which never reached a balance.
    c = _consumer(committed=5, acked=[5, 9], refused=set())
    await c.record_gap(A, 6, 8)
    assert sorted(c.gaps[A]) == [Interval(6, 8)]
    assert c.commit_offset(A) == 8  # next to read: 8 itself


# ---- seeks ------------------------------------------------------------------------


async def test_a_seek_keeps_the_input_partitions_paused_until_the_flow_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust resumes the streams' flow a loop turn or more after its seek returns;
    records fetched in between would be dequeued with the flow stopped (skipped) while
    later ones are taken: a hole. So the partitions resume with the flow."""

    async def no_seek(self: Any) -> None:
        return None

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", no_seek)
    c: Any = object.__new__(GuardedConsumer)
    c.guarded = frozenset({A.topic})
    glue.set_consumer_state(c, read_offset={})
    c.resuming = set()
    c.can_resume_flow = Event()
    assigned = {A, B}
    paused: set[TP] = set()
    c.active_partitions = lambda: assigned - paused
    c.assignment = lambda: set(assigned)
    c.pause_partitions = paused.update
    c.resume_partitions = paused.difference_update
    fetching: set[TP] = set(assigned)  # aiokafka's own view: what it fetches

    class Thread:
        async def pause_fetching(self, tps: set[TP]) -> None:
            fetching.difference_update(tps)

        async def resume_fetching(self, tps: set[TP]) -> None:
            fetching.update(tps & assigned)

    glue.set_consumer_state(c, thread=Thread())

    await c.perform_seek()
    for _ in range(5):
        await asyncio.sleep(0)
    assert paused == {A, B}  # the seek is done, the flow not yet resumed
    assert fetching == set()  # and aiokafka fetches nothing meanwhile, positions kept

    assigned.discard(B)  # a rebalance moved B meanwhile
    c.can_resume_flow.set()  # Faust's resume_flow
    for _ in range(5):
        await asyncio.sleep(0)
    assert paused == {B}  # A resumed with the flow; B, no longer assigned, left alone
    assert fetching == {A}


class _Fetcher:
    """aiokafka's fetcher, as far as the seek counting wraps it."""

    def __init__(self) -> None:
        self.positions: dict[Any, Any] = {}

    def seek_to(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    def request_offset_reset(self, tps: list[Any], strategy: Any) -> None:
        for tp in tps:
            self.positions[tp] = strategy


def test_a_fetch_that_came_back_before_a_seek_of_its_partition_is_stale() -> None:
    thread: Any = object.__new__(ConsumerThread)
    thread.seeked = {}
    fetcher = _Fetcher()
    thread.count_seeks(fetcher)
    before = thread.seeks  # a fetch comes back
    fetcher.seek_to(A, 266)  # a rebalance's seek to the committed offset
    assert fetcher.positions[A] == 266
    assert thread.stale(A, before)  # read from the old position: not to be delivered
    assert not thread.stale(B, before)  # B was not sought: its records are current
    after = thread.seeks  # a fetch after the seek
    assert not thread.stale(A, after)
    fetcher.request_offset_reset([B], "earliest")  # a seek to the beginning
    assert thread.stale(B, after) and not thread.stale(A, after)


async def test_the_worker_fetches_read_committed_and_lets_the_broker_fill_each_fetch() -> None:
    # Faust builds its aiokafka consumer with a 1.5 s wait, a one-byte minimum and
    # read_uncommitted; the worker's consumer must ask for its own (the private
    # attributes are those processor/kafka/glue lists and checks).
    app = worker_faust_app()
    consumer.install(app, ["usage.calls"])
    worker_consumer = app.consumer
    assert isinstance(worker_consumer, GuardedConsumer)
    thread = worker_consumer.thread
    built = thread._create_worker_consumer(app.transport)  # noqa: SLF001 - as Faust builds it
    try:
        asked = (
            built._fetch_min_bytes,  # noqa: SLF001 - what the glue sets
            built._fetch_max_wait_ms,  # noqa: SLF001
            built._isolation_level,  # noqa: SLF001
        )
        assert asked == (consumer.FETCH_MIN_BYTES, consumer.FETCH_MAX_WAIT_MS, "read_committed")
        assert consumer.FETCH_MIN_BYTES > 1
    finally:
        await built.stop()


async def test_a_hand_over_that_never_waits_runs_at_once_without_a_task() -> None:
    done: list[int] = []

    async def deliver(n: int) -> None:
        done.append(n)

    assert step(deliver(1)) is None
    assert done == [1]


async def test_a_hand_over_that_waits_finishes_when_awaited_or_is_cancelled() -> None:
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    log: list[str] = []

    async def deliver() -> str:
        log.append("started")
        await asyncio.sleep(0)  # a bare yield to the loop
        value = await room  # a full buffer: waits for room
        log.append("delivered")
        return value

    rest = step(deliver())
    assert rest is not None and log == ["started"]
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0.01)
    assert not task.done()
    room.set_result("ok")
    assert await task == "ok" and log == ["started", "delivered"]

    async def stuck() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            log.append("unwound")

    rest = step(stuck())
    assert rest is not None
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    task.cancel()  # what wait_first does when a rebalance suspends the flow
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log[-1] == "unwound"


# ---- the fetch loop's hand-over to the sink ----------------------------------------


class _Sink:
    def __init__(self, room_after: int | None = None) -> None:
        self.lists: list[list[Any]] = []
        self.rests: list[int] = []  # each hand-over's word on the rest of its fetch
        self.room_after = room_after
        self.waited = 0

    def stage(self, messages: list[Any], rest: int) -> None:
        self.lists.append(list(messages))
        self.rests.append(rest)

    def full(self) -> bool:
        return self.room_after is not None and len(self.lists) >= self.room_after

    async def room(self) -> None:
        self.waited += 1
        self.room_after = None


class _Message:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self.topic, self.offset = tp, tp.topic, offset


def _looping_consumer(
    fetch: list[tuple[TP, Any]], sink: _Sink
) -> tuple[Any, list[Any], SimpleNamespace]:
    """A GuardedConsumer whose fetch loop runs over one fetch, then stops."""
    c: Any = object.__new__(GuardedConsumer)
    called: list[Any] = []
    stopped, fetcher_stopped = Event(), Event()
    fetcher = SimpleNamespace(_stopped=fetcher_stopped)  # Faust's fetcher service
    c.guarded = frozenset({A.topic, "credits.commands"})
    c.direct = frozenset({A.topic})
    c.sink = sink
    glue.set_consumer_state(
        c,
        thread=SimpleNamespace(stale=lambda tp, at: False),
        stopped=stopped,
        crashed=Event(),
        read_offset=defaultdict(lambda: None),
        commit_every=None,
    )
    c.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
    c.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    c.suspend_flow = Event()

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    async def wait_first(first: Any, *others: Any) -> None:
        for other in others:
            other.close()
        await first

    async def callback(message: Any) -> None:
        called.append(message)

    async def getmany(timeout: float) -> Any:
        for item in fetch:
            yield item
        fetcher_stopped.set()

    c.sleep, c.wait_first, c.callback, c.getmany = sleep, wait_first, callback, getmany
    c.fetch_size = len(fetch)  # as `getmany` counts the fetch it hands out
    c.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
    return c, called, fetcher


async def test_the_fetch_loop_hands_direct_records_over_in_lists_the_rest_singly() -> None:
    cmd = TP("credits.commands", 0)
    fetch = []
    for i in range(150):
        fetch.append((A, _Message(A, i)))
        if i % 3 == 0:
            fetch.append((cmd, _Message(cmd, i // 3)))
    sink = _Sink()
    c, called, fetcher = _looping_consumer(fetch, sink)
    await c.fetch_loop(fetcher)
    handed = [m for batch in sink.lists for m in batch]
    assert [m.offset for m in handed] == list(range(150))  # all, in order, once
    assert all(0 < len(batch) <= 100 for batch in sink.lists)  # the loop yields between
    # The sink knows how much of the fetch follows each hand-over: the record that made
    # the loop yield and the 99 after it, then none.
    assert sink.rests == [100, 0]
    assert [m.offset for m in called] == list(range(50))  # commands through Faust's path
    assert c.read_offsets[A] == 149 and c.read_offsets[cmd] == 49


async def test_a_fetch_handed_over_in_parts_ends_with_a_last_one_even_if_empty() -> None:
    cmd = TP("credits.commands", 0)
    # The command after a hundred direct records makes the loop hand them over, and
    # nothing direct follows it.
    fetch = [(A, _Message(A, i)) for i in range(100)] + [(cmd, _Message(cmd, 0))]
    sink = _Sink()
    c, called, fetcher = _looping_consumer(fetch, sink)
    await c.fetch_loop(fetcher)
    assert [len(batch) for batch in sink.lists] == [100, 0]
    assert sink.rests == [1, 0] and len(called) == 1


async def test_a_fetch_handed_over_at_once_says_nothing_more_follows() -> None:
    sink = _Sink()
    c, _, fetcher = _looping_consumer([(A, _Message(A, i)) for i in range(30)], sink)
    await c.fetch_loop(fetcher)
    assert [len(batch) for batch in sink.lists] == [30] and sink.rests == [0]


async def test_the_fetch_loop_waits_for_room_when_the_sink_is_full() -> None:
    fetch = [(A, _Message(A, i)) for i in range(250)]
    sink = _Sink(room_after=1)
    c, _, fetcher = _looping_consumer(fetch, sink)
    await c.fetch_loop(fetcher)
    assert sink.waited == 1
    assert sum(len(batch) for batch in sink.lists) == 250


async def test_a_commit_by_count_goes_beside_the_fetch_loop_one_at_a_time() -> None:
    fetch = [(A, _Message(A, i)) for i in range(250)]
    sink = _Sink()
    c, _, fetcher = _looping_consumer(fetch, sink)
    glue.set_consumer_state(c, commit_every=10, n_acked=10)
    answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    began: list[int] = []

    async def commit() -> bool:
        began.append(sum(len(batch) for batch in sink.lists))
        await answered
        return True

    c.commit = commit
    await c.fetch_loop(fetcher)
    # The commit began as the loop went on, and every record was handed over while it
    # still waited for the coordinator.
    assert sum(len(batch) for batch in sink.lists) == 250
    assert len(began) == 1 and began[0] < 250 and not answered.done()
    c.commit_aside()  # the count reached again meanwhile: left to the next
    answered.set_result(None)
    await asyncio.sleep(0)
    assert len(began) == 1 and c.committing is None
    c.commit_aside()
    await asyncio.sleep(0)
    assert began[1:] == [250]


async def test_a_failed_commit_by_count_crashes_the_consumer() -> None:
    c, _, _ = _looping_consumer([], _Sink())
    failure = CommitFailedError("rebalanced")
    crashed: list[BaseException] = []

    async def commit() -> bool:
        raise failure

    async def crash(reason: BaseException) -> None:
        crashed.append(reason)

    c.commit, c.crash = commit, crash
    c.commit_aside()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert crashed == [failure] and c.committing is None


def _fetching_consumer(
    records: dict[TP, list[Any]], active: set[TP] | None, buffered: frozenset[TP] = frozenset()
) -> tuple[Any, dict[TP, int]]:
    """A GuardedConsumer whose next fetch returns `records`; the end offsets its monitor
    was handed are returned next to it."""
    c: Any = object.__new__(GuardedConsumer)
    tracked: dict[TP, int] = {}
    c.app = SimpleNamespace(
        consumer_generation_id=7,
        monitor=SimpleNamespace(track_tp_end_offset=tracked.__setitem__),
    )
    c.flow_active = True
    c.highwater = lambda tp: 1_000 + tp.partition
    glue.set_consumer_state(c, stopped=Event(), crashed=Event(), buffered_partitions=set(buffered))

    async def wait_next_records(timeout: float) -> Any:
        return records, active

    c._wait_next_records = wait_next_records  # noqa: SLF001 (a stand-in for the fetcher)
    return c, tracked


def _fetched(tp: TP, offsets: range) -> list[Any]:
    return [
        SimpleNamespace(
            topic=tp.topic,
            partition=tp.partition,
            offset=o,
            timestamp=1_700_000_000_000 + o,
            timestamp_type=0,
            headers=[],
            key=b"tenant",
            value=b"{}",
            checksum=None,
            serialized_key_size=6,
            serialized_value_size=2,
        )
        for o in offsets
    ]


async def test_getmany_yields_each_partitions_records_in_order_as_faust_messages() -> None:
    cmd = TP("credits.commands", 0)
    c, tracked = _fetching_consumer(
        {A: _fetched(A, range(5)), B: _fetched(B, range(10, 13)), cmd: _fetched(cmd, range(2))},
        active=None,
    )
    got = [(tp, m) async for tp, m in c.getmany(timeout=1.0)]
    for tp, expected in ((A, [0, 1, 2, 3, 4]), (B, [10, 11, 12]), (cmd, [0, 1])):
        assert [m.offset for t, m in got if t == tp] == expected
    _, first = got[0]
    assert (first.topic, first.partition, first.timestamp) == (A.topic, 0, 1_700_000_000.0)
    assert first.generation_id == 7 and first.tp == A
    # The monitor learns each partition's end offset, once a fetch.
    assert tracked == {A: 1_000, B: 1_001, cmd: 1_000}


async def test_getmany_leaves_out_partitions_neither_active_nor_buffered() -> None:
    inactive, buffered = TP("usage.calls", 2), TP("usage.calls", 3)
    c, tracked = _fetching_consumer(
        {
            A: _fetched(A, range(2)),
            inactive: _fetched(inactive, range(2)),
            buffered: _fetched(buffered, range(1)),
        },
        active={A},
        buffered=frozenset({buffered}),
    )
    got = [(tp, m.offset) async for tp, m in c.getmany(timeout=1.0)]
    assert got == [(A, 0), (A, 1), (buffered, 0)]
    assert inactive not in tracked


async def test_getmany_stops_when_the_flow_stops_or_the_generation_changes() -> None:
    for stop in ("flow", "generation"):
        c, _ = _fetching_consumer({A: _fetched(A, range(5)), B: _fetched(B, range(5))}, None)
        got = []
        async for _tp, m in c.getmany(timeout=1.0):
            got.append(m.offset)
            if len(got) == 2:  # a rebalance begins while the fetch is handed over
                if stop == "flow":
                    c.flow_active = False
                else:
                    c.app.consumer_generation_id = 8
        assert got == [0, 1], stop


async def test_getmany_while_the_flow_is_stopped_seeks_back_and_yields_nothing() -> None:
    c, _ = _fetching_consumer({A: _fetched(A, range(3))}, None)
    c.flow_active = False
    seeks: list[bool] = []

    async def perform_seek() -> None:
        seeks.append(True)

    c.perform_seek = perform_seek
    c.log = SimpleNamespace(dev=lambda *a: None, warning=lambda *a: None)
    assert [m async for m in c.getmany(timeout=1.0)] == []
    assert seeks == [True]
