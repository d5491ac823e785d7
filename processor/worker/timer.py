"""One turn of the worker's recharge timer: the due index, the gauges, the seen sweep.

Each turn (every METER_TIMER_INTERVAL_SECONDS) rebuilds the due index after a
rebalance or when its expiry horizon is half gone, sets the tenant gauges from the
tally, drops seen marks past their window (processor/worker/marks.py, a bounded slice
at a time, the loop free between slices), fires the ticks that are due and flushes
them (processor/worker/due.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

from processor.kafka.routing import partition_for
from processor.observability import metrics
from processor.worker.marks import Budget, MarkStore
from processor.worker.pipeline import Pipeline
from processor.worker.tally import AccountTally

# The seen sweep, per slice: shards looked at, marks rebuilt (a slice is a few ms on
# the loop at most); slices per turn, at most. A shard is rebuilt once its oldest mark
# is a grace period past its window, so each is rebuilt about once per grace period:
# a mark outlives its window by that much at most (plus a pass of the sweep), and the
# sweep's work is one rebuild per mark held per grace period. The grace is 1/168 of
# the window (an hour of the default week), at most SWEEP_GRACE_SECONDS.
SWEEP_SHARDS = 4096
SWEEP_MARKS = 5000
SWEEP_SLICES = 32
SWEEP_GRACE_SECONDS = 3600


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
        await self.sweep_seen()
        due.fire()
        await self.pipeline.flusher.flush()

    def update_gauges(self, owned: set[int]) -> None:
        """The tenant, open-request and exhausted gauges of the `owned` partitions."""
        totals = self.tally.totals(owned)
        metrics.TENANTS.set(totals.tenants)
        metrics.OUTSTANDING.set(totals.outstanding)
        metrics.EXHAUSTED.set(totals.exhausted)

    async def sweep_seen(self) -> None:
        """Drop seen marks past their window, slice by slice, and set the marks gauges."""
        marks = self.seen
        if not isinstance(marks, MarkStore):
            return
        clock = self.pipeline.intake.clock
        grace = sweep_grace(self.pipeline.engine.dedupe.span.total_seconds())
        for _ in range(SWEEP_SLICES):
            budget = Budget(SWEEP_SHARDS, SWEEP_MARKS)
            now = int(clock().timestamp())
            self.pipeline.flusher.sweep_seen(now, budget, grace)
            if budget.shards > 0 and budget.marks > 0:
                break  # every shard looked at: nothing more this turn
            await asyncio.sleep(0)
        metrics.MARKS.set(len(marks))


def sweep_grace(window_seconds: float) -> int:
    """How long past its window a mark may stay held (SWEEP_SHARDS' comment)."""
    return min(SWEEP_GRACE_SECONDS, int(window_seconds / 168))
