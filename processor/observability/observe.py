"""Worker-side observers: metrics read from the running app, off the processing path.

`install(meter)` wires everything with one call, before the worker starts:

- `meter_rebalances_total`: one per rebalance this worker takes part in (Faust sends
  `on_partitions_revoked` at the start of every one, the first join included).
- every `INTERVAL_SECONDS`, a timer sets `meter_ready`, `meter_consumer_lag_records`
  per owned input partition and, when `METER_METRICS_TENANT_BALANCES` > 0,
  `meter_tenant_balance` for that many tenants with the lowest balances. That walks
  every owned account each round: meant for small deployments, as the setting says.

Nothing here may stop or slow a worker: every step catches its own errors (a metric
that cannot be read this round is simply not updated), and walking the accounts
table yields to the event loop every `CHUNK` tenants.
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
import logging
from collections.abc import Callable, ItemsView, Iterable, Iterator
from decimal import Decimal
from typing import Any, Protocol

from processor.config.settings import Settings
from processor.kafka import glue
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.observability import metrics

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
# Tenants handled between two yields to the event loop: a few milliseconds of work.
CHUNK = 2000

BalanceOf = Callable[[Any], Decimal]

_DICT_ITEMS: type[ItemsView[Any, Any]] = type({}.items())


class _Card(Protocol):
    @property
    def currency(self) -> str: ...


class MeterLike(Protocol):
    """What the observers read from `processor.worker.app.Meter`."""

    @property
    def app(self) -> Any: ...
    @property
    def accounts(self) -> Any: ...
    @property
    def partitions(self) -> int: ...
    @property
    def names(self) -> TopicNames: ...
    @property
    def cfg(self) -> Settings: ...
    @property
    def card(self) -> _Card: ...

    def readiness(self) -> tuple[bool, str]: ...


def _fallback_balance_of(value: Any) -> Decimal:
    # A stored value holds its Account (`StoredAccount.account`); an Account has the
    # balance itself.
    balance = getattr(value, "balance", None)
    if balance is None:
        balance = value.account.balance
    return Decimal(balance)


def load_balance_of() -> BalanceOf:
    """`processor.worker.codec.balance_of` where it exists, else read the attribute.

    Imported when called, not at module import: the stored value's type is the
    worker's, and processor.observability sits below processor.worker in the import
    layers (pyproject.toml).
    """
    codec = importlib.import_module("processor.worker.codec")
    found = getattr(codec, "balance_of", None)
    if callable(found):
        return found  # type: ignore[no-any-return]
    return _fallback_balance_of


def input_labels(names: TopicNames) -> dict[str, str]:
    """Kafka topic name -> the label operators see (prefix-free, like meter_records_total)."""
    return {
        names.calls: "calls",
        names.conferencing: "conferencing",
        names.commands: "commands",
        names.reroute: "reroute",
        names.timer: "timer",
    }


async def lowest_balances(
    items: Iterable[tuple[str, Any]],
    limit: int,
    keep: Callable[[str], bool],
    balance_of: BalanceOf,
    chunk: int = CHUNK,
) -> list[tuple[Decimal, str]]:
    """The `limit` smallest (balance, tenant) pairs among the kept tenants, ascending.

    Ties on a balance go to the smaller tenant id, so a scrape does not flap between
    equal candidates. Yields to the loop after every `chunk` items.
    """
    best: list[tuple[Decimal, str]] = []
    batch: list[tuple[Decimal, str]] = []
    # Once `limit` candidates are known, a pair at or above the worst of them cannot
    # enter, so `keep` (a murmur2 hash per tenant) runs only for the few that could.
    worst: tuple[Decimal, str] | None = None
    for seen, (tenant, value) in enumerate(items, 1):
        pair = (balance_of(value), tenant)
        if (worst is None or pair < worst) and keep(tenant):
            batch.append(pair)
        if seen % chunk == 0:
            best = heapq.nsmallest(limit, [*best, *batch])
            batch = []
            if len(best) == limit:
                worst = best[-1]
            await asyncio.sleep(0)
    return heapq.nsmallest(limit, [*best, *batch])


class Observer:
    """Holds what the last round exported, so the next one can drop stale series."""

    def __init__(
        self,
        meter: MeterLike,
        balance_of: BalanceOf | None = None,
        chunk: int = CHUNK,
    ) -> None:
        self._meter = meter
        self.balance_of = balance_of if balance_of is not None else load_balance_of()
        self._chunk = chunk
        self._inputs = input_labels(meter.names)
        self._lag_series: set[tuple[str, str]] = set()

    # ---- rebalances ---------------------------------------------------------------

    async def on_partitions_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        metrics.REBALANCES.inc()

    # ---- the periodic round -------------------------------------------------------

    async def tick(self) -> None:
        """One round; never raises, since an exception would end Faust's timer task."""
        for step in (self.update_ready, self.update_consumer_lag, self.update_tenant_balances):
            try:
                await step()
            except Exception:
                log.exception("metrics observer %s failed; trying again next round", step)

    async def update_ready(self) -> None:
        try:
            ready, _ = self._meter.readiness()
        except Exception:
            # readiness() reads Faust internals that are absent early in startup.
            ready = False
        metrics.READY.set(1 if ready else 0)

    async def update_consumer_lag(self) -> None:
        """Highwater minus committed offset for each owned input partition.

        The same figure Kafka's consumer-group tools report: records not yet committed
        as processed. Faust commits every few seconds, so a busy partition shows a
        small standing lag; a growing one is the signal.
        """
        consumer = self._meter.app.consumer
        try:
            assignment = consumer.assignment()
        except Exception:
            # Not started, or mid-rebalance: nothing is owned that we can read.
            assignment = set()
        series: set[tuple[str, str]] = set()
        for tp in sorted(assignment):
            label = self._inputs.get(tp.topic)
            if label is None:  # table changelogs, standbys: not input
                continue
            lag = await self._lag(consumer, tp)
            if lag is None:
                continue
            key = (label, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*key).set(lag)
            series.add(key)
        # A partition that moved to another worker must not keep reporting here.
        for key in self._lag_series - series:
            metrics.CONSUMER_LAG.remove(*key)
        self._lag_series = series

    async def _lag(self, consumer: Any, tp: Any) -> int | None:
        try:
            # Last highwater the fetcher saw; None until the partition's first fetch.
            highwater = consumer.highwater(tp)
        except Exception:
            return None  # revoked between assignment() and now
        if highwater is None:
            return None
        # Faust's own record of what it committed (next offset to read). It is None
        # before the first commit of a fresh group and, in Faust, for offset 0.
        done = glue.committed_offsets(consumer).get(tp)
        if done is None:
            try:
                # The fetch position runs ahead of processing by at most the fetch
                # buffer: close enough until the first commit.
                done = await consumer.position(tp)
            except Exception:
                return None
            if done is None:
                return None
        return max(0, int(highwater) - int(done))

    async def update_tenant_balances(self) -> None:
        limit = self._meter.cfg.metrics_tenant_balances
        if limit <= 0:
            metrics.TENANT_BALANCE.clear()
            return
        owned = self._owned_partitions()
        partitions = self._meter.partitions
        lowest = await lowest_balances(
            _snapshot(self._meter.accounts),
            limit,
            lambda tenant: partition_for(tenant, partitions) in owned,
            self.balance_of,
            self._chunk,
        )
        currency = self._meter.card.currency
        # No await from clear() to the last set(): a scrape (same loop) sees either
        # the old set or the new one, never a half-built one.
        metrics.TENANT_BALANCE.clear()
        for balance, tenant in lowest:
            metrics.TENANT_BALANCE.labels(tenant, currency).set(float(balance))

    def _owned_partitions(self) -> set[int]:
        # Active (not standby) partitions only: a standby's tenants are exported by
        # their owner, and reporting them twice would double them in a sum.
        try:
            actives = self._meter.app.assignor.assigned_actives()
        except Exception:
            return set()
        return {tp.partition for tp in actives if tp.topic == self._meter.names.calls}


def _snapshot(table: Any) -> Iterator[tuple[str, Any]]:
    items = table.items()
    if isinstance(items, _DICT_ITEMS):
        # The in-memory store hands out a live dict view: iterating it across an
        # await would fail as soon as an agent adds a tenant. Copying the pairs is
        # one C-level pass; the costly per-tenant work still runs in chunks.
        return iter(list(items))
    # Serialized stores (RocksDB) decode each value as it is reached; a store that
    # changes underneath fails this round, which the next one repeats.
    return iter(items)


def install(meter: MeterLike, interval: float = INTERVAL_SECONDS) -> Observer:
    """Connect the observers to `meter.app`; call once, before the worker starts."""
    observer = Observer(meter)
    # Strong reference (the default): the observer lives as long as the app.
    meter.app.on_partitions_revoked.connect(observer.on_partitions_revoked)
    meter.app.timer(interval=interval, name="metrics-observer")(observer.tick)
    metrics.READY.set(0)
    return observer
