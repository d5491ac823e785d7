"""The accounts table's store: Faust's in-memory store, with recovery that keeps the
newest value of each account (`StoredAccount.order`) rather than the last one read.

A worker paused past its session timeout (a zombie) can still write account values
after its successor took over; reading the changelog in order would then restore the
zombie's branch. Comparing (epoch, generation, seq) keeps the successor's.

And recovery always reads an active partition's changelog from its start. Faust
resumes from where this worker's recovery of the partition last stopped, if it still
remembers it (it forgets only on a revoke it did not skip); a zombie that rejoins and
gets its partitions back would then keep its own late values and never read the
successor's writes, which came before them in the log (seen by the frozen-worker fault
test). The changelog is compacted, so a full read is one record per tenant, and the
comparison makes it safe whatever this worker still holds in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.types import TP, EventT

from processor.core.stored import StoredAccount, newer

SCHEME = "metermemory"


class SeqMemoryStore(MemoryStore[Any, Any]):
    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        # Runs before the recovery's own on_rebalance, which then starts these from
        # the earliest offset.
        changelog = self.table.changelog_topic.get_topic_name()
        tables: Any = self.app.tables
        offsets = tables.recovery.active_offsets
        for tp in [tp for tp in offsets if tp.topic == changelog]:
            del offsets[tp]

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        data = self.data
        for event in batch:
            key = to_key(event.key)
            self._key_partition[key] = event.message.partition
            if event.message.value is None:
                data.pop(key, None)
                continue
            value = to_value(event.value)
            current = data.get(key)
            if not isinstance(value, StoredAccount) or newer(current, value):
                data[key] = value


def register() -> str:
    """Make `metermemory://` a store URL Faust understands; returns the URL."""
    STORES.aliases[SCHEME] = f"{__name__}:SeqMemoryStore"
    # With a host: Faust falls back to the app's default store when the table's store
    # URL is falsy, and yarl's URL("metermemory://") is (no host, no path).
    return f"{SCHEME}://accounts"
