"""`LiveView`: reads the output topics and redraws the terminal."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient

from processor.dev.liveview.screen import render, summary_line
from processor.dev.liveview.state import TOPICS, TopicKind, ViewState
from processor.dev.simulator import (
    SimulatorStats,
)

CLEAR_HOME: Final = "\x1b[H\x1b[2J"
HOME: Final = "\x1b[H"
CLEAR_EOL: Final = "\x1b[K"
CLEAR_EOS: Final = "\x1b[J"
HIDE_CURSOR: Final = "\x1b[?25l"
SHOW_CURSOR: Final = "\x1b[?25h"


@dataclass(slots=True)
class LiveViewConfig:
    bootstrap: str
    topic_prefix: str = ""
    refresh_seconds: float = 1.0
    max_rows: int = 20
    # Non-TTY output prints one summary line this often instead of redrawing.
    summary_every_seconds: float = 5.0


class LiveView:
    def __init__(
        self,
        config: LiveViewConfig,
        simulator_stats: SimulatorStats | None = None,
        *,
        stream: TextIO | None = None,
        notifications: Callable[[], list[str]] | None = None,
    ) -> None:
        self.config = config
        self.state = ViewState(
            bootstrap=config.bootstrap,
            topic_prefix=config.topic_prefix,
            simulator=simulator_stats,
            notifications=notifications,
        )
        self._stream = stream if stream is not None else sys.stdout
        self._kinds: dict[str, TopicKind] = {
            config.topic_prefix + name: kind for name, kind in TOPICS.items()
        }
        # Next offset to apply per partition. Re-assigning (when a topic appears)
        # may rewind a partition; this makes the re-read a no-op instead of
        # double-counting.
        self._positions: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        cfg = self.config
        meta = AIOKafkaClient(bootstrap_servers=cfg.bootstrap, client_id="credits-meter-liveview")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            client_id="credits-meter-liveview",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Show what downstream consumers see: no records of aborted transactions.
            isolation_level="read_committed",
        )
        tty = self._stream.isatty()
        await meta.bootstrap()
        try:
            await consumer.start()
            try:
                if tty:
                    self._write(HIDE_CURSOR + CLEAR_HOME)
                await self._loop(meta, consumer, tty)
            finally:
                await consumer.stop()
        finally:
            await meta.close()
            if tty:
                self._write(SHOW_CURSOR + "\n")

    async def _loop(self, meta: Any, consumer: AIOKafkaConsumer, tty: bool) -> None:
        interval = max(0.1, self.config.refresh_seconds)
        summary_every = max(interval, self.config.summary_every_seconds)
        next_meta = 0.0
        last_draw = time.monotonic()
        next_draw = last_draw  # first screen at once, before any data
        next_summary = last_draw + summary_every
        entries_at_last_draw = 0
        while True:
            now = time.monotonic()
            if now >= next_meta:
                await self._refresh_assignment(meta, consumer)
                # Poll quickly while topics are missing, rarely once all exist.
                next_meta = time.monotonic() + (2.0 if self.state.waiting_for else 30.0)
            wait = max(0.0, min(next_draw, next_meta) - time.monotonic())
            if consumer.assignment():
                batches = await consumer.getmany(
                    timeout_ms=int(min(wait, 0.5) * 1000), max_records=20_000
                )
                for tp, messages in batches.items():
                    self._apply_batch(tp, messages)
            else:
                await asyncio.sleep(min(wait, 0.5))
            now = time.monotonic()
            if now >= next_draw:
                elapsed = max(1e-6, now - last_draw)
                self.state.ledger_rate = (
                    self.state.ledger_entries - entries_at_last_draw
                ) / elapsed
                entries_at_last_draw = self.state.ledger_entries
                last_draw = now
                next_draw = now + interval
                if tty:
                    self._draw()
                elif now >= next_summary:
                    next_summary = now + summary_every
                    self._write(summary_line(self.state) + "\n")

    def _apply_batch(self, tp: TopicPartition, messages: Sequence[Any]) -> None:
        kind = self._kinds.get(tp.topic)
        position = self._positions.get(tp, 0)
        for message in messages:
            if message.offset < position:
                continue
            position = message.offset + 1
            if kind is None:
                continue
            try:
                payload = orjson.loads(message.value) if message.value is not None else None
            except orjson.JSONDecodeError:
                payload = None
            self.state.apply(kind, payload)
        self._positions[tp] = position

    async def _refresh_assignment(self, meta: Any, consumer: AIOKafkaConsumer) -> None:
        try:
            # All topics' metadata: naming missing topics would auto-create them.
            cluster = await meta.fetch_all_metadata()
        except Exception as exc:  # the broker may be starting or gone; keep drawing
            self.state.error = f"{type(exc).__name__}: {exc}"
            return
        self.state.error = None
        wanted: set[TopicPartition] = set()
        missing: list[str] = []
        for topic in self._kinds:
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                missing.append(topic)
                continue
            wanted.update(TopicPartition(topic, p) for p in partitions)
        self.state.waiting_for = tuple(missing)
        if not wanted or wanted == set(consumer.assignment()):
            return
        consumer.assign(sorted(wanted))
        fresh = []
        for tp in wanted:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
            else:
                fresh.append(tp)
        if fresh:
            await consumer.seek_to_beginning(*fresh)

    def _draw(self) -> None:
        size = shutil.get_terminal_size((100, 40))
        # Leave room for the header and the other sections below the table.
        rows = max(3, min(self.config.max_rows, size.lines - 30))
        text = render(self.state, width=size.columns, max_rows=rows)
        body = "".join(line + CLEAR_EOL + "\n" for line in text.rstrip("\n").split("\n"))
        # Home + overwrite + clear the rest: no full clear, so no flicker.
        self._write(HOME + body + CLEAR_EOS)

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
