"""The flush protocol: a batch's outputs, then its state, then its input records' acks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from processor.core.stored import Mark, OutboxEntry, StoredAccount
from processor.core.values import fast_init
from processor.kafka.routing import partition_for
from processor.observability.worker_hooks import WorkerHooks
from processor.worker.marks import Budget, MarkStore
from processor.worker.marks_log import MarksLog, marks_records
from processor.worker.records import Changelog, Out, Publisher
from processor.worker.staged import Staged

# Rounds go together, not each chain on its own, once `batch_max // COUPLED_SHARE`
# records are held (`Flusher._flying`).
COUPLED_SHARE = 8

# What the caller is handed back for the records of a flush that landed (None) or
# failed (the failure): the tokens it gave `hold`, its input messages in the worker.
Landed = Callable[[list[Any], Exception | None], None]


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


@fast_init
@dataclass(frozen=True, slots=True)
class _Batch:
    """A batch taken for flushing: its outputs, its account values and seen marks."""

    outputs: list[Out]
    accounts: dict[str, StoredAccount | None]
    seen: dict[str, Mark | None]
    held: list[Any]
    done: asyncio.Future[None]
    started: float


class _Chain:
    """One partition number's batches, landed one round at a time, in order.

    With an atomic publisher each partition number has its own chain (a record's
    outputs and state all belong to its partition: one transaction holds them), so a
    round waits for no other partition's commit; otherwise one chain holds all.
    """

    __slots__ = ("flying", "go", "held", "key", "outputs", "running", "unsent", "unwritten")

    def __init__(self, key: int) -> None:
        self.key = key
        self.outputs: list[Out] = []
        # What the caller holds for each record staged since the last take.
        self.held: list[Any] = []
        # Batches taken whose outputs are still to be sent; batches whose outputs are
        # in and whose state is still to be sent; those of the round in flight; and
        # the task that sends them.
        self.unsent: list[_Batch] = []
        self.unwritten: list[_Batch] = []
        self.flying: list[_Batch] = []
        self.running: asyncio.Future[None] | None = None
        # Released from parking: its next round goes with the others, whatever is held.
        self.go = False


class Flusher:
    """Takes what intake staged in batches and lands each in Kafka, in order.

    The commit protocol, step by step (docs/guarantees.md):

    1. Intake names the partition of the record it stages (`at`), stages the
       record's outputs here (`send`) and its account value and seen mark in the
       staged views (processor/worker/staged.py); the worker hands over the record's
       input message (`hold`), which stays unacknowledged.
    2. Each partition number has its own chain of batches (`_Chain`; one chain for
       all with a publisher that is not atomic). A batch is taken from a chain
       (`flush`, or the chain's running task itself once its round is done): the
       chain's outputs, the views' pending writes of its partition (one per key, the
       newest) and its held messages. Records staged while the chain's round is in
       flight go out together in its next round, so a worker under load sends large
       rounds and an idle one sends a batch as soon as it is staged. `full`/`room`:
       at `batch_max` held records in all, the worker stages no more until the next
       take (back-pressure).
    3. One round at a time per chain (chains run side by side, and none waits for
       another's commit), the batch's outputs are published, in staging order.
    4. Then its state: one changelog record per touched account, and one record per
       partition holding the round's seen marks (processor/worker/marks_log.py), sent
       only once the round carrying its outputs was acknowledged, so a value never
       reaches the changelog before the outputs of the records it applied. With an
       atomic publisher (the worker's: one Kafka transaction per partition number,
       processor/worker/publisher.py) a batch's outputs and state go in the same round,
       in its partition's transaction, and land together or not at all.
    5. The state landed: the staged views settle the batch into the local stores (in
       its chain's order), the batch is done, and `landed(held, None)` hands the
       messages back. The worker (`Meter._landed`) settles the input topics' records
       per partition at once (processor/worker/consumer.py `GuardedConsumer.settle`),
       and marks each of the agents' records taken (`Taken`) and gives it its last ack.
    6. Faust commits the acked offsets: its commit timer every
       `broker_commit_interval`, and the fetch loop every `broker_commit_every` acks.
       The guard (processor/worker/consumer.py) refuses the ack of a record that was
       not taken in its generation, and nothing is committed past a refused offset.
       So an input offset is committed only after everything it caused is in Kafka,
       and outbox entries below a committed offset count as delivered (`Deliveries`).

    `flush` is a barrier over all chains: it takes what is staged in each and returns
    once every batch taken before it has landed. A failed publish breaks the flusher:
    every batch not yet landed, in every chain, fails (its `flush` raises,
    `landed(held, failure)`), the local stores stop at the batches before, and every
    later flush fails too: the worker crashes and replays from the committed offsets.
    """

    def __init__(
        self,
        publisher: Publisher,
        accounts: Staged[str, StoredAccount],
        seen: Staged[str, Mark],
        partitions: int,
        hooks: WorkerHooks,
        changelogs: tuple[Changelog, MarksLog] | None = None,
        batch_max: int = 2000,
        landed: Landed | None = None,
    ) -> None:
        self.publisher = publisher
        self.accounts = accounts
        self.seen = seen
        self.partitions = partitions
        self.hooks = hooks
        self.changelogs = changelogs
        self.batch_max = batch_max
        self._landed = landed or _ignore
        self._atomic = publisher.atomic
        self._chains: dict[int, _Chain] = {0: _Chain(0)}
        # The chain of the record being staged (`at`), and its key.
        self._current = self._chains[0]
        self._at = 0
        # Held records not yet taken, over all chains (`full`).
        self._holding = 0
        # Rounds in flight, and chains waiting for all of them to land: with this many
        # records held, a worker is behind, and rounds started together stay large
        # (one transaction each costs the worker and the broker the same however
        # small), as they were before chains; below it, a chain goes on at once.
        self._flying = 0
        self._parked: set[_Chain] = set()
        self._coupled_at = max(1, batch_max // COUPLED_SHARE)
        self._took: asyncio.Future[None] | None = None
        # Set when a publish failed: the local stores stop at the batches before it,
        # and every later flush fails too (the worker restarts and replays them).
        self._broken: Exception | None = None

    # ---- staging ------------------------------------------------------------------

    def at(self, partition: int) -> None:
        """The records staged next were read from `partition` (intake says so)."""
        if partition != self._at and self._atomic:
            self._at = partition
            self._current = self._chain(partition)
            self.accounts.at(partition)
            self.seen.at(partition)

    def send(self, out: Out) -> None:
        """Stage one output for its partition's next batch."""
        key = out.owner if self._atomic else 0
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chain(key)
        chain.outputs.append(out)
        self.hooks.output(out.topic)

    def hold(self, token: Any) -> None:
        """Keep `token` for the record just staged, and have the flusher take it."""
        chain = self._current
        chain.held.append(token)
        self._holding += 1
        if chain.running is None and chain not in self._parked:
            self._start(chain)

    def full(self) -> bool:
        """Whether `batch_max` records wait for their next round: stage no more."""
        return self._holding >= self.batch_max

    async def room(self) -> None:
        """Wait until the flusher has taken what waits (or failed)."""
        while self.full() and self._broken is None:
            if self._took is None:
                self._took = asyncio.get_running_loop().create_future()
            for chain in list(self._chains.values()):
                if chain.held:
                    self._start(chain)
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
        if self._atomic:
            chains = [c for c in list(self._chains.values()) if self._busy(c)]
        else:
            chains = [self._chains[0]]
        batches = [self._take(chain) for chain in chains]
        for chain in chains:
            self._start(chain)
        if len(batches) == 1:
            await batches[0].done
        elif batches:
            await asyncio.gather(*(batch.done for batch in batches))
        elif self._broken is not None:
            raise self._broken

    def _chain(self, key: int) -> _Chain:
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = _Chain(key)
        return chain

    def _staged(self, chain: _Chain) -> bool:
        key = chain.key
        return bool(
            chain.outputs or chain.held or self.accounts.staged_in(key) or self.seen.staged_in(key)
        )

    def _busy(self, chain: _Chain) -> bool:
        # Staged, or with batches not yet landed (a barrier waits for them).
        return chain.running is not None or bool(chain.unsent or self._staged(chain))

    def _take(self, chain: _Chain) -> _Batch:
        self.hooks.apply()
        loop = asyncio.get_running_loop()
        outputs, chain.outputs = chain.outputs, []
        held, chain.held = chain.held, []
        self._holding -= len(held)
        key = chain.key
        accounts, seen = self.accounts.take(key), self.seen.take(key)
        batch = _Batch(outputs, accounts, seen, held, loop.create_future(), time.perf_counter())
        # A failure nobody waits on is reported through `landed`.
        batch.done.add_done_callback(_retrieve)
        took, self._took = self._took, None
        if took is not None and not took.done():
            took.set_result(None)
        if self._broken is not None:
            self._fail(batch, self._broken)
        else:
            chain.unsent.append(batch)
        return batch

    def _start(self, chain: _Chain) -> None:
        # A parked chain starts when the last round in flight lands (`_round_over`).
        if chain.running is None and self._broken is None and chain not in self._parked:
            chain.running = asyncio.ensure_future(self._run(chain))

    def _round_over(self) -> None:
        self._flying -= 1
        if not self._flying and self._parked:
            parked, self._parked = self._parked, set()
            for chain in parked:
                chain.go = True
                self._start(chain)

    async def _run(self, chain: _Chain) -> None:
        try:
            while self._broken is None:
                if chain.go:
                    chain.go = False
                elif self._flying and (self._parked or self._holding >= self._coupled_at):
                    # Behind: wait for the rounds in flight, and go with the others.
                    self._parked.add(chain)
                    break
                if self._staged(chain):
                    self._take(chain)
                if not (chain.unsent or chain.unwritten):
                    break
                sending, chain.unsent = chain.unsent, []
                landing, chain.unwritten = chain.unwritten, []
                if self._atomic:
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
                chain.flying = [*landing, *sending]
                self._flying += 1
                try:
                    records += self._state_of(landing, chain.key)
                    if records:
                        await self.publisher.publish(records)
                    if self._broken is not None:
                        # Another chain failed meanwhile, and these batches with it.
                        return
                    for batch in landing:
                        self.accounts.settle(batch.accounts, chain.key)
                        self.seen.settle(batch.seen, chain.key)
                except BaseException as exc:
                    # Reported through each batch's own future, to its caller; the local
                    # stores stop at the batches before the first that failed.
                    if self._broken is None:
                        self._break(_failure(exc))
                    return
                finally:
                    self._round_over()
                chain.flying = []
                now = time.perf_counter()
                for batch in landing if self._atomic else sending:
                    self.hooks.flushed("outputs", now - batch.started)
                for batch in landing:
                    self.hooks.flushed("state", now - batch.started)
                    if not batch.done.done():  # a caller may have cancelled its wait
                        batch.done.set_result(None)
                    if batch.held:
                        self._landed(batch.held, None)
                chain.unwritten = sending
        finally:
            chain.running = None

    def _break(self, failed: Exception) -> None:
        """Fail every batch not landed, in every chain: the worker is to replay them."""
        self._broken = failed
        for chain in self._chains.values():
            batches = [*chain.flying, *chain.unwritten, *chain.unsent]
            chain.flying, chain.unwritten, chain.unsent = [], [], []
            for batch in batches:
                self._fail(batch, failed)
        if self._took is not None and not self._took.done():
            self._took.set_result(None)

    def _fail(self, batch: _Batch, failed: Exception) -> None:
        if not batch.done.done():
            batch.done.set_exception(failed)
        if batch.held:
            self._landed(batch.held, failed)

    def _state_of(self, batches: list[_Batch], chain: int) -> list[Out]:
        if self.changelogs is None or not batches:
            return []
        accounts: dict[str, StoredAccount | None] = {}
        seen: dict[str, Mark | None] = {}
        for batch in batches:  # oldest first: the newest value per key wins
            accounts.update(batch.accounts)
            seen.update(batch.seen)
        records = self._state_records(accounts, seen)
        if self._atomic:
            for r in records:
                if r.owner != chain:
                    # Its transaction would not be the one of the records that wrote it.
                    raise RuntimeError(
                        f"state of partition {r.owner} staged by records of partition {chain}"
                    )
        return records

    def _state_records(
        self,
        accounts: Mapping[str, StoredAccount | None],
        seen: Mapping[str, Mark | None],
    ) -> list[Out]:
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
        for partition, packed in marks_records(marks, seen.items(), self.partitions):
            records.append(
                Out(marks.topic, None, packed, partition=partition, state=True, owner=partition)
            )
        return records


def _failure(exc: BaseException) -> Exception:
    return exc if isinstance(exc, Exception) else RuntimeError(f"flush stopped: {exc!r}")


def _ignore(tokens: list[Any], failure: Exception | None) -> None:
    pass


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
