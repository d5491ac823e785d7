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

And the account values themselves: each records, per input partition, the offset of
the last record it applied, so a partition's records must be applied in order, with no
hole. Faust does not promise that. Its streams skip records while flow is stopped or
for an older generation, then go on with later ones; its recovery resumes the stream
partitions before it seeks them; and its fetch loop keeps a read offset that is stale
around a seek, so that it dropped records fetched from the new position and recorded
them as a gap (`kill -9` runs lost records each of these ways: later records were
applied first, the skipped ones then read as already applied). So here:

- `admit` lets the handler take a record only if it is the next one of its partition
  (or the next after a gap the log really has); a later one is refused, and the
  partition is sought back to the record expected, which is then read again.
- A seek sets that expectation (to the committed offset, or the partition's start);
  records of a batch fetched before a seek of their partition are not delivered after
  it; the fetch loop sees no read offset for the guarded topics (so it drops nothing),
  and gaps are those between two records fetched one after the other (Faust's own
  gap also included the record that revealed it).

So here an ack counts only for a record the handler took (`Taken`), in the generation
it was fetched in. Any other ack is *refused*: nothing at or past a refused offset is
committed until the record is processed, and since every rebalance ends with a seek to
the committed offset (from the beginning for a partition with none, as
`auto_offset_reset=earliest` says), the record is read again. Reading a record twice is
safe: the account values recognise records they applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from processor import metrics

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


class GuardedConsumer(faust_aiokafka.Consumer):
    taken: Taken
    guarded: frozenset[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per partition, offsets whose ack was refused: no commit reaches past them.
        self.refused: dict[TP, set[int]] = {}
        # Per guarded partition: how often it was sought (a fetched batch older than its
        # latest seek is stale); the offset of the last record fetched; the real gaps
        # seen (first missing offset -> the next record's); the offset the handler
        # may take next; and whether a seek back to it is under way.
        self.epochs: Counter[TP] = Counter()
        self.fetched: dict[TP, int] = {}
        self.jumps: dict[TP, dict[int, int]] = {}
        self.expected: dict[TP, int] = {}
        self.seeking: set[TP] = set()
        self._seeks_running: set[asyncio.Task[None]] = set()

    # ---- fetching ---------------------------------------------------------------------

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109
        snapshot: Counter[TP] | None = None
        fetched: Any = super().getmany(timeout)
        async with contextlib.aclosing(fetched):
            async for tp, message in fetched:
                if snapshot is None:
                    # Faust's getmany yields its first record right after the fetch
                    # returned: the seeks that this batch comes after.
                    snapshot = self.epochs.copy()
                if tp.topic in self.guarded:
                    if snapshot[tp] != self.epochs[tp]:
                        # Fetched before a seek of its partition: it comes again from
                        # the seek's position, in order. (Were this one fresh after all,
                        # `admit` finds the hole and seeks back to it.)
                        continue
                    offset = message.offset
                    last = self.fetched.get(tp)
                    if last is not None and offset > last + 1:
                        self.jumps.setdefault(tp, {})[last + 1] = offset
                        await self._add_gap(tp, last + 1, offset)
                    self.fetched[tp] = offset
                    # Faust's fetch loop reads this next: with no read offset it drops
                    # nothing and records no gap of its own.
                    self._read_offset[tp] = None
                yield tp, message

    def admit(self, tp: TP, offset: int) -> bool:
        """Whether the handler may take this record: the next of its partition."""
        expected = self.expected.get(tp)
        if expected is None or offset < expected:
            # Nothing known yet, or read again (after a seek): already applied, or next.
            self.expected[tp] = offset + 1 if expected is None else max(expected, offset + 1)
            return True
        if offset == expected or self.jumps.get(tp, {}).get(expected) == offset:
            self.expected[tp] = offset + 1
            self.seeking.discard(tp)
            return True
        # A hole: records from `expected` on were not delivered (skipped, dropped). Taking
        # this one would mark them applied in the account values; read them again.
        metrics.SKIPS_REREAD.inc()
        if tp not in self.seeking:
            self.seeking.add(tp)
            log.info(
                "%s: got offset %d, expected %d: reading again from there", tp, offset, expected
            )
            task = asyncio.ensure_future(self.seek(tp, expected))
            self._seeks_running.add(task)
            task.add_done_callback(self._seeks_running.discard)
        return False

    async def seek(self, partition: TP, offset: int) -> None:
        tp = TP(partition.topic, partition.partition)
        guarded = tp.topic in self.guarded
        if guarded:
            self.epochs[tp] += 1
        await super().seek(partition, offset)
        if guarded:
            self._sought(tp, offset)
            refused = self.refused.get(tp)
            if refused:
                refused.difference_update({o for o in refused if o >= offset})

    def _sought(self, tp: TP, offset: int) -> None:
        # Bumped again: a batch fetched while the seek was under way is stale too.
        self.epochs[tp] += 1
        self.fetched[tp] = offset - 1
        self.expected[tp] = offset
        self.seeking.discard(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust passes the offset of the record that revealed the gap as its end, and
        # that record is being delivered, not missing.
        await super()._add_gap(tp, offset_from, offset_to - 1)

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

    async def perform_seek(self) -> None:
        await super().perform_seek()
        # Faust takes a read offset as the last record read, but sets it to the next one
        # to read after a seek: one less, so that a gap right at the committed offset
        # (a transaction marker, a compacted record) is recorded as a gap, not missed.
        read = self._read_offset
        for tp, offset in list(read.items()):
            if offset:
                read[tp] = offset - 1

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        self.taken.forget(revoked)
        for tp in revoked:
            self.refused.pop(tp, None)
            for kept in (self.fetched, self.jumps, self.expected):
                kept.pop(tp, None)
            self.seeking.discard(tp)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        guarded = [tp for tp in self.assignment() if tp.topic in self.guarded]
        for tp in guarded:
            self.epochs[tp] += 1
        committed = await super().seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset]
        thread: Any = self._thread
        if fresh:
            await thread.seek_to_beginning(*fresh)
        for raw, offset in committed.items():
            tp = TP(raw.topic, raw.partition)
            # Everything from the committed offsets on is read again, refused records too.
            self.refused.pop(tp, None)
            if tp.topic in self.guarded:
                start = offset if offset else await thread.position(raw)
                self._sought(tp, start)
        return committed


def install(app: Any, topics: Iterable[str]) -> Taken:
    """Make `app` build the guarded consumer for `topics` (before the worker starts)."""
    taken = Taken()
    app.transport.Consumer = type(
        "MeterConsumer",
        (GuardedConsumer,),
        {"taken": taken, "guarded": frozenset(topics)},
    )
    return taken
