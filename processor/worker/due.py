"""The recharge "due" index: which owned tenants next need the timer, and firing it.

A pending recharge request times out or is retried, and lots expire (or get an
expiring notice), at a time the account knows. The index holds those times for the
tenants this worker owns; each timer turn fires a tick for every one whose time has
come. A tick goes through the timer topic to the tenant's owner like any other input,
so the state change happens inside normal processing; repeats are harmless.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from processor.core.engine import EXPIRY_TICK, TimerTick
from processor.core.lots import next_expiry_due
from processor.core.recharge import next_due
from processor.core.state import Account, ExpiryPolicy, RechargePolicy
from processor.core.stored import StoredAccount
from processor.kafka.routing import partition_for
from processor.kafka.wire import dump_tick
from processor.worker.records import Out
from processor.worker.staged import Staged

# How long after firing a tenant's expiry tick the timer fires it again if the tick
# has not been applied by then (it was lost with a crash, or is still queued).
EXPIRY_REFIRE = timedelta(seconds=60)
# The timer indexes only the tenants whose lots are due within this of its last
# rebuild (most lots are months away, and an index entry costs memory per tenant),
# and rebuilds from the tally when half of it has passed.
EXPIRY_HORIZON = timedelta(hours=12)


@dataclass(init=False, unsafe_hash=True, slots=True)
class Due:
    at: Final[datetime]
    request_id: Final[str]
    attempt: Final[int]

    def __init__(self, at: datetime, request_id: str, attempt: int) -> None:
        self.at = at
        self.request_id = request_id
        self.attempt = attempt


class DueIndex:
    """When each owned tenant next needs the timer, and the ticks that fire it."""

    def __init__(
        self,
        accounts: Staged[str, StoredAccount],
        policy: RechargePolicy,
        expiry: ExpiryPolicy,
        timer_topic: str,
        partitions: int,
        send: Callable[[Out], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.accounts = accounts
        self.policy = policy
        self.expiry = expiry
        self.timer_topic = timer_topic
        self.partitions = partitions
        self._send = send
        self.clock = clock
        # When each owned tenant's pending recharge next needs the timer.
        self.due: dict[str, Due] = {}
        # When each owned tenant's lots next need the timer (an expiry or an expiring
        # notice), and the same as a heap, soonest first, so a timer tick looks only at
        # the tenants due (entries the dict no longer holds are skipped as stale).
        self.expiry_due: dict[str, datetime] = {}
        self._expiry_heap: list[tuple[datetime, str]] = []
        # Until when the index holds every tenant due (None: it holds every tenant with
        # lots, as before the first rebuild); later times are left to the next rebuild.
        self.expiry_horizon: datetime | None = None

    def track(self, account: Account) -> None:
        """Index `account`'s next due times (after a record changed or read it)."""
        at = next_due(account, self.policy)
        if at is None or account.pending is None:
            self.due.pop(account.tenant_id, None)
        else:
            self.due[account.tenant_id] = Due(
                at, account.pending.request_id, account.pending.attempt
            )
        if account.lots:
            expiry_at = next_expiry_due(account, self.expiry)
            if expiry_at is not None:
                self._expire_at(account.tenant_id, expiry_at)
        elif self.expiry_due:
            self.expiry_due.pop(account.tenant_id, None)

    def _expire_at(self, tenant: str, at: datetime) -> None:
        horizon = self.expiry_horizon
        if horizon is not None and at > horizon:
            self.expiry_due.pop(tenant, None)  # the rebuild that moves the horizon finds it
            return
        if self.expiry_due.get(tenant) != at:
            self.expiry_due[tenant] = at
            heapq.heappush(self._expiry_heap, (at, tenant))

    def rebuild(
        self,
        pending: Iterable[str],
        owned: Callable[[str], bool],
        expiring: Iterable[tuple[str, int]] = (),
    ) -> None:
        """After a rebalance: index the open requests of the tenants now owned here.

        `pending`: the owned tenants whose stored value has a request open; the batch
        being staged or flushed may have opened more. `expiring`: the owned tenants
        with lots and their first lot's expiry (epoch seconds), indexed without
        decoding their values: at the earliest its notice could be due, so at worst
        one tick finds nothing to do and indexes the tenant's exact time. Only those
        due within EXPIRY_HORIZON are indexed; `needs_rebuild` says when to call this
        again for the next ones (also without a rebalance).
        """
        self.due.clear()
        self.expiry_due.clear()
        self._expiry_heap.clear()
        horizon = self.expiry_horizon = self.clock() + EXPIRY_HORIZON
        notice = self.expiry.notice
        # Compared in epoch seconds: a datetime only for the few within the horizon.
        last = horizon.timestamp() + notice.total_seconds()
        for tenant, first in expiring:
            if first <= last and owned(tenant):
                self._expire_at(tenant, datetime.fromtimestamp(first, UTC) - notice)
        for tenant in dict.fromkeys([*pending, *self.accounts.staged_keys()]):
            stored = self.accounts.get(tenant)
            timed = stored is not None and (stored.account.pending or stored.account.lots)
            if stored is not None and timed and owned(tenant):
                self.track(stored.account)

    def needs_rebuild(self) -> bool:
        """Whether half the expiry index's horizon has passed: time to `rebuild` it."""
        horizon = self.expiry_horizon
        return horizon is not None and self.clock() >= horizon - EXPIRY_HORIZON / 2

    def fire(self) -> int:
        """Stage a tick for every request and every tenant's lots whose time has come."""
        now = self.clock()
        fired = 0
        for tenant, due in list(self.due.items()):
            if due.at > now:
                continue
            tick = TimerTick(
                tick_id=f"{due.request_id}#{due.attempt}@{int(now.timestamp())}",
                tenant_id=tenant,
                request_id=due.request_id,
                attempt=due.attempt,
                at=now,
            )
            self._send_tick(tick)
            fired += 1
        return fired + self._fire_expiry(now)

    def _fire_expiry(self, now: datetime) -> int:
        """Stage an expiry tick for every tenant whose lots are due (heap order).

        A fired tenant is looked at again after EXPIRY_REFIRE unless its tick was
        applied first (which indexes its next time): a tick lost with a crash is sent
        again, and a repeat finds nothing left to do.
        """
        heap, fired = self._expiry_heap, 0
        while heap and heap[0][0] <= now:
            at, tenant = heapq.heappop(heap)
            if self.expiry_due.get(tenant) != at:
                continue  # stale: re-indexed since
            tick = TimerTick(
                tick_id=f"expiry@{int(now.timestamp())}",
                tenant_id=tenant,
                request_id="",
                attempt=0,
                at=now,
                kind=EXPIRY_TICK,
            )
            self._send_tick(tick)
            self._expire_at(tenant, now + EXPIRY_REFIRE)
            fired += 1
        return fired

    def _send_tick(self, tick: TimerTick) -> None:
        # In the transaction of the tenant's partition number, to its owner's partition.
        owner = partition_for(tick.tenant_id, self.partitions)
        self._send(Out(self.timer_topic, tick.tenant_id.encode(), dump_tick(tick), owner=owner))
