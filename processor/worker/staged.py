"""A table seen through the writes of the batches in progress.

The engine reads and writes account values and dedupe marks one record at a time. A
batch of records must reach Kafka as one write per touched key, and only after the
batch's outputs are in Kafka (docs/guarantees.md), so the engine is handed this view:
reads see the batches' own writes first, writes wait here until `take()`.

Writes are kept apart per chain (`at`): the worker's flusher lands each partition
number's batches on their own (processor/worker/flusher.py), and a record's writes go
with the batch of the partition it was read from, which intake names before it stages
the record. A key belongs to one partition, so its writes all go to one chain.

A key can also be forgotten (`forget`): staged as None, it reaches the changelog as a
tombstone and leaves the base when its flush settles. Until then reads still find the
base's value (a dedupe mark past its window, honoured a little longer).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar

_MISSING: object = object()

K = TypeVar("K")
V = TypeVar("V")


class Staged(MutableMapping[K, V], Generic[K, V]):
    """Reads: the newest write not yet settled (staged or being flushed), then the base.

    A value moves from a chain's pending layer (staged) to that chain's flushing
    layers (`take`) to the base (`settle`), which is written only once that flush has
    reached Kafka. Flushes overlap, so several layers of a chain may be in flight;
    they settle in the order they were taken. The newest unsettled value per key, of
    any chain, is also kept in one dict (`newest`), so that a read costs one probe
    however many layers are staged or in flight.
    """

    def __init__(self, base: MutableMapping[K, V]) -> None:
        self.base = base
        # None: the key is forgotten (`forget`).
        self.newest: dict[K, V | None] = {}
        # Per chain, the writes staged and not yet taken; `pending` is the chain of
        # the record being staged (`at`).
        self.layers: dict[int, dict[K, V | None]] = {0: {}}
        self.pending: dict[K, V | None] = self.layers[0]
        self._chain = 0
        # Per chain, the layers taken and not yet settled, oldest first.
        self.flushing: dict[int, list[dict[K, V | None]]] = {}

    def at(self, chain: int) -> None:
        """Stage the writes that follow in `chain`'s next batch."""
        if chain != self._chain:
            layer = self.layers.get(chain)
            if layer is None:
                layer = self.layers[chain] = {}
            self.pending, self._chain = layer, chain

    def staged(self) -> bool:
        """Whether some chain has writes not yet taken."""
        return any(self.layers.values())

    def staged_in(self, chain: int) -> bool:
        return bool(self.layers.get(chain))

    def __getitem__(self, key: K) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        # The hot path: a dict probe, then the table's own get.
        value = self.newest.get(key)
        return value if value is not None else self.base.get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        self.pending[key] = value
        self.newest[key] = value

    def __delitem__(self, key: K) -> None:
        # The engine never deletes: forgetting is the flusher's, for keys no batch in
        # progress writes (`forget`).
        raise TypeError("staged tables forget keys through forget(), not del")

    def forget(self, key: K) -> bool:
        """Stage a tombstone for a key of the base that no unsettled batch writes;
        False if one does, or if the base does not hold it."""
        if key in self.newest or key not in self.base:
            return False
        self.pending[key] = None
        self.newest[key] = None
        return True

    def staged_keys(self) -> dict[K, None]:
        """The keys written by batches not yet settled."""
        return dict.fromkeys(self.newest)

    def _keys(self) -> dict[K, None]:
        keys = self.staged_keys()
        keys.update(dict.fromkeys(list(self.base)))
        return keys

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def take(self, chain: int = 0) -> dict[K, V | None]:
        """Start flushing `chain`'s writes (one per key, the last): returns them."""
        layer = self.layers.get(chain)
        if layer is None:
            layer = {}
        fresh: dict[K, V | None] = {}
        self.layers[chain] = fresh
        if chain == self._chain:
            self.pending = fresh
        self.flushing.setdefault(chain, []).append(layer)
        return layer

    def settle(self, layer: dict[K, V | None], chain: int = 0) -> None:
        """That flush is in Kafka: write its values to the base."""
        flushing = self.flushing.get(chain)
        if not flushing or flushing[0] is not layer:
            # A later batch's values would be overwritten by an earlier one's.
            raise RuntimeError("flushes settle in the order they were taken")
        flushing.pop(0)
        newest = self.newest
        base = self.base
        for key, value in layer.items():
            if value is not None:
                base[key] = value
            elif key in base:
                del base[key]
            # Unless a later layer wrote the key again. (A tombstone is None, which
            # `get` also answers for a missing key.)
            if newest.get(key, _MISSING) is value:
                del newest[key]
