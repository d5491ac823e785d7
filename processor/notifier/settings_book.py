"""The notifier's settings book: every tenant's notification settings, kept in memory.

Every notifier reads `credits.notification-settings` (compacted, keyed by tenant)
whole, from the beginning, with no consumer group; the consumer asks it to catch up
with the topic's end before each poll's rows are made (service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.notifier.events import Settings

__all__ = ["SettingsBook"]

log = logging.getLogger("processor.notifier")


class SettingsBook:
    """Every tenant's notification settings, read whole from the compacted topic."""

    def __init__(
        self, bootstrap: str, topic: str, client_options: Mapping[str, Any] | None = None
    ) -> None:
        self.topic = topic
        self.settings: dict[str, Settings] = {}
        self.loaded = asyncio.Event()
        self.tps: list[TopicPartition] = []
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "group_id": None,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "auto_offset_reset": "earliest",
            "metadata_max_age_ms": 5000,
            **dict(client_options or {}),
        }
        # Made when started (no client for a book that never runs, as in tests).
        self.consumer: Any = None

    def get(self, tenant_id: str) -> Settings | None:
        return self.settings.get(tenant_id)

    async def start(self, stop: asyncio.Event) -> None:
        self.consumer = AIOKafkaConsumer(**self._options)
        await self.consumer.start()
        while not stop.is_set():
            partitions = self.consumer.partitions_for_topic(self.topic)
            if partitions:
                break
            # The workers create the topic; until then there is nobody to notify.
            await self.consumer.topics()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        else:
            return
        self.tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_beginning(*self.tps)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.tps:
                await asyncio.sleep(0.1)
                continue
            batches = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    self.apply(tp, record)
            if not self.loaded.is_set() and await self._at_end():
                log.info("notifier: settings of %d tenants loaded", len(self.settings))
                self.loaded.set()

    def apply(self, tp: TopicPartition, record: Any) -> None:
        tenant = (record.key or b"").decode("utf-8", "replace")
        if record.value is None:
            self.settings.pop(tenant, None)
            return
        try:
            settings = Settings.from_record(record.value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "notifier: %s[%d]@%d is no notification settings record: %s",
                tp.topic,
                tp.partition,
                record.offset,
                str(exc)[:200],
            )
            return
        self.settings[settings.tenant_id] = settings

    async def _at_end(self) -> bool:
        ends = await self.consumer.end_offsets(self.tps)
        for tp in self.tps:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    async def caught_up(self, stop: asyncio.Event, within: float = 30.0) -> None:
        """Return once every settings record committed before now has been applied."""
        if not self.tps:
            return
        ends = await self.consumer.end_offsets(self.tps)
        deadline = asyncio.get_running_loop().time() + within
        while not stop.is_set():
            behind = [tp for tp in self.tps if await self.consumer.position(tp) < ends[tp]]
            if not behind:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"settings topic {self.topic} not read to its end")
            await asyncio.sleep(0.02)
