"""In-memory doubles of the worker's collaborators, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from processor.worker.records import Out


@dataclass
class MemoryPublisher:
    """Collects what would be produced (outputs in `sent`, state in `state`)."""

    sent: list[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]] | None]] = field(
        default_factory=list
    )
    state: list[Out] = field(default_factory=list)
    atomic: bool = False

    async def publish(self, records: Sequence[Out]) -> None:
        for r in records:
            if r.state:
                self.state.append(r)
            else:
                assert r.value is not None, "only state records are tombstones"
                self.sent.append((r.topic, r.key, r.value, r.headers))

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v, _ in self.sent if t == topic]
