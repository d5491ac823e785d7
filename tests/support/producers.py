"""Producers for the publishers' unit tests: they record what is asked of them."""

from __future__ import annotations

import asyncio
from typing import Any


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[bytes | None] = []

    def append(self, *, key: Any, value: bytes | None, timestamp: Any, headers: Any) -> object:
        self.records.append(value)
        return object()

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    def __init__(self, transactional_id: str, log: list[tuple[str, str]]) -> None:
        self.id = transactional_id
        self.log = log

    async def start(self) -> None:
        self.log.append((self.id, "start"))

    async def stop(self) -> None:
        self.log.append((self.id, "stop"))

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> Any:
        self.log.append((self.id, f"send {topic}[{partition}] {batch.records}"))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def begin_transaction(self) -> None:
        self.log.append((self.id, "begin"))

    async def commit_transaction(self) -> None:
        self.log.append((self.id, "commit"))

    async def abort_transaction(self) -> None:
        self.log.append((self.id, "abort"))
