"""The dedupe marks, held compact: a fixed-size digest and 12 bytes of value each.

A worker remembers every event and command id of its dedupe window (7 days by
default), tens of millions of them. As Python objects a mark cost ~310 bytes; here it
is a 12-byte BLAKE2b digest of its dedupe key (core/dedupe.py) and its value packed
in 12 more: the position's topic-partition (an index into the store's interned names)
and offset in 8 bytes, the expiry (epoch seconds, up to 2106) in 4. Two digests alike
in their 96 bits would take one id for the other (docs/guarantees.md gives the odds).

Each partition's marks are their own table (`MarkTable`), so a partition that moves
away is dropped whole. A table is an extendible hash: a directory indexed by the
digest's leading bits points to small shards (at most SHARD_MAX marks each), each one
exact-size `bytes`; a look-up is one `bytes.find` over a shard's digests, done in C,
and a full shard splits in two by one more bit, so growing never rehashes more than one
shard on the loop. Marks past their window are dropped by the store itself, a bounded number of
shards at a time (`MarkStore.sweep`): there are no tombstones.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Final

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
# Estimated bytes per shard beyond its marks: a `bytes` object's header and the
# allocator's, its place in the list of shards, its depth and soonest expiry, and its
# share of the directory.
SHARD_OVERHEAD = 80
# The most digest bytes a shard holds (the tests shrink it to split often).
SHARD_BYTES = SHARD_MAX * DIGEST_BYTES
# The directory is indexed by the digest's first 32 bits.
_TOP = 32
# A shard's soonest expiry when it holds no mark: later than any.
_EMPTY = NEVER + 1

# A mark as a round's marks record holds it (processor/worker/marks_log.py): digest,
# `topic:partition`, offset, expiry second (`expiry_of`).
Entry = tuple[bytes, str, int, int]


# A mark's digest is asked for twice: the look-up, and its marks record a round or two
# later (the store is then given the digest the record was packed with,
# `MarkStore.put_entries`). The recent ones are kept, in a plain dict emptied when full
# (a hit is one probe; an lru_cache's was a call through its wrapper).
CACHED_DIGESTS: Final = 16_384
_digests: dict[str, bytes] = {}


def digest(key: str) -> bytes:
    """The fixed-size digest a mark is held under."""
    found = _digests.get(key)
    if found is None:
        if len(_digests) >= CACHED_DIGESTS:
            _digests.clear()
        found = _digests[key] = blake2b(key.encode(), digest_size=DIGEST_BYTES).digest()
    return found


def expiry_of(expires: int) -> int:
    """An expiry (epoch seconds) as a mark holds it: within 32 bits (a later one is
    held as the latest there is, so never forgotten early)."""
    return min(max(expires, 0), NEVER)


def _with_offset(tp_bits: int, offset: int) -> int:
    """A mark's position as it is held: its topic-partition's index bits and offset."""
    if not 0 <= offset <= OFFSET_MASK:
        raise ValueError(f"offset {offset} out of the range marks hold")
    return tp_bits | offset


@dataclass(slots=True)
class Budget:
    """What a sweep may still do: shards to look at, marks to rebuild."""

    shards: int
    marks: int


def _find(data: bytes, d: bytes) -> int:
    """Where the digest `d` is in a shard's digests (the first half of `data`), or -1."""
    half = len(data) >> 1
    i = data.find(d, 0, half)
    # A match across two digests is possible in principle: only aligned ones count.
    while i > 0 and i % DIGEST_BYTES:
        i = data.find(d, i + 1, half)
    return i


def _shard(keys: Sequence[bytes | bytearray], vals: Sequence[bytes | bytearray]) -> bytes:
    """A shard's one buffer: its digests, then their values in the same order."""
    return b"".join([*keys, *vals])


def _soonest(data: bytes) -> int:
    return min((e for _, e in VALUE.iter_unpack(data[len(data) >> 1 :])), default=_EMPTY)


class MarkTable:
    """One partition's marks: digest -> (packed position, expiry second).

    A shard is one immutable `bytes` of exactly its size, its digests then their values
    (a mark's value sits as far into the second half as its digest into the first), and
    a new mark makes a new one: a copy of at most a few KB, and no buffer grown by
    reallocation, so marks grown one at a time cost what marks built at once do. A
    shard is a number: its buffer, depth and soonest expiry are at that index in
    `data`, `depths` and `soonest`, and the directory holds shard numbers (no object per
    shard)."""

    def __init__(self) -> None:
        self.data: list[bytes] = [b""]
        self.depths = bytearray(1)
        # No mark in a shard expires before this second (a bound, not always exact).
        self.soonest = array("q", [_EMPTY])
        self.directory = array("I", [0])
        self.depth = 0
        self.count = 0
        self._cursor = 0

    def _slot(self, d: bytes) -> int:
        return self.directory[int.from_bytes(d[:4], "big") >> (_TOP - self.depth)]

    def get(self, d: bytes) -> tuple[int, int] | None:
        # `_slot` and `_find` inlined: every record the engine applies looks one up.
        data = self.data[self.directory[int.from_bytes(d[:4], "big") >> (_TOP - self.depth)]]
        half = len(data) >> 1
        i = data.find(d, 0, half)
        if i > 0 and i % DIGEST_BYTES:
            i = _find(data, d)
        if i < 0:
            return None
        position, expires = VALUE.unpack_from(data, half + i)
        return position, expires

    def put(self, d: bytes, position: int, expires: int) -> None:
        """Hold a mark, in place of any under the same digest."""
        # `_slot` and `_find` inlined: a round settles each of its marks here.
        slot = self.directory[int.from_bytes(d[:4], "big") >> (_TOP - self.depth)]
        if expires < self.soonest[slot]:
            self.soonest[slot] = expires
        data = self.data[slot]
        half = len(data) >> 1
        i = data.find(d, 0, half)
        if i > 0 and i % DIGEST_BYTES:
            i = _find(data, d)
        if i >= 0:
            at = half + i
            self.data[slot] = b"".join(
                (data[:at], VALUE.pack(position, expires), data[at + VALUE_BYTES :])
            )
            return
        self.data[slot] = b"".join((data[:half], d, data[half:], VALUE.pack(position, expires)))
        self.count += 1
        if half + DIGEST_BYTES > SHARD_BYTES and self.depths[slot] < _TOP:
            self._split(slot, d)

    def remove(self, d: bytes) -> bool:
        """Drop the mark under `d`; False if there is none."""
        slot = self._slot(d)
        data = self.data[slot]
        i = _find(data, d)
        if i < 0:
            return False
        at = (len(data) >> 1) + i
        self.data[slot] = b"".join(
            (data[:i], data[i + DIGEST_BYTES : at], data[at + VALUE_BYTES :])
        )
        self.count -= 1
        return True

    def shard_sizes(self) -> list[int]:
        """How many marks each shard holds."""
        return [len(data) // (DIGEST_BYTES + VALUE_BYTES) for data in self.data]

    def _split(self, slot: int, d: bytes) -> None:
        depth = self.depths[slot]
        if depth == self.depth:
            # Each entry twice, in C: a directory of a million entries is a few ms.
            old = self.directory
            doubled = old * 2
            doubled[0::2] = old
            doubled[1::2] = old
            self.directory = doubled
            self.depth += 1
        data = self.data[slot]
        half = len(data) >> 1
        shift = _TOP - depth - 1
        sides: tuple[tuple[list[bytes], list[bytes]], ...] = (([], []), ([], []))
        for i in range(0, half, DIGEST_BYTES):
            keys, vals = sides[(int.from_bytes(data[i : i + 4], "big") >> shift) & 1]
            keys.append(data[i : i + DIGEST_BYTES])
            vals.append(data[half + i : half + i + VALUE_BYTES])
        high = len(self.data)
        low_data = _shard(*sides[0])
        high_data = _shard(*sides[1])
        self.data[slot] = low_data
        self.data.append(high_data)
        self.depths[slot] = depth + 1
        self.depths.append(depth + 1)
        self.soonest[slot] = _soonest(low_data)
        self.soonest.append(_soonest(high_data))
        # The directory's entries for the old shard: its prefix, widened to the
        # directory's depth; the lower half still points to it, the upper now to `high`.
        prefix = int.from_bytes(d[:4], "big") >> (_TOP - depth)
        span = 1 << (self.depth - depth)
        start = prefix * span
        half_span = span // 2
        self.directory[start + half_span : start + span] = array("I", [high]) * half_span
        # One side may still hold them all (digests alike in their leading bits).
        for side, side_data in ((slot, low_data), (high, high_data)):
            if len(side_data) >> 1 > SHARD_BYTES and depth + 1 < _TOP:
                self._split(side, side_data[:DIGEST_BYTES])

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
        soonest = array("q")
        count = 0
        for bucket in buckets:
            picked = [keys[i : i + DIGEST_BYTES] for i in bucket]
            if len(set(picked)) != len(picked):
                # The same mark written twice: keep the newest (the last read).
                last = {bytes(k): i for k, i in zip(picked, bucket, strict=True)}
                bucket = sorted(last.values())
                picked = [keys[i : i + DIGEST_BYTES] for i in bucket]
            data = _shard(picked, [vals[i : i + VALUE_BYTES] for i in bucket])
            soonest.append(_soonest(data))
            count += len(bucket)
            shards.append(data)
        self.data = shards
        self.depths = bytearray([depth]) * len(shards)
        self.soonest = soonest
        self.directory = array("I", range(len(shards)))
        self.depth = depth
        self.count = count
        self._cursor = 0
        # A shard the digests crowded past SHARD_MAX splits now.
        for slot in range(len(shards)):
            data = self.data[slot]
            if len(data) >> 1 > SHARD_BYTES:
                self._split(slot, data[:DIGEST_BYTES])

    def sweep(self, now: int, budget: Budget, grace: int = 0) -> int:
        """Drop marks that expired by `now` from the next shards (taking turns),
        within `budget`; returns the marks dropped. A shard is rebuilt only once its
        soonest mark is `grace` seconds past its expiry, so that a pass does not
        rebuild every shard for the few marks that just expired."""
        dropped = 0
        shards = self.data
        soonest = self.soonest
        n = len(shards)
        cursor = self._cursor
        visits = min(budget.shards, n)
        for _ in range(visits):
            if budget.marks <= 0:
                break
            if cursor >= n:
                cursor = 0
            slot = cursor
            cursor += 1
            budget.shards -= 1
            if soonest[slot] > now - grace:
                continue
            data = shards[slot]
            half = len(data) >> 1
            values = list(VALUE.iter_unpack(data[half:]))
            budget.marks -= len(values)
            live = [i for i, (_, e) in enumerate(values) if e > now]
            if len(live) < len(values):
                shards[slot] = _shard(
                    [data[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES] for i in live],
                    [data[half + i * VALUE_BYTES : half + (i + 1) * VALUE_BYTES] for i in live],
                )
                dropped += len(values) - len(live)
            soonest[slot] = min((values[i][1] for i in live), default=_EMPTY)
        self.count -= dropped
        self._cursor = cursor
        return dropped

    def nbytes(self) -> int:
        """About what the table holds in memory."""
        return self.count * (DIGEST_BYTES + VALUE_BYTES) + len(self.data) * SHARD_OVERHEAD


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
        return _with_offset(self.tp_index(position.tp) << OFFSET_BITS, position.offset)

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

    def put_entries(self, partition: int, entries: Iterable[Entry]) -> None:
        """Hold a round's marks of one partition, as its marks record was packed from
        them (each digest, partition and expiry computed once per round, not again
        here), oldest first: the store then holds what `store[key] = mark` of each
        would have left."""
        table = self.table(partition)
        put = table.put
        # A round's marks come from a few input topic-partitions.
        tps: dict[str, int] = {}
        for d, tp, offset, expires in entries:
            index = tps.get(tp)
            if index is None:
                index = tps[tp] = self.tp_index(tp) << OFFSET_BITS
            put(d, _with_offset(index, offset), expires)

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
        order = partitions[start:] + partitions[:start]
        # Shards of each table not yet looked at in this call: each at most once, and
        # shards of the budget left over mean every table was looked at whole (the
        # timer goes on slice after slice until then).
        left = {p: len(self.tables[p].data) for p in order}
        dropped = 0
        while order and budget.shards > 0 and budget.marks > 0:
            cut = []
            for turn, partition in enumerate(order):
                if budget.shards <= 0 or budget.marks <= 0:
                    break
                # What is left, shared among the partitions left (rounded up).
                fair = -(-budget.shards // (len(order) - turn))
                share = Budget(min(fair, left[partition]), budget.marks)
                given = share.shards
                dropped += self.tables[partition].sweep(now, share, grace)
                looked = given - share.shards
                budget.shards -= looked
                budget.marks = share.marks
                left[partition] -= looked
                self._sweep_from = partition + 1
                if left[partition]:
                    cut.append(partition)
            order = cut
        return dropped

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.tables.values())
