"""Python's cyclic garbage collector, kept away from the worker's long-lived state.

A worker holds every account of its partitions in memory: at a million tenants,
millions of objects the collector tracks. Each of its passes holds the loop while it
walks what it looks at, so with Python's own policy a full pass, or a middle pass
over the survivors of a burst of newly read accounts, stopped the worker for
seconds: no record staged, no round landed, no `/authorize` answered
(docs/performance.md, "The collector's pauses at a million tenants").

So the young passes are kept small, and whatever survives a middle pass, long-lived
by then, is frozen (`gc.freeze`): moved where no later pass looks. A frozen object is
still freed by its reference count when dropped, as an account's value is when its
next one replaces it; only cyclic garbage among frozen objects waits, for a rebalance,
where `renew` collects everything once: the records stop for a rebalance anyway. That
full pass walks every object (about a second a million objects), so it is made at most once
an hour: a rolling restart's rebalances pay it once, and the few cycles that wait
meanwhile (47 objects over 600,000 events, measured) cost nothing worth a pause.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram

# Young passes every 50,000 net allocations of tracked objects: with Python's default
# (700) the passes cost about as much CPU as the records themselves (docs/performance.md,
# "Figures behind design choices"). A middle pass after every second young one, so
# that it walks at most about three times that many objects before they are frozen.
# The third number hardly matters: full passes find only what the last renewal or
# freeze left, close to nothing.
GC_THRESHOLDS = (50_000, 2, 100)
# A young pass walks what is alive of what was allocated since the last one. Python
# counts allocations net of frees, so a worker that replaces account values (a new one
# allocated, the old one freed) seldom reaches a threshold, and a pass then walks
# every value written since. Passes on a clock keep each one to a tenth of a second's.
COLLECT_EVERY_SECONDS = 0.1
# The least time between two renewals (full passes over everything, frozen included).
RENEW_EVERY_SECONDS = 3600.0


class Collector:
    """The worker's collector policy: `install` once per process, `renew_if_due` at every
    rebalance. Each pass's pause is observed in `pauses`, by generation.

    How many objects are frozen is not reported: `gc.get_freeze_count` walks them all,
    a tenth of a second a million objects, which every scrape would repeat."""

    def __init__(
        self,
        pauses: Histogram,
        renew_every: float = RENEW_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pauses = {g: pauses.labels(generation=str(g)) for g in range(3)}
        self._began = 0.0
        self._renew_every = renew_every
        self._clock = clock
        self._renewed: float | None = None

    def install(self) -> None:
        """Set the thresholds and watch every pass from now on, in this process."""
        gc.set_threshold(*GC_THRESHOLDS)
        if self._on_pass not in gc.callbacks:
            gc.callbacks.append(self._on_pass)

    def uninstall(self) -> None:
        """Stop watching, and give the frozen objects back to the collector."""
        if self._on_pass in gc.callbacks:
            gc.callbacks.remove(self._on_pass)
        gc.unfreeze()

    def tick(self) -> None:
        """A young pass now, whatever Python's counts say; its survivors are frozen."""
        gc.collect(1)

    def renew(self) -> int:
        """Collect everything, frozen objects included, and freeze what is left;
        returns how many objects were garbage."""
        gc.unfreeze()
        collected = gc.collect()
        # The pass's own callback froze its survivors; frozen here too if none runs.
        gc.freeze()
        self._renewed = self._clock()
        return collected

    def renew_if_due(self) -> int | None:
        """`renew`, unless the last renewal was less than `renew_every` seconds ago
        (then None)."""
        if self._renewed is not None and self._clock() - self._renewed < self._renew_every:
            return None
        return self.renew()

    def _on_pass(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        generation: int = info["generation"]
        self._pauses[generation].observe(time.perf_counter() - self._began)
        if generation:
            # Called between the pass and anything else: the young generations are
            # empty, so this freezes exactly the pass's survivors.
            gc.freeze()
