"""The worker's core wired together: intake stages records, the flusher lands them, the
due index times the recharge and expiry ticks.

Every part is given what it works on at construction (`Pipeline.build`); nothing is
assigned into another object afterwards. The engine and the flusher share the same two
staged views of the tables, so the engine reads the batch's own writes and the flusher
settles them into the tables once they are in Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime

from processor.core.dedupe import DedupeWindow
from processor.core.engine import Engine
from processor.core.rating import RateCard
from processor.core.state import ExpiryPolicy, RechargePolicy
from processor.core.stored import Mark, StoredAccount
from processor.kafka.topics import TopicNames
from processor.observability.worker_hooks import WorkerHooks
from processor.worker.due import DueIndex
from processor.worker.flusher import (
    BATCH_MAX,
    BATCH_MAX_BYTES,
    Deliveries,
    FetchInHand,
    Flusher,
    Landed,
)
from processor.worker.intake import Intake
from processor.worker.marks_log import MarksLog
from processor.worker.records import Changelog, Publisher, Record, Source, utcnow
from processor.worker.sizing import Limits
from processor.worker.staged import Staged


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The worker's core: what `Meter` (and the tests, over dicts) drive."""

    engine: Engine
    intake: Intake
    flusher: Flusher
    due: DueIndex

    @classmethod
    def build(
        cls,
        card: RateCard,
        policy: RechargePolicy,
        dedupe: DedupeWindow,
        accounts: MutableMapping[str, StoredAccount],
        seen: MutableMapping[str, Mark],
        names: TopicNames,
        partitions: int,
        publisher: Publisher,
        *,
        expiry: ExpiryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        changelogs: tuple[Changelog, MarksLog] | None = None,
        batch_max: int = BATCH_MAX,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        limits: Limits | None = None,
        deliveries: Deliveries | None = None,
        landed: Landed | None = None,
        fetch_in_hand: FetchInHand | None = None,
    ) -> Pipeline:
        """Wire the parts over `accounts` and `seen` (a table's store, or a dict).

        `deliveries`: which outbox entries are in Kafka (the worker's asks the group's
        committed offsets); `landed`: handed the tokens of `flusher.hold` once their
        flush landed or failed; `fetch_in_hand`: what of a fetch is still to be
        staged, so that no round is cut in the middle of one.
        """
        staged_accounts: Staged[str, StoredAccount] = Staged(accounts)
        staged_seen: Staged[str, Mark] = Staged(seen)
        engine = Engine(
            card,
            policy,
            dedupe,
            staged_accounts,
            staged_seen,
            delivered=deliveries or Deliveries(),
            expiry=expiry,
            ledger_topic=names.ledger,
        )
        hooks = WorkerHooks(names, card.currency)
        flusher = Flusher(
            publisher,
            staged_accounts,
            staged_seen,
            partitions,
            hooks,
            changelogs=changelogs,
            batch_max=batch_max,
            batch_max_bytes=batch_max_bytes,
            landed=landed,
            fetch_in_hand=fetch_in_hand,
        )
        due = DueIndex(
            staged_accounts, policy, engine.expiry, names.timer, partitions, flusher.send, clock
        )
        intake = Intake(engine, names, partitions, flusher.send, due, hooks, clock, limits)
        return cls(engine, intake, flusher, due)

    async def handle(self, source: Source, rec: Record) -> str:
        """Stage one record of a contract input topic and flush it at once."""
        status = self.intake.stage(source, rec)
        await self.flusher.flush()
        return status
