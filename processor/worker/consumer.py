"""Faust's aiokafka consumer, made to commit only records the worker really processed.

Two faust-streaming behaviours lose input records around a rebalance (both seen on the
real broker by tests/integration/test_faults_more.py, a worker joining as a burst
arrives):

- A stream skips records prefetched for an older consumer generation, or dequeued
  while flow control is paused, and still *acks* them "so that lag does not grow"
  (faust/streams.py). The committed offset then moves past records that never reached
  a balance.
- After a rebalance Faust seeks each partition back to its committed offset so that
  skipped records are fetched again, but aiokafka's `seek_to_committed` leaves a
  partition with no committed offset (or offset 0) where its fetch position is, past
  the skipped records.

And one of ours: a worker frozen past its session timeout (a zombie) still processes
the records it had fetched when it resumes; if it rejoins and gets the partition back,
Faust would commit those acks in the new generation, although the account values it
recovers are its successor's, which never applied them.

And one of Faust's fetch loop: a jump in offsets is recorded as a gap that includes
the record being delivered, so a commit may pass that record before it is processed.
Here a gap ends before the record that revealed it.

So here an ack counts only for a record the handler took (`Taken`), in the generation
it was fetched in. Any other ack is *refused*: nothing at or past a refused offset is
committed until the record is processed, and since every rebalance ends with a seek to
the committed offset (from the beginning for a partition with none, as
`auto_offset_reset=earliest` says), the record is read again. Reading a record twice is
safe: the account values recognise records they applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Coroutine, Generator, Iterable, Mapping
from typing import Any, Protocol

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from processor.observability import metrics

log = logging.getLogger(__name__)


class Taken:
    """Input records the handler has processed and whose ack is still to come."""

    def __init__(self) -> None:
        self._offsets: dict[TP, Counter[int]] = {}

    def took(self, tp: TP, offset: int) -> None:
        self._offsets.setdefault(tp, Counter())[offset] += 1

    def release(self, tp: TP, offset: int) -> bool:
        """Whether the record was taken (once per time it was taken)."""
        offsets = self._offsets.get(tp)
        if not offsets or offsets[offset] <= 0:
            return False
        offsets[offset] -= 1
        if not offsets[offset]:
            del offsets[offset]
        return True

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._offsets.pop(tp, None)


# How long the broker may hold a fetch that finds no new records. Faust asks for 1.5 s,
# and aiokafka leaves out of a fetch the partitions whose records it still buffers: a
# record arriving on one of those waits for the held fetch of the others to return, up
# to 1.5 s (seen as ~1 s mean append-to-ledger latency at 1,700 events/s by the
# benchmark). An idle worker now polls every 20 ms instead; a busy one never waits.
FETCH_MAX_WAIT_MS = 20
# The fetch loop yields to the event loop after this many records, and hands what it
# collected for the sink over first, so the flusher can send it meanwhile.
HAND_OVER_EVERY = 100


class Fetched(dict[TP, list[Any]]):
    """One fetch's records, with the consumer thread's seek count when they came back."""

    def __init__(self, records: Mapping[TP, list[Any]], seeks: int) -> None:
        super().__init__(records)
        self.seeks = seeks


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
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
        # Read by the consumer's start(), when it builds its fetcher.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        # The worker writes its outputs, re-routes, timer ticks and changelogs in
        # transactions (processor/worker/publisher.py): what an aborted one wrote must never
        # be read back, by recovery or by the agents. Faust reads committed only in its
        # own exactly-once mode, which stays off.
        consumer._isolation_level = "read_committed"
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        self.count_seeks(self._ensure_consumer()._fetcher)

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


class Sink(Protocol):
    """Where the fetch loop hands the records of `GuardedConsumer.direct` topics."""

    def stage(self, messages: list[Message]) -> None:
        """Take a fetch's records (in offset order per partition), or refuse them."""
        ...

    def full(self) -> bool:
        """Whether to stop handing records over until `room()` returns."""
        ...

    async def room(self) -> None: ...


class GuardedConsumer(faust_aiokafka.Consumer):
    taken: Taken
    guarded: frozenset[str]
    # Topics whose records bypass Faust's conductor, channel, stream and take buffer:
    # the fetch loop hands them to `sink` up to `HAND_OVER_EVERY` at a time.
    direct: frozenset[str]
    sink: Sink | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per partition, offsets whose ack was refused: no commit reaches past them.
        self.refused: dict[TP, set[int]] = {}
        self._resuming: set[asyncio.Future[None]] = set()
        # The consumer thread's seek count when the fetch being handed over came back.
        self._fetched_at = 0
        self._stale_logged: tuple[TP, int] | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (faust-streaming 0.15.3), without a task per record.

        Faust hands each record over with `wait_first(callback(message),
        suspend_flow.wait())`: tasks and an asyncio.wait per record, a good part of
        the worker's time per record (docs/performance.md, "Figures behind design
        choices"), so that a hand-over blocked on a full stream buffer gives way when
        a rebalance suspends the flow. A hand-over almost never blocks, so here it is
        stepped once directly; one that does block is handed to wait_first as before.
        And a guarded record whose partition was sought after its fetch came back is
        dropped, not delivered: it is stale, and the seek reads it again in its place
        (`_ConsumerThread`).

        Records of the `direct` topics skip the conductor and the streams altogether:
        they are collected and handed to the sink in lists (per fetch, at most
        `HAND_OVER_EVERY` at a time). The per-record path of a stream (an Event, a
        channel queue, the stream's iteration, a take buffer, its acks) cost about as
        much as rating and applying the record. Everything else is Faust's loop as it is.
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
        yield_every = HAND_OVER_EVERY
        num_since_yield = 0
        direct = self.direct
        batch: list[Message] = []
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        if tp.topic in guarded and stale(tp, self._fetched_at):
                            self._drop_stale(tp, message.offset)
                            continue
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            if batch:
                                await self._hand_over(batch)
                                batch = []
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
                                await self.commit()
                            if tp.topic in direct:
                                batch.append(message)
                            else:
                                blocked = _step(callback(message))
                                if blocked is not None:
                                    await self.wait_first(blocked, self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    if batch:
                        await self._hand_over(batch)
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

    async def _hand_over(self, batch: list[Message]) -> None:
        # Records collected but not handed over when the loop stops are neither acked
        # nor committed: they are read again.
        sink = self.sink
        assert sink is not None
        sink.stage(batch)
        if sink.full():
            # Like a blocked hand-over above: a rebalance must not wait for room.
            await self.wait_first(sink.room(), self.suspend_flow.wait())

    def _drop_stale(self, tp: TP, offset: int) -> None:
        metrics.STALE_DROPPED.inc()
        if self._stale_logged != (tp, self._fetched_at):
            self._stale_logged = (tp, self._fetched_at)
            log.info("%s: dropped records from offset %d, fetched before a seek", tp, offset)

    async def _wait_next_records(self, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's)
        records, active = await super()._wait_next_records(timeout)
        # Read by the fetch loop while it hands this fetch's records over. Records that
        # did not come through the thread's fetch (none do) carry no count: current.
        thread: Any = self._thread
        self._fetched_at = getattr(records, "seeks", thread.seeks)
        return records, active

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust passes the offset of the record that revealed the gap as its end, and
        # that record is being delivered, not missing.
        await super()._add_gap(tp, offset_from, offset_to - 1)

    async def perform_seek(self) -> None:
        # Recovery resumes the stream partitions, seeks them (awaiting the committed
        # offsets), and only then resumes the streams' flow. Records fetched in between
        # are dequeued partly while flow is stopped (skipped) and partly after (taken):
        # a hole, whose records the accounts then take for applied when they come again.
        # So the guarded partitions fetch nothing until the seek is done and the flow
        # resumed. Faust resumes the flow only once the task that awaited this seek has
        # been woken (Service._wait), a loop turn or more after it returns, so the
        # partitions are resumed when the flow is, not on the next turn.
        paused = {tp for tp in self._get_active_partitions() if tp.topic in self.guarded}
        self.pause_partitions(paused)
        thread: Any = self._thread
        try:
            # Seen on the real broker: a partition sought early in the seek was fetched
            # from its new position while the others were still being sought, and
            # those records, dropped by Faust's fetch loop as paused, left a jump that
            # was then taken for a gap and committed past.
            await thread.pause_fetching(paused)
            await super().perform_seek()
            # Faust takes a read offset as the last record read, but sets it to the next
            # one to read after a seek: one less, so that a gap right at the committed
            # offset (a transaction marker, a compacted record) is recorded as a gap.
            read = self._read_offset
            for tp, offset in list(read.items()):
                if offset:
                    read[tp] = offset - 1
        finally:
            self._spawn(self._resume_when_flowing(paused))

    async def _resume_when_flowing(self, paused: set[TP]) -> None:
        await self.can_resume_flow.wait()
        # Only what is still assigned: a rebalance may have moved some meanwhile.
        tps = paused & set(self.assignment())
        thread: Any = self._thread
        await thread.resume_fetching(tps)
        self.resume_partitions(tps)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        # The loop keeps only a weak reference to a task.
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    def ack(self, message: Message) -> bool:
        if message.topic not in self.guarded:
            return bool(super().ack(message))
        tp, offset = message.tp, message.offset
        if not self.taken.release(tp, offset):
            # Skipped by the stream, never processed.
            metrics.SKIPS_REREAD.inc()
            return self._refuse(message)
        if message.generation_id != self.app.consumer_generation_id:
            # Processed in an older generation, by a worker that may have been replaced
            # meanwhile: the account values it holds now may not have applied it.
            return self._refuse(message)
        refused = self.refused.get(tp)
        if refused:
            refused.discard(offset)
        return bool(super().ack(message))

    def _refuse(self, message: Message) -> bool:
        message.acked = True
        self.refused.setdefault(message.tp, set()).add(message.offset)
        return False

    def _new_offset(self, tp: TP) -> int | None:
        if self._head_missing(tp):
            return None
        refused = self.refused.get(tp)
        if not refused:
            return super()._new_offset(tp)
        # Let Faust find the commit offset among the acks below the first refused one.
        floor = min(refused)
        acked = self._acked[tp]
        above = [offset for offset in acked if offset >= floor]
        acked[:] = [offset for offset in acked if offset < floor]
        try:
            return super()._new_offset(tp)
        finally:
            acked.extend(above)

    def _head_missing(self, tp: TP) -> bool:
        """Whether the record at the committed offset is neither acked nor a known gap.

        Faust's own check lets a commit skip one record there (it reads its committed
        offset as the last processed one, not the next to read): a record dropped from
        a stream's queue at a rebalance was committed past that way.
        """
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if committed is None or not acked or min(acked) <= committed:
            return False
        return not any(iv.begin <= committed < iv.end for iv in self._gap[tp])

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        self.taken.forget(revoked)
        for tp in revoked:
            self.refused.pop(tp, None)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset]
        if fresh:
            thread: Any = self._thread
            await thread.seek_to_beginning(*fresh)
        # Everything from the committed offsets on is read again, refused records too.
        for tp in committed:
            self.refused.pop(TP(tp.topic, tp.partition), None)
        return committed


def _step(awaitable: Awaitable[Any]) -> Awaitable[Any] | None:
    """Run a coroutine up to its first suspension: None if it finished, else the rest."""
    if not isinstance(awaitable, Coroutine):
        return awaitable
    coro = awaitable
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return _Rest(coro, waiting)


class _Rest:
    """The rest of a coroutine already stepped once: awaits what it was waiting on
    (handed up to the task, as the coroutine itself would), then carries on."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, Any]:
        waiting = self._waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:  # cancelled (or thrown into) while waiting
                try:
                    waiting = self._coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                waiting = self._coro.send(None)
            except StopIteration as stop:
                return stop.value


def install(
    app: Any, topics: Iterable[str], direct: Iterable[str] = (), sink: Sink | None = None
) -> Taken:
    """Make `app` build the guarded consumer for `topics` (before the worker starts).

    The records of `direct` (guarded topics too) go from the fetch loop to `sink`.
    """
    taken = Taken()
    app.transport.Consumer = type(
        "MeterConsumer",
        (GuardedConsumer,),
        {
            "taken": taken,
            "guarded": frozenset(topics),
            "direct": frozenset(direct),
            "sink": sink,
        },
    )
    return taken
