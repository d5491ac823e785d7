"""A table seen through the writes of the batch in progress.

The engine reads and writes account values and dedupe marks one record at a time. A
batch of records must reach Kafka as one write per touched key, and only after the
batch's outputs are in Kafka (docs/guarantees.md), so the engine is handed this view:
reads see the batch's own writes first, writes wait here until `take()`.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Staged(MutableMapping[K, V], Generic[K, V]):
    """Reads: the batch's writes, then those of the batch being flushed, then the base.

    A value moves from `pending` (staged) to `flushing` (`take`) to the base (`settle`),
    which is written only once the flush has reached Kafka.
    """

    def __init__(self, base: MutableMapping[K, V]) -> None:
        self.base = base
        self.pending: dict[K, V] = {}
        self.flushing: dict[K, V] = {}

    def __getitem__(self, key: K) -> V:
        for layer in (self.pending, self.flushing):
            if key in layer:
                return layer[key]
        return self.base[key]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        # The hot path: a dict probe or two, then the table's own get.
        value = self.pending.get(key)
        if value is None and self.flushing:
            value = self.flushing.get(key)
        return value if value is not None else self.base.get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        self.pending[key] = value

    def __delitem__(self, key: K) -> None:
        # Nothing in the processor deletes an account or a mark; a delete would need a
        # tombstone in the changelog, which staging does not model.
        raise TypeError("staged tables do not support deletion")

    def _keys(self) -> dict[K, None]:
        keys = dict.fromkeys(self.pending)
        keys.update(dict.fromkeys(self.flushing))
        keys.update(dict.fromkeys(list(self.base)))
        return keys

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def take(self) -> dict[K, V]:
        """Start flushing the batch's writes (one per key, the last): returns them.

        The dict returned is the flushing layer itself, so a caller may still replace
        values in it before they are settled.
        """
        if self.flushing:
            raise RuntimeError("a flush is already in progress")
        self.flushing, self.pending = self.pending, {}
        return self.flushing

    def settle(self) -> None:
        """The flushing writes are in Kafka: write them to the base."""
        flushed, self.flushing = self.flushing, {}
        for key, value in flushed.items():
            self.base[key] = value
