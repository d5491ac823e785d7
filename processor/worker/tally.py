"""Counts over the accounts a worker holds, kept as values change rather than by scans.

The gauges (tenants, open recharge requests, exhausted balances) and the recharge
timer's index need these for the owned partitions only. Scanning a million accounts
for them every timer tick would block the event loop for seconds, so the accounts'
store reports every value it replaces here, per partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from processor.core.stored import StoredAccount
from processor.worker.codec import Undecoded

# An account value as the store holds it: decoded, or as read at recovery.
Value = StoredAccount | Undecoded


def _flags(value: Value) -> tuple[bool, bool]:
    """(exhausted, recharge request open)."""
    if isinstance(value, Undecoded):
        return value.exhausted, value.pending
    account = value.account
    return account.exhausted, account.pending is not None


def _first_expiry(value: Value) -> int | None:
    """The first lot's expiry (epoch seconds), None without lots."""
    if isinstance(value, Undecoded):
        return value.expires
    lots = value.account.lots
    return int(lots[0].expires_at.timestamp()) if lots else None


@dataclass
class _Counts:
    tenants: int = 0
    exhausted: int = 0
    # Tenants with a recharge request open (outstanding or awaiting its retry).
    pending: set[str] = field(default_factory=set)
    # Tenants with lots (funds that expire): their first lot's expiry, epoch seconds.
    expiring: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Totals:
    tenants: int
    outstanding: int
    exhausted: int


class AccountTally:
    def __init__(self) -> None:
        self._parts: dict[int, _Counts] = {}

    def replace(self, partition: int, key: str, old: Value | None, new: Value | None) -> None:
        """`key`'s value went from `old` to `new` (None: absent); the key is the tenant."""
        counts = self._parts.get(partition)
        if counts is None:
            counts = self._parts[partition] = _Counts()
        for value, sign in ((old, -1), (new, 1)):
            if value is None:
                continue
            exhausted, pending = _flags(value)
            counts.tenants += sign
            counts.exhausted += sign * exhausted
            if sign < 0:
                counts.pending.discard(key)
                if counts.expiring:
                    counts.expiring.pop(key, None)
            else:
                if pending:
                    counts.pending.add(key)
                first = _first_expiry(value)
                if first is not None:
                    counts.expiring[key] = first

    def clear(self) -> None:
        self._parts.clear()

    def totals(self, partitions: Iterable[int]) -> Totals:
        tenants = outstanding = exhausted = 0
        for p in partitions:
            counts = self._parts.get(p)
            if counts is not None:
                tenants += counts.tenants
                outstanding += len(counts.pending)
                exhausted += counts.exhausted
        return Totals(tenants, outstanding, exhausted)

    def pending(self, partitions: Iterable[int]) -> Iterator[str]:
        """The tenants of these partitions with a recharge request open."""
        for p in partitions:
            counts = self._parts.get(p)
            if counts is not None:
                yield from list(counts.pending)

    def expiring(self, partitions: Iterable[int]) -> Iterator[tuple[str, int]]:
        """The tenants of these partitions with lots, and their first lot's expiry.

        Not copied (a million tenants' pairs would be a large transient copy): consume it without
        awaiting in between, as `DueIndex.rebuild` does."""
        for p in partitions:
            counts = self._parts.get(p)
            if counts is not None:
                yield from counts.expiring.items()
