"""Faust's aiokafka driver, reshaped: the consumer thread (or its main-loop stand-in)
and the fetch loop. Part of the glue (processor/kafka/glue/__init__.py lists every
private member reached here, in `REACHES`, and why)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import maybe_async, notify

from processor.kafka.glue.codecs import quick_fetches
from processor.kafka.stepping import step

# Faust's bookkeeping a unit test may set on a consumer built without Faust's __init__.
CONSUMER_STATE = frozenset(
    {
        "acked",
        "acked_index",
        "waiting_for_ack",
        "unacked_messages",
        "gap",
        "read_offset",
        "committed_offset",
        "commit_every",
        "thread",
        "stopped",
        "crashed",
        "buffered_partitions",
        "n_acked",
    }
)


class Fetched(dict[TP, list[Any]]):
    """One fetch's records, with the consumer thread's seek count when they came back."""

    def __init__(self, records: Mapping[TP, list[Any]], seeks: int) -> None:
        super().__init__(records)
        self.seeks = seeks


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, counting seeks so that stale fetches can be told apart.

    A fetch comes back from the thread to the main loop later than it left aiokafka; a
    seek the thread carries out in between (a rebalance's seek to the committed offsets)
    makes its records stale: read from the old position, delivered after the new one
    was set. Delivered, they would be processed ahead of the records the seek is about
    to read again, a hole. Each seek is numbered as aiokafka's fetcher makes it, and
    each fetch carries the number of seeks made when it came back.
    """

    seeks = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per partition, the number of its last seek.
        self.seeked: dict[TP, int] = {}

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # These are read by the aiokafka consumer's start(), when it builds its fetcher;
        # Faust passes none through. The values are the worker's (FetchLoop).
        owner = cast(FetchLoop, self.consumer)
        if owner.fetch_max_wait_ms is not None:
            consumer._fetch_max_wait_ms = owner.fetch_max_wait_ms
        if owner.fetch_min_bytes is not None:
            consumer._fetch_min_bytes = owner.fetch_min_bytes
        if owner.isolation_level is not None:
            consumer._isolation_level = owner.isolation_level
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        fetcher = self._ensure_consumer()._fetcher
        self.count_seeks(fetcher)
        quick_fetches(fetcher)

    def count_seeks(self, fetcher: Any) -> None:
        """Number every position change aiokafka's fetcher makes (seek, reset)."""
        seek_to, reset = fetcher.seek_to, fetcher.request_offset_reset

        def counted_seek_to(tp: Any, offset: int) -> None:
            seek_to(tp, offset)
            self._count((tp,))

        def counted_reset(tps: Iterable[Any], strategy: Any) -> Any:
            tps = list(tps)
            try:
                return reset(tps, strategy)
            finally:
                self._count(tps)

        fetcher.seek_to = counted_seek_to
        fetcher.request_offset_reset = counted_reset

    def _count(self, tps: Iterable[Any]) -> None:
        self.seeks += 1
        for tp in tps:
            self.seeked[TP(tp.topic, tp.partition)] = self.seeks

    async def pause_fetching(self, tps: Iterable[TP]) -> None:
        """Pause partitions in aiokafka itself, not only in Faust's view.

        Faust's pause only takes a partition out of the set its fetch loop hands over:
        aiokafka still fetches it, and the records it returns then are dropped with its
        position already past them. Paused in aiokafka, they are neither fetched nor
        handed out, and the position stays.
        """
        await self.call_thread(self._pause_here, set(tps), True)

    async def resume_fetching(self, tps: Iterable[TP]) -> None:
        await self.call_thread(self._pause_here, set(tps), False)

    async def _pause_here(self, tps: set[TP], pause: bool) -> None:
        consumer = self._ensure_consumer()
        # aiokafka refuses partitions no longer assigned (a rebalance meanwhile).
        mine = [tp for tp in consumer.assignment() if TP(tp.topic, tp.partition) in tps]
        if pause:
            consumer.pause(*mine)
        else:
            consumer.resume(*mine)

    def stale(self, tp: TP, fetched: int) -> bool:
        """Whether a record of `tp` that came back at seek count `fetched` is stale."""
        return self.seeked.get(tp, 0) > fetched

    async def _fetch_records(self, *args: Any, **kwargs: Any) -> Any:
        records = await super()._fetch_records(*args, **kwargs)
        return Fetched(records, self.seeks)


class MainLoopConsumer(ConsumerThread):
    """Faust's consumer thread without the thread: aiokafka runs on the worker's loop.

    In the thread, each fetch passed from the thread's loop to the main loop and the
    next request back, each side waiting for the other's turn and both for the
    interpreter lock (docs/performance.md). Here `call_thread` is a plain await, the
    rebalance callbacks call Faust's consumer directly rather than through its method
    queue, and the service starts and stops as a plain one: what `ServiceThread` did
    in its thread (`_serve`, `_shutdown_thread`) is done in `start` and `stop`.
    """

    def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        # The "thread's" loop is the main loop, which ServiceThread then never closes.
        super().__init__(*args, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        await self._default_start()

    async def maybe_start(self) -> bool:
        if self._started.is_set():
            return False
        await self.start()
        return True

    async def stop(self) -> None:
        # `_shutdown_thread`'s steps (the method queue and aiokafka consumer stopped by
        # `on_thread_stop`), with `Service.stop`'s guard and ending.
        if not self._started.is_set() or self._stopped.is_set():
            return
        self._stopped.set()
        await self.on_thread_stop()
        await self._default_stop_children()
        self._shutdown.set()
        await self._default_stop_futures()
        await self._default_stop_exit_stacks()
        await self.on_shutdown()

    @Service.task
    async def _thread_keepalive(self) -> None:
        """Kept the thread's loop turning so that its method queue was served: none."""

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Some are plain functions (aiokafka's subscribe, seek_to_beginning).
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        await maybe_async(fun(*args, **kwargs))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await self.consumer.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await self.consumer.on_partitions_assigned(assigned, generation_id)


class FetchLoop(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with our fetch loop, and its bookkeeping made public.

    A subclass sets the class attributes and fills in the hooks: `hand_over` (records
    of `direct` topics), `drop_stale` (told of a stale record of a `guarded` topic) and
    `commit_offset` (Faust's commit offset for a partition, or None for no commit).
    """

    # Topics whose records, fetched before a seek of their partition, are dropped.
    guarded: frozenset[str] = frozenset()
    # Topics whose records bypass Faust's conductor, channel, stream and take buffer:
    # the fetch loop hands them to `hand_over` up to `hand_over_every` at a time.
    direct: frozenset[str] = frozenset()
    hand_over_every = 100
    # Set on the aiokafka consumer Faust builds, which Faust configures without them.
    fetch_max_wait_ms: int | None = None
    fetch_min_bytes: int | None = None
    isolation_level: str | None = None
    # The consumer thread's seek count when the fetch being handed over came back, and
    # its records.
    fetched_at = 0
    fetch_size = 0
    # aiokafka on the main loop (`MainLoopConsumer`) or in Faust's consumer thread.
    on_main_loop = True
    # The commit by count in flight (`commit_aside`), held here: the loop keeps only a
    # weak reference to a task.
    committing: asyncio.Future[None] | None = None

    # ---- the hooks ---------------------------------------------------------------

    async def hand_over(self, batch: list[Message], rest: int) -> None:
        """Take a list of the direct topics' records; `rest`: how many records of the
        fetch they came in are still to come (0: these end it)."""
        raise NotImplementedError

    def drop_stale(self, tp: TP, offset: int) -> None:
        """Told of each record dropped as stale (they are read again)."""

    def commit_offset(self, tp: TP) -> int | None:
        """The offset a commit of `tp` would reach (Faust's `_new_offset`)."""
        return super()._new_offset(tp)

    # ---- Faust's bookkeeping, public -----------------------------------------------

    @property
    def thread(self) -> ConsumerThread:
        return cast(ConsumerThread, self._thread)

    @property
    def acked(self) -> dict[TP, list[int]]:
        """Per partition, the offsets acked and not yet committed past."""
        return cast(dict[TP, list[int]], self._acked)

    @property
    def gaps(self) -> dict[TP, Any]:
        """Per partition, an IntervalTree of offsets known to hold no record."""
        return cast(dict[TP, Any], self._gap)

    @property
    def read_offsets(self) -> dict[TP, int | None]:
        return cast(dict[TP, int | None], self._read_offset)

    @property
    def committed_offsets(self) -> Mapping[TP, int | None]:
        return committed_offsets(self)

    def active_partitions(self) -> set[TP]:
        return set(self._get_active_partitions())

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> None:
        """Faust's `ack` for many records of `tp` at once (its bookkeeping, one lock).

        As there, offsets below the committed one or acked already are left out, and a
        `wait_empty` waiting for acks is woken.
        """
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            fresh = [o for o in offsets if o not in index and (committed is None or o >= committed)]
            index.update(fresh)
            self._acked[tp].extend(fresh)
            self._n_acked += len(fresh)
            notify(self._waiting_for_ack)

    # ---- Faust's private methods, overridden -----------------------------------------

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        if self.on_main_loop:
            return MainLoopConsumer(self, loop=self.loop, beacon=self.beacon)
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        return self.commit_offset(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        await self.record_gap(tp, offset_from, offset_to)

    async def record_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's `_add_gap`, with the gap ending before `offset_to`.

        Faust passes the offset of the record that revealed the gap as its end, and
        that record is being delivered, not missing.
        """
        await super()._add_gap(tp, offset_from, offset_to - 1)

    async def _wait_next_records(self, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's)
        records, active = await super()._wait_next_records(timeout)
        # Read by the fetch loop while it hands this fetch's records over. Records that
        # did not come through the thread's fetch (none do) carry no count: current.
        self.fetched_at = getattr(records, "seeks", self.thread.seeks)
        return records, active

    async def _drain_messages(self, fetcher: Any) -> None:
        await self.fetch_loop(fetcher)

    async def fetch_loop(self, fetcher: Any) -> None:
        """Faust's fetch loop (faust-streaming 0.15.3), without a task per record.

        Faust hands each record over with `wait_first(callback(message),
        suspend_flow.wait())`: two tasks and an asyncio.wait per record (a tenth of
        the worker's time per record: docs/performance.md), so that a hand-over blocked on a full
        stream buffer gives way when a rebalance suspends the flow. A hand-over almost
        never blocks, so here it is stepped once directly; one that does block is
        handed to wait_first as before. And a guarded record whose partition was
        sought after its fetch came back is dropped, not delivered: it is stale, and
        the seek reads it again in its place (`ConsumerThread`).

        Records of the `direct` topics skip the conductor and the streams altogether:
        they are collected and handed over in lists (per fetch, at most
        `hand_over_every` at a time), each saying how much of the fetch follows.
        The per-record path of a stream (an Event, a channel queue, the stream's
        iteration, a take buffer, its acks) cost about as much as rating and applying
        the record. The commit by count no longer holds the
        loop (`commit_aside`). Everything else is Faust's loop as it is.
        """
        thread: Any = self._thread
        stale = thread.stale
        guarded = self.guarded
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = self.hand_over_every
        num_since_yield = 0
        direct = self.direct
        batch: list[Message] = []
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    handed = False  # a part of this fetch was handed over already
                    taken = 0
                    async for tp, message in ait:
                        taken += 1
                        if tp.topic in guarded and stale(tp, self.fetched_at):
                            self.drop_stale(tp, message.offset)
                            continue
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            if batch:
                                # This record and those after it are still to come.
                                rest = max(self.fetch_size - taken + 1, 1)
                                await self.hand_over(batch, rest)
                                batch = []
                                handed = True
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                self.commit_aside()
                            if tp.topic in direct:
                                batch.append(message)
                            else:
                                blocked = step(callback(message))
                                if blocked is not None:
                                    await self.wait_first(blocked, self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    if batch or handed:
                        await self.hand_over(batch, 0)
                        batch = []
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    def commit_aside(self) -> None:
        """Faust's commit by count (every `broker_commit_every` acks), in a task of its own.

        Faust's fetch loop awaits it: while the commit's request went to the group
        coordinator and back, no record was handed over and no fetch asked for, and the
        records arriving meanwhile were then fetched at once and staged over more than one
        round (docs/performance.md, "A commit by count beside the fetch loop"). One at a
        time: a count reached while one is in flight is left to the next.
        """
        if self.committing is None:
            self.committing = asyncio.ensure_future(self.commit_by_count())

    async def commit_by_count(self) -> None:
        try:
            await self.commit()
        except Exception as exc:
            # Awaited in the fetch loop, a failed commit stopped the loop and crashed
            # the consumer; so it does here, unless the app is stopping anyway.
            if not self.transport.app.should_stop:
                await self.crash(exc)
        finally:
            self.committing = None

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 (Faust's)
        """Faust's `getmany` (faust-streaming 0.15.3), a partition at a time.

        Faust takes a fetch's records one topic after another in turn, and hands the
        monitor the partition's high watermark at every record; here the monitor gets it
        once a partition (docs/performance.md, "Faust's getmany a partition at a
        time"). A partition's records keep the fetch's order. The order across
        partitions does not matter: the fetch loop hands a fetch's direct records over
        in lists, and each agent's stream is its own. The flow, generation and
        active-partition checks are Faust's, per record, since they can change while
        the fetch loop awaits between records.
        """
        records, active_partitions = await self._wait_next_records(timeout)
        app = self.app
        generation_id = app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        self.fetch_size = sum(len(partition_records) for partition_records in records.values())
        to_message = self._to_message
        buffered = self._buffered_partitions
        track_end_offset = app.monitor.track_tp_end_offset
        for tp, partition_records in records.items():
            tracked = False
            for record in partition_records:
                if not self.flow_active or app.consumer_generation_id != generation_id:
                    return
                if active_partitions is None or tp in active_partitions or tp in buffered:
                    if not tracked:
                        track_end_offset(tp, self.highwater(tp))
                        tracked = True
                    yield tp, to_message(tp, record)


def set_consumer_state(consumer: Any, **state: Any) -> None:
    """Set Faust's bookkeeping (`CONSUMER_STATE`) on a consumer built without __init__.

    For unit tests, whose doubles hold just what the code under test reads.
    """
    for name, value in state.items():
        if name not in CONSUMER_STATE:
            raise TypeError(f"not a consumer state glue knows: {name}")
        setattr(consumer, "_" + name, value)


def committed_offsets(consumer: Any) -> Mapping[TP, int | None]:
    """Faust's record of what the group committed (next offset to read), per partition.

    None before the first commit of a fresh group and, in Faust, for offset 0.
    Consumers without one (test doubles) have none.
    """
    found: Mapping[TP, int | None] = getattr(consumer, "_committed_offset", {})
    return found
