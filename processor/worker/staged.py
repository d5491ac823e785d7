"""A table seen through the writes of the batch in progress.

The engine reads and writes account values and dedupe marks one record at a time. A
batch of records must reach Kafka as one write per touched key, and only after the
batch's outputs are in Kafka (docs/guarantees.md), so the engine is handed this view:
reads see the batch's own writes first, writes wait here until `take()`.

A key can also be forgotten (`forget`): staged as None, it leaves the base when its
flush settles, and until then reads still find the base's value. The flusher writes a
forgotten account as a tombstone and skips a forgotten mark; dedupe marks past their
window are dropped by the marks store itself (processor/worker/marks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

_MISSING: object = object()

K = TypeVar("K")
V = TypeVar("V")


class Staged(MutableMapping[K, V], Generic[K, V]):
    """Reads: the batch's writes, then those of the batches being flushed, then the base.

    A value moves from `pending` (staged) to a flushing layer (`take`) to the base
    (`settle`), which is written only once that flush has reached Kafka. Flushes
    overlap (processor/worker/flusher.py), so several layers may be in flight; they settle
    in the order they were taken, and a read sees the newest. The newest in-flight
    value per key is also kept in one dict (`in_flight`), so that a read costs the
    same however many layers are in flight.
    """

    def __init__(self, base: MutableMapping[K, V]) -> None:
        self.base = base
        # A base that takes a batch's values in one call (the worker's table store,
        # `SeqMemoryStore.settle_values`); None: one `base[key] = value` each.
        self._settle_values: Callable[[list[tuple[K, V]]], None] | None = getattr(
            base, "settle_values", None
        )
        # None: the key is forgotten (`forget`).
        self.pending: dict[K, V | None] = {}
        # Batches taken and not yet settled, oldest first.
        self.flushing: list[dict[K, V | None]] = []
        self.in_flight: dict[K, V | None] = {}

    def __getitem__(self, key: K) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        # The hot path: a dict probe or two, then the table's own get.
        value = self.pending.get(key)
        if value is None:
            value = self.in_flight.get(key)
        return value if value is not None else self.base.get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        self.pending[key] = value

    def __delitem__(self, key: K) -> None:
        # The engine never deletes: forgetting is the flusher's, for keys no batch in
        # progress writes (`forget`).
        raise TypeError("staged tables forget keys through forget(), not del")

    def forget(self, key: K) -> bool:
        """Stage a tombstone for a key of the base that no unsettled batch writes;
        False if one does, or if the base does not hold it."""
        if key in self.pending or key in self.in_flight or key not in self.base:
            return False
        self.pending[key] = None
        return True

    def staged_keys(self) -> dict[K, None]:
        """The keys written by batches not yet settled."""
        # `in_flight` holds exactly the keys of the layers not yet settled.
        keys = dict.fromkeys(self.pending)
        keys.update(dict.fromkeys(self.in_flight))
        return keys

    def _keys(self) -> dict[K, None]:
        keys = self.staged_keys()
        keys.update(dict.fromkeys(list(self.base)))
        return keys

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def take(self) -> dict[K, V | None]:
        """Start flushing the batch's writes (one per key, the last): returns them."""
        layer, self.pending = self.pending, {}
        self.flushing.append(layer)
        self.in_flight.update(layer)
        return layer

    def settle(self, layer: dict[K, V | None], written: bool = False) -> None:
        """That flush is in Kafka: write its values to the base. `written`: the caller
        has written them already, in bulk (the flusher, into the marks store, from
        what it packed for Kafka); only the layer leaves the reads' way."""
        if not self.flushing or self.flushing[0] is not layer:
            # A later batch's values would be overwritten by an earlier one's.
            raise RuntimeError("flushes settle in the order they were taken")
        self.flushing.pop(0)
        in_flight = self.in_flight
        if not written:
            base = self.base
            values: list[tuple[K, V]] = []
            for key, value in layer.items():
                if value is not None:
                    values.append((key, value))
                elif key in base:
                    del base[key]  # a tombstone: no other value of the layer is its key's
            if self._settle_values is not None:
                self._settle_values(values)
            else:
                for key, value in values:
                    base[key] = value
        if not self.flushing:
            # The last layer in flight (a round's usual case): `in_flight` holds its
            # keys and no other.
            in_flight.clear()
            return
        for key, value in layer.items():
            # Unless a later layer in flight wrote the key again. (A tombstone is None,
            # which `get` also answers for a missing key.)
            if in_flight.get(key, _MISSING) is value:
                del in_flight[key]
