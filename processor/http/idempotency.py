"""The first answer to each admin request's Idempotency-Key, kept for a day.

A retry with the same key and body gets that answer again without publishing again;
with a different body, a 422 (processor/http/admin_gate.py decides, this holds).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from processor.http.admin_requests import Fingerprint, Reply

__all__ = [
    "IDEMPOTENCY_MAX_BYTES",
    "IDEMPOTENCY_MAX_ENTRIES",
    "IDEMPOTENCY_TTL_SECONDS",
    "IdempotencyCache",
    "Remembered",
    "Scope",
    "compact",
    "failed",
]

# The first answer to each (tenant, endpoint, key) is kept this long (Stripe keeps
# 24 hours), for at most this many keys and this many bytes (keys, bodies, answers).
IDEMPOTENCY_TTL_SECONDS: Final = 24 * 3600.0
IDEMPOTENCY_MAX_ENTRIES: Final = 10_000
IDEMPOTENCY_MAX_BYTES: Final = 16 * 1024 * 1024

Scope = tuple[str, str, str]  # tenant, endpoint, key


@dataclass
class Remembered:
    fingerprint: Fingerprint
    answer: asyncio.Future[Reply]
    size: int
    expires: float


class IdempotencyCache:
    """The first answer to each (tenant, endpoint, key), for `ttl` seconds.

    Bounded by count and by bytes (its strings' and a measured overhead for its
    answer and objects): the oldest entries go first. Held in memory by each
    worker: a retry that reaches another worker, or this one after a restart, is
    published again, and the processor drops its command id as a duplicate.
    """

    # The answer and the objects holding an entry, beyond its strings (what an entry
    # costs in all: docs/performance.md, "The admin API's idempotency cache").
    ENTRY_OVERHEAD_BYTES: Final = 1_280

    def __init__(
        self,
        max_entries: int = IDEMPOTENCY_MAX_ENTRIES,
        max_bytes: int = IDEMPOTENCY_MAX_BYTES,
        ttl: float = IDEMPOTENCY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self.entries: OrderedDict[Scope, Remembered] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, scope: Scope) -> Remembered | None:
        self._expire()
        return self.entries.get(scope)

    def remember(self, scope: Scope, fingerprint: Fingerprint) -> Remembered:
        size = (
            sum(len(part) for part in scope)
            + sum(len(name) + len(value) for name, value in fingerprint)
            + self.ENTRY_OVERHEAD_BYTES
        )
        entry = Remembered(
            fingerprint,
            asyncio.get_running_loop().create_future(),
            size,
            self._clock() + self.ttl,
        )
        self.forget(scope)
        self.entries[scope] = entry
        self.bytes += size
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._pop_oldest()
        return entry

    def forget(self, scope: Scope, entry: Remembered | None = None) -> None:
        """Drop the scope's entry (only if it is still `entry`, when given)."""
        held = self.entries.get(scope)
        if held is not None and (entry is None or held is entry):
            del self.entries[scope]
            self.bytes -= held.size

    def _expire(self) -> None:
        now = self._clock()
        # Insertion order is age order: the oldest expire first.
        while self.entries and next(iter(self.entries.values())).expires <= now:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, entry = self.entries.popitem(last=False)
        self.bytes -= entry.size


def compact(reply: Reply) -> Reply:
    return Reply(reply.status, bytes(memoryview(reply.body)), dict(reply.headers))


def failed(entry: Remembered) -> bool:
    """The entry's request has been answered, and not with a 202: it may be retried."""
    return entry.answer.done() and entry.answer.result().status != 202
