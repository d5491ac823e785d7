"""One turn of the worker's recharge timer: the due index, the gauges, the seen sweep.

Each turn (every METER_TIMER_INTERVAL_SECONDS) rebuilds the due index after a
rebalance or when its expiry horizon is half gone, sets the tenant gauges from the
tally, forgets seen marks past their window, fires the ticks that are due and flushes
them (processor/worker/due.py).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from processor.kafka.routing import partition_for
from processor.observability import metrics
from processor.worker.pipeline import Pipeline
from processor.worker.store import SeqMemoryStore
from processor.worker.tally import AccountTally

# Seen marks forgotten per timer turn, at most: at the default 5 s turn, 10,000 a
# second, as many as the worker can meter; a turn's tombstones are one flush.
SEEN_FORGOTTEN_PER_TICK = 50_000


class RechargeTimer:
    def __init__(
        self,
        pipeline: Pipeline,
        tally: AccountTally,
        seen: MutableMapping[Any, Any],
        owned: Callable[[], set[int]],
    ) -> None:
        """`seen`: the seen table's store; `owned`: the partitions assigned here now."""
        self.pipeline = pipeline
        self.tally = tally
        self.seen = seen
        self.owned = owned
        # Set by a rebalance: the next turn indexes the tenants owned now.
        self._rebuild = True

    def rebalanced(self) -> None:
        self._rebuild = True

    async def turn(self) -> None:
        """One turn; raises if its flush failed (the caller's crash policy decides)."""
        due = self.pipeline.due
        owned = self.owned()
        if self._rebuild or due.needs_rebuild():
            self._rebuild = False
            partitions = self.pipeline.flusher.partitions

            def owns(tenant: str) -> bool:
                return partition_for(tenant, partitions) in owned

            due.rebuild(self.tally.pending(owned), owns, self.tally.expiring(owned))
        self.update_gauges(owned)
        self.forget_expired_seen()
        due.fire()
        await self.pipeline.flusher.flush()

    def update_gauges(self, owned: set[int]) -> None:
        """The tenant, open-request and exhausted gauges of the `owned` partitions."""
        totals = self.tally.totals(owned)
        metrics.TENANTS.set(totals.tenants)
        metrics.OUTSTANDING.set(totals.outstanding)
        metrics.EXHAUSTED.set(totals.exhausted)

    def forget_expired_seen(self) -> None:
        """Forget (at most SEEN_FORGOTTEN_PER_TICK) seen marks past their window."""
        marks = self.seen
        if not isinstance(marks, SeqMemoryStore):
            return
        now = int(self.pipeline.intake.clock().timestamp())
        self.pipeline.flusher.forget_seen(marks.expired_marks(now, SEEN_FORGOTTEN_PER_TICK))
        metrics.MARKS.set(len(marks.data))
