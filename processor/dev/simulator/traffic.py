"""What to send and when: the traffic generator, re-sent duplicates, pacing."""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Literal

from processor.dev.simulator.config import SimulatorConfig
from processor.dev.simulator.contract import (
    CENT,
    COMMANDS,
    GARBAGE_KINDS,
    USAGE_CALLS,
    USAGE_CONFERENCING,
    GarbageKind,
)
from processor.dev.simulator.events import (
    OutRecord,
    encode,
    make_auto_recharge_configured,
    make_call_usage,
    make_conference_usage,
    make_funds_added,
    make_garbage,
)
from processor.dev.simulator.tenants import AutoRecharge, TenantProfile, generate_tenants

# ------------------------------------------------------------------ duplicates


class DuplicateScheduler:
    """Re-sends a share of records verbatim a few seconds later, as at-least-once
    telephony collectors do after a timeout."""

    def __init__(
        self,
        ratio: float,
        rng: random.Random,
        *,
        min_delay: float = 0.5,
        max_delay: float = 10.0,
        capacity: int = 100_000,
    ) -> None:
        self.ratio = ratio
        self._rng = rng
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._capacity = capacity
        self._heap: list[tuple[float, int, OutRecord]] = []
        self._seq = 0

    def offer(self, record: OutRecord, now: float) -> bool:
        """Maybe schedule ``record`` for a re-send; ``now`` is a monotonic clock."""
        if self.ratio <= 0 or self._rng.random() >= self.ratio:
            return False
        if len(self._heap) >= self._capacity:
            return False  # bounded memory if sending stalls
        self._seq += 1
        due = now + self._rng.uniform(self._min_delay, self._max_delay)
        heapq.heappush(self._heap, (due, self._seq, record))
        return True

    def due(self, now: float) -> list[OutRecord]:
        out: list[OutRecord] = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def drain(self) -> list[OutRecord]:
        out = [item[2] for item in sorted(self._heap)]
        self._heap.clear()
        return out

    def __len__(self) -> int:
        return len(self._heap)


# ----------------------------------------------------------------------- traffic

# What `TrafficGenerator.next_traffic` made of a tick: "blocked" is a call the gate
# refused, so nothing is sent.
TrafficKind = Literal["usage", "garbage", "miskeyed", "blocked"]


class TrafficGenerator:
    """Decides every record the simulated telephony, conferencing and admins send.

    Pure apart from its own seeded state, so tests drive it without a broker. Ids
    carry a per-run tag: re-running with the same seed against the same topics
    must not turn the whole run into duplicates of the previous one.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        rng: random.Random,
        run_tag: str,
        *,
        tenants: list[TenantProfile] | None = None,
        allows: Callable[[str], bool] | None = None,
    ) -> None:
        """``tenants``: generated from ``rng`` when not given. ``allows``: telephony's
        call gate (``CallGate.allows``); None places every call."""
        self.config = config
        self.rng = rng
        self.run_tag = run_tag
        self.tenants = tenants if tenants is not None else generate_tenants(config.tenants, rng)
        self._allows = allows
        self._cum_weights: list[float] = []
        total = 0.0
        for t in self.tenants:
            total += t.weight
            self._cum_weights.append(total)
        self.settings: dict[str, AutoRecharge | None] = {
            t.tenant_id: t.auto_recharge for t in self.tenants
        }
        self._seq = 0

    def next_id(self, kind: str) -> str:
        self._seq += 1
        return f"{kind}-{self.run_tag}-{self._seq:07d}"

    def pick_tenant(self) -> TenantProfile:
        return self.rng.choices(self.tenants, cum_weights=self._cum_weights)[0]

    def setup_records(self, now: datetime) -> list[OutRecord]:
        """Initial manual top-up for every tenant, then its auto-recharge settings."""
        out: list[OutRecord] = []
        for t in self.tenants:
            key = t.tenant_id.encode()
            funds = make_funds_added(
                t.tenant_id, t.initial_funds, self.config.currency, now, self.next_id("adm")
            )
            out.append(OutRecord(COMMANDS, key, encode(funds)))
            if t.auto_recharge is not None:
                cmd = make_auto_recharge_configured(
                    t.tenant_id, t.auto_recharge, now, self.next_id("adm")
                )
                out.append(OutRecord(COMMANDS, key, encode(cmd)))
        return out

    def next_usage(
        self, now: datetime, tenant: TenantProfile | None = None
    ) -> tuple[OutRecord, bool]:
        """One valid usage record (of ``tenant``, or of one picked by activity) and
        whether it was deliberately mis-keyed."""
        if tenant is None:
            tenant = self.pick_tenant()
        event_id = self.next_id("ev")
        if self.rng.random() < self.config.conference_share:
            topic, event = (
                USAGE_CONFERENCING,
                make_conference_usage(tenant, self.rng, now, event_id),
            )
        else:
            topic, event = USAGE_CALLS, make_call_usage(tenant, self.rng, now, event_id)
        key: bytes | None = tenant.tenant_id.encode()
        miskeyed = self.rng.random() < self.config.miskey_ratio
        if miskeyed:
            # The contract processes these for the body's tenant; prove nobody drops them.
            other = self.rng.choice(self.tenants).tenant_id
            key = None if other == tenant.tenant_id or self.rng.random() < 0.5 else other.encode()
        return OutRecord(topic, key, encode(event)), miskeyed

    def next_garbage(self, now: datetime, kind: GarbageKind | None = None) -> OutRecord:
        tenant = self.pick_tenant()
        chosen: GarbageKind = kind if kind is not None else self.rng.choice(GARBAGE_KINDS)
        return make_garbage(
            chosen,
            tenant,
            self.rng,
            now,
            self.next_id("bad"),
            self.config.currency,
        )

    def next_traffic(self, now: datetime) -> tuple[OutRecord | None, TrafficKind]:
        """The next record to send, or None for a call the gate refused ("blocked")."""
        if self.rng.random() < self.config.garbage_ratio:
            return self.next_garbage(now), "garbage"
        tenant = self.pick_tenant()
        if self._allows is not None and not self._allows(tenant.tenant_id):
            return None, "blocked"
        record, miskeyed = self.next_usage(now, tenant)
        return record, "miskeyed" if miskeyed else "usage"

    def admin_action(self, now: datetime) -> OutRecord:
        """An admin tops up by hand or changes auto-recharge settings."""
        rng = self.rng
        # Admins look after the tenants that burn money, so weight by activity.
        tenant = self.pick_tenant()
        key = tenant.tenant_id.encode()
        current = self.settings.get(tenant.tenant_id)
        manual_share = 0.8 if current is None or not current.enabled else 0.4
        if rng.random() < manual_share:
            amount = Decimal(rng.choice((10, 20, 25, 50, 100, 150))).quantize(CENT)
            cmd = make_funds_added(
                tenant.tenant_id, amount, self.config.currency, now, self.next_id("adm")
            )
            return OutRecord(COMMANDS, key, encode(cmd))
        if current is not None and current.enabled and rng.random() < 0.25:
            new = AutoRecharge(False, current.recharge_amount, current.trigger_balance)
        else:
            new = AutoRecharge(
                enabled=True,
                recharge_amount=Decimal(rng.randrange(20, 101, 5)).quantize(CENT),
                trigger_balance=Decimal(rng.choice((5, 10, 15, 20, 25))).quantize(CENT),
            )
        self.settings[tenant.tenant_id] = new
        cmd = make_auto_recharge_configured(tenant.tenant_id, new, now, self.next_id("adm"))
        return OutRecord(COMMANDS, key, encode(cmd))


class TokenBucket:
    """Paces sends: hands out whole tokens at ``rate`` per second, sleeping (never
    spinning) while none is available. Batches at high rates so the cost is one
    sleep per batch, not per event."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        # A tenth of a second of traffic: absorbs sleep overshoot without bursts.
        self.capacity = max(1.0, burst if burst is not None else rate / 10)
        self._clock = clock
        self._tokens = 1.0
        self._last = clock()

    def try_take(self, max_tokens: int) -> tuple[int, float]:
        """(tokens taken, seconds to wait before one is available when none was)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        n = min(int(self._tokens), max_tokens)
        if n >= 1:
            self._tokens -= n
            return n, 0.0
        return 0, (1.0 - self._tokens) / self.rate

    async def take(self, max_tokens: int = 1_000) -> int:
        while True:
            n, wait = self.try_take(max_tokens)
            if n:
                return n
            await asyncio.sleep(wait)
