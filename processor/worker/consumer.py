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

The input topics' records, staged straight from the fetch loop, are taken once their
flush has landed and settled per partition and round (`settle`): the same decisions
in one step, instead of a `Taken` entry and a Faust ack per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, Protocol, cast

from faust.types import TP, Message

from processor.kafka import glue
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


class InFlight:
    """Stands for the records staged from the fetch loop and not yet settled.

    Faust waits at a rebalance (`wait_empty`) until every message it tracks is acked,
    so that what was processed is committed before the partitions go. The direct
    topics' records are not tracked one by one: this one object is in that set while
    any of them is in flight (`wait_empty` reads its `acked` and `refcount`).
    """

    def __init__(self) -> None:
        self.refcount = 0

    @property
    def acked(self) -> bool:
        return not self.refcount


# How long the broker may hold a fetch that finds no new records. Faust asks for 1.5 s,
# and aiokafka leaves out of a fetch the partitions whose records it still buffers: a
# record arriving on one of those waits for the held fetch of the others to return, up
# to 1.5 s (docs/performance.md, "Figures behind design choices"). An idle worker now
# polls every 20 ms instead; a busy one waits only until FETCH_MIN_BYTES have come.
FETCH_MAX_WAIT_MS = 20
# How much a fetch waits to gather (or FETCH_MAX_WAIT_MS) before the broker answers it.
# With aiokafka's default, a byte, a busy worker's fetch came back with whatever the
# last few milliseconds had brought, and each one cost the worker and the broker a
# request's fixed work (docs/performance.md, "Fetches the broker fills").
FETCH_MIN_BYTES = 32 * 1024
# The fetch loop yields to the event loop after this many records, and hands what it
# collected for the sink over first, so that a round's answers are not left waiting
# behind a whole fetch's staging.
HAND_OVER_EVERY = 100


class Sink(Protocol):
    """Where the fetch loop hands the records of `GuardedConsumer.direct` topics."""

    def stage(self, messages: list[Message], rest: int) -> None:
        """Take a fetch's records (in offset order per partition), or refuse them;
        `rest`: how many records of the same fetch are still to follow."""
        ...

    def full(self) -> bool:
        """Whether to stop handing records over until `room()` returns."""
        ...

    async def room(self) -> None: ...


class GuardedConsumer(glue.FetchLoop):
    """The guard's policy over Faust's consumer (the mechanics are processor/kafka/glue/)."""

    taken: Taken
    guarded: frozenset[str]
    # Topics whose records bypass Faust's streams: the fetch loop hands them to `sink`.
    direct: frozenset[str]
    sink: Sink | None
    hand_over_every = HAND_OVER_EVERY
    fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    fetch_min_bytes = FETCH_MIN_BYTES
    # The worker writes its outputs, re-routes, timer ticks and changelogs in
    # transactions (processor/worker/publisher.py): what an aborted one wrote must never
    # be read back, by recovery or by the agents. Faust reads committed only in its
    # own exactly-once mode, which stays off.
    isolation_level = "read_committed"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per partition, offsets whose ack was refused: no commit reaches past them.
        self.refused: dict[TP, set[int]] = {}
        # Partitions to resume once the flow is: tasks the loop only weakly holds.
        self.resuming: set[asyncio.Future[None]] = set()
        self._stale_logged: tuple[TP, int] | None = None
        self.in_flight = InFlight()

    async def hand_over(self, batch: list[Message], rest: int) -> None:
        # Records collected but not handed over when the loop stops are neither acked
        # nor committed: they are read again.
        sink = self.sink
        assert sink is not None
        sink.stage(batch, rest)
        if sink.full():
            # Like a blocked hand-over in the loop: a rebalance must not wait for room.
            await self.wait_first(sink.room(), self.suspend_flow.wait())

    def drop_stale(self, tp: TP, offset: int) -> None:
        metrics.STALE_DROPPED.inc()
        if self._stale_logged != (tp, self.fetched_at):
            self._stale_logged = (tp, self.fetched_at)
            log.info("%s: dropped records from offset %d, fetched before a seek", tp, offset)

    async def perform_seek(self) -> None:
        # Recovery resumes the stream partitions, seeks them (awaiting the committed
        # offsets), and only then resumes the streams' flow. Records fetched in between
        # are dequeued partly while flow is stopped (skipped) and partly after (taken):
        # a hole, whose records the accounts then take for applied when they come again.
        # So the guarded partitions fetch nothing until the seek is done and the flow
        # resumed. Faust resumes the flow only once the task that awaited this seek has
        # been woken (Service._wait), a loop turn or more after it returns, so the
        # partitions are resumed when the flow is, not on the next turn.
        paused = {tp for tp in self.active_partitions() if tp.topic in self.guarded}
        self.pause_partitions(paused)
        thread = self.thread
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
            read = self.read_offsets
            for tp, offset in list(read.items()):
                if offset:
                    read[tp] = offset - 1
        finally:
            self._spawn(self._resume_when_flowing(paused))

    async def _resume_when_flowing(self, paused: set[TP]) -> None:
        await self.can_resume_flow.wait()
        # Only what is still assigned: a rebalance may have moved some meanwhile.
        tps = paused & set(self.assignment())
        await self.thread.resume_fetching(tps)
        self.resume_partitions(tps)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        # The loop keeps only a weak reference to a task.
        self.resuming.add(task)
        task.add_done_callback(self.resuming.discard)

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

    def staged(self, n: int) -> None:
        """`n` records of the `direct` topics were staged: a rebalance waits for them."""
        in_flight = self.in_flight
        if n and not in_flight.refcount:
            self.unacked.add(cast(Message, in_flight))
        in_flight.refcount += n

    def settle(self, tp: TP, messages: list[Message]) -> None:
        """The last ack of staged `direct` records of `tp` whose flush has landed.

        What `ack` decides per record, for a partition's records of a round at once:
        they were taken (staged, landed), so one fetched in an older generation is
        refused and the others are acked in one step (`ack_offsets`).
        """
        generation = self.app.consumer_generation_id
        offsets: list[int] = []
        for message in messages:
            message.acked = True
            if message.generation_id == generation:
                offsets.append(message.offset)
            else:
                self._refuse(message)
        refused = self.refused.get(tp)
        if refused:
            refused.difference_update(offsets)
        self.ack_offsets(tp, offsets)
        self.unstaged(len(messages))

    def unstaged(self, n: int) -> None:
        """`n` staged records were settled, or failed and their acks refused."""
        in_flight = self.in_flight
        in_flight.refcount = max(in_flight.refcount - n, 0)
        if not in_flight.refcount:
            self.unacked.discard(cast(Message, in_flight))

    def _refuse(self, message: Message) -> bool:
        message.acked = True
        self.refused.setdefault(message.tp, set()).add(message.offset)
        return False

    def commit_offset(self, tp: TP) -> int | None:
        if self._head_missing(tp):
            return None
        refused = self.refused.get(tp)
        if not refused:
            return super().commit_offset(tp)
        # Let Faust find the commit offset among the acks below the first refused one.
        floor = min(refused)
        acked = self.acked[tp]
        above = [offset for offset in acked if offset >= floor]
        acked[:] = [offset for offset in acked if offset < floor]
        try:
            return super().commit_offset(tp)
        finally:
            acked.extend(above)

    def _head_missing(self, tp: TP) -> bool:
        """Whether the record at the committed offset is neither acked nor a known gap.

        Faust's own check lets a commit skip one record there (it reads its committed
        offset as the last processed one, not the next to read): a record dropped from
        a stream's queue at a rebalance was committed past that way.
        """
        committed = self.committed_offsets[tp]
        acked = self.acked[tp]
        if committed is None or not acked or min(acked) <= committed:
            return False
        return not any(iv.begin <= committed < iv.end for iv in self.gaps[tp])

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        self.taken.forget(revoked)
        for tp in revoked:
            self.refused.pop(tp, None)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset]
        if fresh:
            await self.thread.seek_to_beginning(*fresh)
        # Everything from the committed offsets on is read again, refused records too.
        for tp in committed:
            self.refused.pop(TP(tp.topic, tp.partition), None)
        return committed


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
