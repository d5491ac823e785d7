"""The dedupe marks, held compact: a fixed-size digest and 12 bytes of value each.

A worker remembers every event and command id of its dedupe window (7 days by
default), tens of millions of them. As Python objects a mark cost ~310 bytes; here it
is a 12-byte BLAKE2b digest of its dedupe key (core/dedupe.py) in one bytearray and
its value packed beside it in another: the position's topic-partition (an index into
the store's interned names) and offset in 8 bytes, the expiry (epoch seconds, up to
2106) in 4. Two digests alike in their 96
bits would take one id for the other (docs/guarantees.md gives the odds).

Each partition's marks are their own table (`MarkTable`), so a partition that moves
away is dropped whole. A table is an extendible hash: a directory indexed by the
digest's leading bits points to small shards (at most SHARD_MAX marks each); a
look-up is one `bytearray.find` over a shard's digests, done in C, and a full shard
splits in two by one more bit, so growing never rehashes more than one shard on the
loop. Marks past their window are dropped by the store itself, a bounded number of
shards at a time (`MarkStore.sweep`): there are no tombstones.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b

from processor.core.dedupe import dedupe_tenant
from processor.core.stored import Mark, Position
from processor.kafka.routing import partition_for

DIGEST_BYTES = 12
# The packed value: (topic-partition index << OFFSET_BITS | offset), expiry second.
VALUE = struct.Struct("<QI")
VALUE_BYTES = VALUE.size
# A mark's value sits at the same byte offset in `vals` as its digest in `keys`.
if VALUE_BYTES != DIGEST_BYTES:
    raise ImportError("a packed mark value must be as wide as a digest")
OFFSET_BITS = 48
OFFSET_MASK = (1 << OFFSET_BITS) - 1
MAX_TPS = 1 << 16
NEVER = (1 << 32) - 1
# A shard splits past this many marks: a look-up scans at most this many digests,
# and a split or a sweep of one shard is a few hundred microseconds at most.
SHARD_MAX = 128
# Estimated bytes per shard beyond its marks (objects, buffers' headers, directory).
SHARD_OVERHEAD = 230
SHARD_BYTES = SHARD_MAX * DIGEST_BYTES
# The directory is indexed by the digest's first 32 bits.
_TOP = 32


# A mark's digest is asked for three times: the look-up, its changelog record, and the
# store once that has landed (a round or two later). The recent ones are kept.
@lru_cache(maxsize=16_384)
def digest(key: str) -> bytes:
    """The fixed-size digest a mark is held under."""
    return blake2b(key.encode(), digest_size=DIGEST_BYTES).digest()


def expiry_of(expires: int) -> int:
    """An expiry (epoch seconds) as a mark holds it: within 32 bits (a later one is
    held as the latest there is, so never forgotten early)."""
    return min(max(expires, 0), NEVER)


@dataclass(slots=True)
class Budget:
    """What a sweep may still do: shards to look at, marks to rebuild."""

    shards: int
    marks: int


class _Shard:
    __slots__ = ("depth", "keys", "slot", "soonest", "vals")

    def __init__(self, depth: int, slot: int) -> None:
        self.depth = depth
        # Position in the table's list of shards (for the sweep).
        self.slot = slot
        self.keys = bytearray()
        self.vals = bytearray()
        # No mark here expires before this second (a bound, not always exact).
        self.soonest = NEVER + 1

    def index(self, d: bytes) -> int:
        """Where the mark under `d` is in `keys`, or -1."""
        keys = self.keys
        i = keys.find(d)
        # A match across two digests is possible in principle: only aligned ones count.
        while i > 0 and i % DIGEST_BYTES:
            i = keys.find(d, i + 1)
        return i


class MarkTable:
    """One partition's marks: digest -> (packed position, expiry second)."""

    def __init__(self) -> None:
        first = _Shard(0, 0)
        self.directory: list[_Shard] = [first]
        self.depth = 0
        self.shards: list[_Shard] = [first]
        self.count = 0
        self._cursor = 0

    def get(self, d: bytes) -> tuple[int, int] | None:
        shard = self.directory[int.from_bytes(d[:4], "big") >> (_TOP - self.depth)]
        i = shard.index(d)
        if i < 0:
            return None
        # The same width as a digest: a mark's byte offset is the same in both.
        position, expires = VALUE.unpack_from(shard.vals, i)
        return position, expires

    def put(self, d: bytes, position: int, expires: int) -> None:
        """Hold a mark, in place of any under the same digest."""
        shard = self.directory[int.from_bytes(d[:4], "big") >> (_TOP - self.depth)]
        if expires < shard.soonest:
            shard.soonest = expires
        i = shard.index(d)
        if i >= 0:
            VALUE.pack_into(shard.vals, i, position, expires)
            return
        shard.keys += d
        shard.vals += VALUE.pack(position, expires)
        self.count += 1
        if len(shard.keys) > SHARD_BYTES and shard.depth < _TOP:
            self._split(shard, d)

    def remove(self, d: bytes) -> bool:
        """Drop the mark under `d`; False if there is none."""
        shard = self.directory[int.from_bytes(d[:4], "big") >> (_TOP - self.depth)]
        i = shard.index(d)
        if i < 0:
            return False
        del shard.keys[i : i + DIGEST_BYTES]
        del shard.vals[i : i + VALUE_BYTES]
        self.count -= 1
        return True

    def _split(self, shard: _Shard, d: bytes) -> None:
        if shard.depth == self.depth:
            self.directory = [s for s in self.directory for _ in (0, 1)]
            self.depth += 1
        depth = shard.depth + 1
        low, high = _Shard(depth, shard.slot), _Shard(depth, len(self.shards))
        self.shards[shard.slot] = low
        self.shards.append(high)
        shift = _TOP - depth
        keys, vals = shard.keys, shard.vals
        sides = [
            (int.from_bytes(keys[i : i + 4], "big") >> shift) & 1
            for i in range(0, len(keys), DIGEST_BYTES)
        ]
        for side, bit in ((low, 0), (high, 1)):
            picked = [j for j, b in enumerate(sides) if b == bit]
            side.keys = bytearray().join(
                [keys[j * DIGEST_BYTES : (j + 1) * DIGEST_BYTES] for j in picked]
            )
            side.vals = bytearray().join(
                [vals[j * VALUE_BYTES : (j + 1) * VALUE_BYTES] for j in picked]
            )
            side.soonest = min((m for _, m in VALUE.iter_unpack(side.vals)), default=NEVER + 1)
        # The directory's entries for the old shard: its prefix, widened to the
        # directory's depth; the lower half now points to `low`, the upper to `high`.
        prefix = int.from_bytes(d[:4], "big") >> (_TOP - shard.depth)
        span = 1 << (self.depth - shard.depth)
        start = prefix * span
        half = span // 2
        directory = self.directory
        for j in range(start, start + half):
            directory[j] = low
        for j in range(start + half, start + span):
            directory[j] = high
        # One side may still hold them all (digests alike in their leading bits).
        for side in (low, high):
            if len(side.keys) > SHARD_BYTES and side.depth < _TOP:
                self._split(side, bytes(side.keys[:DIGEST_BYTES]))

    def load(self, keys: bytes | bytearray, vals: bytes | bytearray) -> None:
        """Hold many marks at once (recovery): digests and packed values side by side,
        oldest first (the newest under a digest wins). Into an empty table the shards
        are built directly at the depth their number asks for, without a split or a
        look-up per mark; otherwise each is `put`."""
        n = len(keys) // DIGEST_BYTES
        if self.count or n <= SHARD_MAX:
            for i in range(0, n * DIGEST_BYTES, DIGEST_BYTES):
                position, expires = VALUE.unpack_from(vals, i)
                self.put(bytes(keys[i : i + DIGEST_BYTES]), position, expires)
            return
        # Slices of bytes can be told apart by a set (duplicates), those of a bytearray not.
        keys = bytes(keys)
        # Between half and all of SHARD_MAX on average (the few past it split).
        depth = max(0, (n // (SHARD_MAX // 2)).bit_length() - 1)
        shift = _TOP - depth
        buckets: list[list[int]] = [[] for _ in range(1 << depth)]
        for i in range(0, n * DIGEST_BYTES, DIGEST_BYTES):
            buckets[int.from_bytes(keys[i : i + 4], "big") >> shift].append(i)
        shards = []
        count = 0
        for slot, bucket in enumerate(buckets):
            shard = _Shard(depth, slot)
            picked = [keys[i : i + DIGEST_BYTES] for i in bucket]
            if len(set(picked)) != len(picked):
                # The same mark written twice: keep the newest (the last read).
                last = {bytes(k): i for k, i in zip(picked, bucket, strict=True)}
                bucket = sorted(last.values())
                picked = [keys[i : i + DIGEST_BYTES] for i in bucket]
            shard.keys = bytearray().join(picked)
            shard.vals = bytearray().join([vals[i : i + VALUE_BYTES] for i in bucket])
            shard.soonest = min((e for _, e in VALUE.iter_unpack(shard.vals)), default=NEVER + 1)
            count += len(bucket)
            shards.append(shard)
        self.directory = list(shards)
        self.shards = shards
        self.depth = depth
        self.count = count
        self._cursor = 0
        # A shard the digests crowded past SHARD_MAX splits now.
        for shard in list(shards):
            if len(shard.keys) > SHARD_BYTES:
                self._split(shard, bytes(shard.keys[:DIGEST_BYTES]))

    def sweep(self, now: int, budget: Budget, grace: int = 0) -> int:
        """Drop marks that expired by `now` from the next shards (taking turns),
        within `budget`; returns the marks dropped. A shard is rebuilt only once its
        soonest mark is `grace` seconds past its expiry, so that a pass does not
        rebuild every shard for the few marks that just expired."""
        dropped = 0
        listed = self.shards
        n = len(listed)
        cursor = self._cursor
        visits = min(budget.shards, n)
        for _ in range(visits):
            if budget.marks <= 0:
                break
            if cursor >= n:
                cursor = 0
            shard = listed[cursor]
            cursor += 1
            budget.shards -= 1
            if shard.soonest > now - grace:
                continue
            values = list(VALUE.iter_unpack(shard.vals))
            budget.marks -= len(values)
            live = [i for i, (_, e) in enumerate(values) if e > now]
            if len(live) < len(values):
                keys, vals = shard.keys, shard.vals
                shard.keys = bytearray().join(
                    [keys[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES] for i in live]
                )
                shard.vals = bytearray().join(
                    [vals[i * VALUE_BYTES : (i + 1) * VALUE_BYTES] for i in live]
                )
                dropped += len(values) - len(live)
            shard.soonest = min((values[i][1] for i in live), default=NEVER + 1)
        self.count -= dropped
        self._cursor = cursor
        return dropped

    def nbytes(self) -> int:
        """About what the table holds in memory."""
        return self.count * (DIGEST_BYTES + VALUE_BYTES) + len(self.shards) * SHARD_OVERHEAD


class MarkStore(MutableMapping[str, Mark]):
    """The worker's dedupe marks, per partition, as the engine reads and writes them
    (`get(key) -> Mark | None`, `store[key] = mark`), the digests computed inside.

    The keys themselves are not held, so the store cannot list them (`__iter__` refuses).
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.tables: dict[int, MarkTable] = {}
        self.tps: list[str] = []
        self._tp_index: dict[str, int] = {}
        # Where the next sweep starts: a partition number.
        self._sweep_from = 0

    def partition_of(self, key: str) -> int:
        """The partition of a dedupe key: its tenant's."""
        return partition_for(dedupe_tenant(key), self.partitions)

    def tp_index(self, tp: str) -> int:
        index = self._tp_index.get(tp)
        if index is None:
            if len(self.tps) >= MAX_TPS:
                raise ValueError(f"more than {MAX_TPS} input topic-partitions")
            index = self._tp_index[tp] = len(self.tps)
            self.tps.append(tp)
        return index

    def packed_position(self, position: Position) -> int:
        offset = position.offset
        if not 0 <= offset <= OFFSET_MASK:
            raise ValueError(f"offset {offset} out of the range marks hold")
        return self.tp_index(position.tp) << OFFSET_BITS | offset

    def table(self, partition: int) -> MarkTable:
        table = self.tables.get(partition)
        if table is None:
            table = self.tables[partition] = MarkTable()
        return table

    # ---- the engine's view ------------------------------------------------------------

    def get(self, key: str, default: Mark | None = None) -> Mark | None:  # type: ignore[override]
        # partition_of, inlined: every record the engine applies asks.
        table = self.tables.get(partition_for(key.partition("\x1f")[0], self.partitions))
        if table is None:
            return default
        found = table.get(digest(key))
        if found is None:
            return default
        position, expires = found
        return Mark(expires, Position(self.tps[position >> OFFSET_BITS], position & OFFSET_MASK))

    def __getitem__(self, key: str) -> Mark:
        mark = self.get(key)
        if mark is None:
            raise KeyError(key)
        return mark

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __setitem__(self, key: str, mark: Mark) -> None:
        self.table(self.partition_of(key)).put(
            digest(key), self.packed_position(mark.position), expiry_of(mark.expires)
        )

    def __delitem__(self, key: str) -> None:
        table = self.tables.get(self.partition_of(key))
        if table is None or not table.remove(digest(key)):
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise TypeError("marks are held as digests: their keys cannot be listed")

    def __len__(self) -> int:
        return sum(t.count for t in self.tables.values())

    # ---- recovery and upkeep ------------------------------------------------------------

    def put_digest(self, partition: int, d: bytes, tp: str, offset: int, expires: int) -> None:
        """Hold a mark read back from Kafka (its digest computed when it was written)."""
        self.table(partition).put(d, self.packed_position(Position(tp, offset)), expiry_of(expires))

    def keep_only(self, partitions: set[int]) -> None:
        """Drop the tables of partitions not in `partitions`."""
        for partition in [p for p in self.tables if p not in partitions]:
            del self.tables[partition]

    def drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.tables.pop(partition, None)

    def sweep(self, now: int, budget: Budget, grace: int = 0) -> int:
        """Drop marks past their window (`now`: epoch seconds), partitions taking
        turns, within `budget` (a bounded amount of work per call); returns the marks
        dropped. `grace`: seconds (`MarkTable.sweep`)."""
        partitions = sorted(self.tables)
        start = next((i for i, p in enumerate(partitions) if p >= self._sweep_from), 0)
        dropped = 0
        for partition in partitions[start:] + partitions[:start]:
            if budget.shards <= 0 or budget.marks <= 0:
                break
            table = self.tables[partition]
            share = Budget(max(1, budget.shards // len(partitions)), budget.marks)
            given = share.shards
            dropped += table.sweep(now, share, grace)
            budget.shards -= given - share.shards
            budget.marks = share.marks
            self._sweep_from = partition + 1
        return dropped

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.tables.values())
