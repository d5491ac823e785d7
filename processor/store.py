"""The accounts table's store: Faust's in-memory store, with recovery that keeps the
newest value of each account by its write counter (`seq`) rather than the last one read.

A worker paused past its session timeout can still write an older account value after
its successor wrote a newer one; reading the changelog in order would then restore
the older balance. Comparing `seq` keeps the newest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.types import EventT

from processor.core.stored import StoredAccount, newer

SCHEME = "metermemory"


class SeqMemoryStore(MemoryStore[Any, Any]):
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
    return f"{SCHEME}://"
