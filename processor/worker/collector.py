"""Python's cyclic garbage collector, kept away from the worker's long-lived state.

A worker holds every account of its partitions in memory: at a million tenants,
millions of objects the collector tracks. Each of its passes holds the loop while it
walks what it looks at, so with Python's own policy a full pass, or a middle pass
over the survivors of a burst of newly read accounts, stopped the worker for
seconds: no record staged, no round landed, no `/authorize` answered
(docs/performance.md, "The collector's pauses and the memory of a million tenants").

So whatever survives a pass is frozen (`gc.freeze`): moved where no later pass looks.
Each pass then walks only what was allocated since the last one, as young passes did
before, and the middle and full passes find next to nothing. A frozen object is
still freed by its reference count when dropped, as an account's value is when its
next one replaces it; only cyclic garbage among frozen objects waits, for a rebalance,
where `renew` collects everything once: the records stop for a rebalance anyway. That
full pass walks every object (about a second a million objects), so it is made at most
once an hour: a rolling restart's rebalances pay it once, and the few cycles that wait
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
# "Figures behind design choices"). Every pass's survivors are frozen, so the older
# generations hold nothing: the other two numbers hardly matter.
GC_THRESHOLDS = (50_000, 2, 100)
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
        # The thresholds `install` replaced, which `uninstall` puts back.
        self._replaced: tuple[int, ...] | None = None

    def install(self) -> None:
        """Set the thresholds and watch every pass from now on, in this process."""
        if self._on_pass in gc.callbacks:
            return
        self._replaced = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        gc.callbacks.append(self._on_pass)

    def uninstall(self) -> None:
        """Stop watching, put the thresholds back, and give the frozen objects back to
        the collector."""
        if self._on_pass in gc.callbacks:
            gc.callbacks.remove(self._on_pass)
        if self._replaced is not None:
            gc.set_threshold(*self._replaced)
            self._replaced = None
        gc.unfreeze()

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
        # Called between the pass and anything else: the generations it walked are
        # empty and the older ones hold nothing (every pass's survivors were frozen),
        # so this freezes exactly this pass's survivors.
        gc.freeze()
