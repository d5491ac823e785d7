"""The flush protocol: a batch's outputs, then its state, then its input records' acks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from processor.core.dedupe import dedupe_tenant
from processor.core.stored import Mark, OutboxEntry, StoredAccount
from processor.kafka.routing import partition_for
from processor.observability.worker_hooks import WorkerHooks
from processor.worker.marks import Budget, Entry, MarkStore
from processor.worker.marks_log import MarksLog, round_marks
from processor.worker.records import Changelog, Out, Publisher
from processor.worker.staged import Staged

# What the caller is handed back for the records of a flush that landed (None) or
# failed (the failure): the tokens it gave `hold`, its input messages in the worker.
Landed = Callable[[list[Any], Exception | None], None]
# What the caller still has to stage of the fetch in hand: a future done once it is all
# staged, or None when nothing of it waits (`Flusher`, `fetch_in_hand`).
FetchInHand = Callable[[], "asyncio.Future[None] | None"]


class Deliveries:
    """Which outbox entries are safely in Kafka, so account values can drop them.

    Only values written before outputs preceded state hold entries (core/stored.py).
    An entry is delivered once the offset of the record that caused it is committed:
    everything a record caused is acknowledged before its offset is.
    """

    def __init__(self, committed: Callable[[str], int | None] = lambda _tp: None) -> None:
        self._committed = committed

    def __call__(self, tenant: str, entry: OutboxEntry) -> bool:
        committed = self._committed(entry.position.tp)
        return committed is not None and entry.position.offset < committed


@dataclass(init=False, unsafe_hash=True, slots=True)
class _Batch:
    """A batch taken for flushing: its outputs, its account values and seen marks."""

    outputs: Final[list[Out]]
    accounts: Final[dict[str, StoredAccount | None]]
    seen: Final[dict[str, Mark | None]]
    held: Final[list[Any]]
    done: Final[asyncio.Future[None]]
    started: Final[float]

    def __init__(
        self,
        outputs: list[Out],
        accounts: dict[str, StoredAccount | None],
        seen: dict[str, Mark | None],
        held: list[Any],
        done: asyncio.Future[None],
        started: float,
    ) -> None:
        self.outputs = outputs
        self.accounts = accounts
        self.seen = seen
        self.held = held
        self.done = done
        self.started = started


# A round's bounds when the worker's settings give none (METER_BATCH_MAX and
# METER_BATCH_MAX_BYTES carry the same defaults).
BATCH_MAX: Final = 6000
BATCH_MAX_BYTES: Final = 16 * 1024 * 1024
# How long a round may wait for the rest of the fetch in hand to be staged
# (docs/performance.md, "A round waits for the rest of its fetch"): a fetch is staged in
# slices, and a round cut between two would leave the later slices a whole round more
# to wait. Bounded, so that a large fetch, or a fetch loop held elsewhere, never holds
# a round for long.
FETCH_WAIT_SECONDS: Final = 0.010


class Flusher:
    """Takes what intake staged in batches and lands each in Kafka, in order.

    The commit protocol, step by step (docs/guarantees.md):

    1. Intake stages a record's outputs here (`send`) and its account value and seen
       mark in the staged views (processor/worker/staged.py); the worker hands over
       the record's input message (`hold`), which stays unacknowledged.
    2. A batch is taken (`flush`, or the running flusher itself once a round is done):
       its outputs, the views' pending writes (one per key, the newest) and the held
       messages. Records staged while a round is in flight go out together in the next
       round, so a worker under load sends large rounds and an idle one sends a batch
       as soon as it is staged. A round is not cut in the middle of a fetch: the
       flusher first waits, up to `fetch_wait` seconds, for the rest of the fetch in
       hand to be staged (`fetch_in_hand`).
       `full`/`room`: at `batch_max` held records, or `batch_max_bytes` of their
       input, the worker stages no more until the next take (back-pressure).
    3. One round at a time (aiokafka keeps one request in flight per broker anyway),
       the batch's outputs are published, in the order they were staged.
    4. Then its state: one changelog record per touched account, and one record per
       partition holding the round's seen marks (processor/worker/marks_log.py), sent
       only once the round carrying its outputs was acknowledged, so a value never
       reaches the changelog before the outputs of the records it applied. With an
       atomic publisher (the worker's: one Kafka transaction per partition number, or
       per group of them it owns whole, processor/worker/publisher.py) a batch's
       outputs and state go in the same round and land together or not at all.
    5. The state landed: the staged views settle the batch into the local stores (in
       batch order), the batch's `flush` returns, and `landed(held, None)` hands the
       messages back. This waits for nothing, but runs once the next round's requests
       are sent (if one follows at once), so the next round does not wait for it. The
       worker (`Meter._landed`) settles the input topics' records per partition at
       once (processor/worker/consumer.py `GuardedConsumer.settle`), and marks each of
       the agents' records taken (`Taken`) and gives it its last ack.
    6. Faust commits the acked offsets: its commit timer every
       `broker_commit_interval`, and the fetch loop every `broker_commit_every` acks.
       The guard (processor/worker/consumer.py) refuses the ack of a record that was
       not taken in its generation, and nothing is committed past a refused offset.
       So an input offset is committed only after everything it caused is in Kafka,
       and outbox entries below a committed offset count as delivered (`Deliveries`).

    A failed publish breaks the flusher: every batch not yet landed fails (its `flush`
    raises, `landed(held, failure)`), the local stores stop at the batch before, and
    every later flush fails too: the worker crashes and replays from the committed
    offsets. A batch taken with nothing staged is a barrier: done once every batch
    before it has landed.
    """

    def __init__(
        self,
        publisher: Publisher,
        accounts: Staged[str, StoredAccount],
        seen: Staged[str, Mark],
        partitions: int,
        hooks: WorkerHooks,
        changelogs: tuple[Changelog, MarksLog] | None = None,
        batch_max: int = BATCH_MAX,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        landed: Landed | None = None,
        fetch_in_hand: FetchInHand | None = None,
        fetch_wait: float = FETCH_WAIT_SECONDS,
    ) -> None:
        self.publisher = publisher
        self.accounts = accounts
        self.seen = seen
        self.partitions = partitions
        self.hooks = hooks
        self.changelogs = changelogs
        self.batch_max = batch_max
        self.batch_max_bytes = batch_max_bytes
        self._landed = landed or _ignore
        self._fetch_in_hand = fetch_in_hand
        self.fetch_wait = fetch_wait
        self._outputs: list[Out] = []
        # Batches taken whose outputs are still to be sent; batches whose outputs are
        # in and whose state is still to be sent; and the task that sends both.
        self._unsent: list[_Batch] = []
        self._unwritten: list[_Batch] = []
        self._running: asyncio.Future[None] | None = None
        # What the caller holds for each record staged since the last take (its input
        # message), handed back through `landed` once the record's flush has landed.
        self._held: list[Any] = []
        self._held_bytes = 0
        self._took: asyncio.Future[None] | None = None
        # Set when a state write failed: the local stores stop at the batch before it,
        # and every later flush fails too (the worker restarts and replays them).
        self._broken: Exception | None = None
        # The marks store, when a round's marks can be settled into it from what was
        # packed for Kafka (`_settle`): its partitions are the marks records'.
        base = seen.base
        self._marks: MarkStore | None = (
            base
            if isinstance(base, MarkStore)
            and base.partitions == partitions
            and changelogs is not None
            and changelogs[1].tenant_of is dedupe_tenant
            else None
        )

    # ---- staging ------------------------------------------------------------------

    def send(self, out: Out) -> None:
        """Stage one output for the next batch."""
        self._outputs.append(out)
        self.hooks.output(out.topic)

    def hold(self, token: Any, size: int) -> None:
        """Keep `token` for the record just staged (`size`: its input's bytes), and have
        the flusher take it."""
        self._held.append(token)
        self._held_bytes += size
        self._wake()

    def full(self) -> bool:
        """Whether `batch_max` records, or `batch_max_bytes` of their input, wait for
        the next round: stage no more."""
        return len(self._held) >= self.batch_max or self._held_bytes >= self.batch_max_bytes

    async def room(self) -> None:
        """Wait until the flusher has taken what waits (or failed)."""
        while self.full() and self._broken is None:
            if self._took is None:
                self._took = asyncio.get_running_loop().create_future()
            self._wake()
            await asyncio.shield(self._took)

    def sweep_seen(self, now: int, budget: Budget, grace: int = 0) -> int:
        """Drop seen marks past their window from the seen store, if it is the marks
        store (processor/worker/marks.py), within `budget`: nothing goes to Kafka (the
        marks topic forgets by age). Returns the marks dropped."""
        base = self.seen.base
        if not isinstance(base, MarkStore):
            return 0
        dropped = base.sweep(now, budget, grace)
        if dropped:
            self.hooks.seen_forgotten(dropped)
        return dropped

    # ---- flushing -------------------------------------------------------------------

    async def flush(self) -> None:
        """Take what was staged now; return once it (and everything before) is in Kafka."""
        batch = self._take()
        self._wake()
        await batch.done

    def _take(self) -> _Batch:
        self.hooks.apply()
        loop = asyncio.get_running_loop()
        outputs, self._outputs = self._outputs, []
        held, self._held = self._held, []
        self._held_bytes = 0
        accounts, seen = self.accounts.take(), self.seen.take()
        batch = _Batch(outputs, accounts, seen, held, loop.create_future(), time.perf_counter())
        # A failure nobody waits on is reported through `landed`.
        batch.done.add_done_callback(_retrieve)
        took, self._took = self._took, None
        if took is not None and not took.done():
            took.set_result(None)
        if self._broken is not None:
            self._fail(batch, self._broken)
        else:
            self._unsent.append(batch)
        return batch

    def _staged(self) -> bool:
        return bool(self._outputs or self._held or self.accounts.pending or self.seen.pending)

    def _wake(self) -> None:
        if self._running is None and self._broken is None:
            self._running = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        # The last round's landing, still to be done: it runs once the next round's
        # requests are on their way, not between the two rounds, where each record
        # staged meanwhile would wait for it.
        unlanded: tuple[list[_Batch], list[_Batch], dict[int, list[Entry]] | None] | None
        unlanded = None
        try:
            while True:
                await self._rest_of_fetch()
                if self._staged():
                    self._take()
                if not (self._unsent or self._unwritten):
                    break
                sending, self._unsent = self._unsent, []
                landing, self._unwritten = self._unwritten, []
                if self.publisher.atomic:
                    # Outputs and state land together or not at all: one round each.
                    landing += sending
                    sending = []
                    records = [out for batch in landing for out in batch.outputs]
                else:
                    # A batch with no outputs, behind no batch whose outputs are in
                    # flight, may write its state in this round already.
                    while sending and not sending[0].outputs:
                        landing.append(sending.pop(0))
                    records = [out for batch in sending for out in batch.outputs]
                state, marks = self._state_of(landing)
                records += state
                try:
                    if records:
                        publishing = self.publisher.publish(records)
                        if unlanded is not None:
                            # Runs when the publish first waits for the broker.
                            asyncio.get_running_loop().call_soon(self._land, *unlanded)
                            unlanded = None
                        await publishing
                    if self._broken is not None:  # the last round's landing failed
                        raise self._broken
                except BaseException as exc:
                    # Reported through each batch's own future, to its caller; the local
                    # stores stop at the batch before the first that failed.
                    if unlanded is not None:
                        self._land(*unlanded)
                        unlanded = None
                    self._break(_failure(exc), [*landing, *sending])
                    return
                if unlanded is not None:
                    self._land(*unlanded)
                unlanded = (landing, sending, marks)
                self._unwritten = sending
        finally:
            if unlanded is not None:
                self._land(*unlanded)
            self._running = None

    async def _rest_of_fetch(self) -> None:
        """Wait, up to `fetch_wait`, for the fetch in hand to be staged whole, unless
        the flusher is full (the fetch loop then waits for this take)."""
        if self._fetch_in_hand is None or self.full():
            return
        rest = self._fetch_in_hand()
        if rest is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.fetch_wait):
                await asyncio.shield(rest)

    def _land(
        self,
        landing: list[_Batch],
        sending: list[_Batch],
        marks: dict[int, list[Entry]] | None,
    ) -> None:
        """A round is in Kafka: its batches into the local stores, their callers told."""
        try:
            self._settle(landing, marks)
        except Exception as exc:
            self._break(exc, [*landing, *sending])
            return
        now = time.perf_counter()
        for batch in landing if self.publisher.atomic else sending:
            self.hooks.flushed("outputs", now - batch.started)
        for batch in landing:
            self.hooks.flushed("state", now - batch.started)
            if not batch.done.done():  # a caller may have cancelled its wait
                batch.done.set_result(None)
            if batch.held:
                self._landed(batch.held, None)

    def _break(self, failed: Exception, batches: list[_Batch]) -> None:
        """A round failed (or its landing did): it and every batch after it fail."""
        if self._broken is None:
            self._broken = failed
        for batch in [*batches, *self._unsent]:
            self._fail(batch, failed)
        self._unsent = []
        if self._took is not None and not self._took.done():
            self._took.set_result(None)

    def _fail(self, batch: _Batch, failed: Exception) -> None:
        if not batch.done.done():
            batch.done.set_exception(failed)
        if batch.held:
            self._landed(batch.held, failed)

    def _settle(self, landing: list[_Batch], marks: dict[int, list[Entry]] | None) -> None:
        """The round's batches are in Kafka: into the local stores, oldest first. The
        marks go into the marks store in one go from what `_state_of` packed (each
        mark's partition and digest computed once a round), the newest per key as the
        records hold them, which leaves what settling the batches one by one would."""
        if marks is None or self._marks is None:
            for batch in landing:
                self.accounts.settle(batch.accounts)
                self.seen.settle(batch.seen)
            return
        for batch in landing:
            self.accounts.settle(batch.accounts)
        for partition, entries in marks.items():
            self._marks.put_entries(partition, entries)
        for batch in landing:
            self.seen.settle(batch.seen, written=True)

    def _state_of(self, batches: list[_Batch]) -> tuple[list[Out], dict[int, list[Entry]] | None]:
        """The batches' state records, and their marks per partition as packed (None:
        settle them key by key)."""
        if self.changelogs is None or not batches:
            return [], None
        accounts: dict[str, StoredAccount | None] = {}
        seen: dict[str, Mark | None] = {}
        for batch in batches:  # oldest first: the newest value per key wins
            accounts.update(batch.accounts)
            seen.update(batch.seen)
        return self._state_records(accounts, seen)

    def _state_records(
        self,
        accounts: Mapping[str, StoredAccount | None],
        seen: Mapping[str, Mark | None],
    ) -> tuple[list[Out], dict[int, list[Entry]] | None]:
        assert self.changelogs is not None
        changelog, marks = self.changelogs
        records = []
        for key, value in accounts.items():
            # Faust reads a table's partition p from its changelog's p.
            partition = partition_for(changelog.tenant_of(key), self.partitions)
            records.append(
                Out(
                    changelog.topic,
                    key.encode(),
                    None if value is None else changelog.encode(value),
                    partition=partition,
                    state=True,
                    owner=partition,
                )
            )
        packed = round_marks(marks, seen.items(), self.partitions)
        for partition, raw in packed.records:
            records.append(
                Out(marks.topic, None, raw, partition=partition, state=True, owner=partition)
            )
        return records, packed.entries


def _failure(exc: BaseException) -> Exception:
    return exc if isinstance(exc, Exception) else RuntimeError(f"flush stopped: {exc!r}")


def _ignore(tokens: list[Any], failure: Exception | None) -> None:
    pass


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
