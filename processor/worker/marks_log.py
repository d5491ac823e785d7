"""The dedupe marks in Kafka: one record per partition per round, read back in bulk.

The flusher writes a round's new marks of a partition as one record of the internal
topic `<app id>-dedupe-marks`, in the same transaction as the round's account values
(processor/worker/publisher.py), so a mark is in Kafka if and only if the value that
applied its event is. The topic is not compacted: its records are deleted by age
(retention.ms, processor/kafka/topics.py), once every mark in them is past its window.

A record's value, version 1 (little-endian):

    B version | I latest expiry (epoch seconds) | I marks | H names
    names x (H length | UTF-8 `topic:partition`)
    marks x (12s digest | H name index | Q offset | I expiry (epoch seconds))

Recovery (`recover_marks`) reads the partitions' records from their beginning, after
the fence, and holds the marks not yet expired. Workers before this topic kept one
JSON record per mark in the compacted `<app id>-dedupe-changelog`: when it exists, its
marks are read first, so an upgrade in the middle of a window still catches repeats.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from faust.types import TP

from processor.core.stored import Mark
from processor.kafka.changelog import ChangelogReader
from processor.kafka.routing import partition_for
from processor.worker.codec import load_mark
from processor.worker.marks import (
    DIGEST_BYTES,
    NEVER,
    OFFSET_BITS,
    OFFSET_MASK,
    VALUE,
    Entry,
    MarkStore,
    digest,
    expiry_of,
)

log = logging.getLogger(__name__)

MARKS_VERSION = 1
_HEAD = struct.Struct("<BIIH")
_NAME = struct.Struct("<H")
ENTRY = struct.Struct(f"<{DIGEST_BYTES}sHQI")
# Marks per record at most (~26 bytes each): a round's marks of a partition are one
# record unless there are more (far below the topic's max.message.bytes).
MARKS_PER_RECORD = 20_000


@dataclass(frozen=True, slots=True)
class MarksLog:
    """Where the flusher writes the marks: the topic, and a key's partition."""

    topic: str
    tenant_of: Callable[[str], str]


def pack_marks(marks: Iterable[tuple[str, Mark]]) -> bytes:
    """One record's value holding `marks` (dedupe key, mark)."""
    return pack_entries([entry_of(key, mark) for key, mark in marks])


def entry_of(key: str, mark: Mark) -> Entry:
    """A mark as its record holds it (and `MarkStore.put_entries` takes it)."""
    position = mark.position
    return digest(key), position.tp, position.offset, expiry_of(mark.expires)


def pack_entries(entries: Iterable[Entry]) -> bytes:
    """One record's value holding `entries`."""
    names: dict[str, int] = {}
    packed = []
    latest = 0
    pack = ENTRY.pack
    for d, tp, offset, expires in entries:
        index = names.get(tp)
        if index is None:
            index = names[tp] = len(names)
        if expires > latest:
            latest = expires
        packed.append(pack(d, index, offset, expires))
    parts = [_HEAD.pack(MARKS_VERSION, latest, len(packed), len(names))]
    for name in names:
        raw = name.encode()
        parts.append(_NAME.pack(len(raw)))
        parts.append(raw)
    parts.extend(packed)
    return b"".join(parts)


def unpack_marks(raw: bytes, now: int = 0) -> Iterator[tuple[bytes, str, int, int]]:
    """The marks of one record not expired by `now`: (digest, `topic:partition`,
    offset, expiry). Raises ValueError for a version it does not know."""
    names, entries = read_record(raw, now)
    for d, index, offset, expires in entries:
        if expires > now:
            yield d, names[index], offset, expires


def read_record(
    raw: bytes, now: int = 0
) -> tuple[list[str], Iterable[tuple[bytes, int, int, int]]]:
    """One record's names and its entries (digest, name index, offset, expiry
    second), expired ones included; none if every mark in it expired by `now`."""
    if not raw or raw[0] != MARKS_VERSION:
        raise ValueError(f"unknown dedupe marks record version {raw[:1]!r}")
    _version, latest, count, n_names = _HEAD.unpack_from(raw, 0)
    if latest <= now:
        return [], ()
    pos = _HEAD.size
    names = []
    for _ in range(n_names):
        (length,) = _NAME.unpack_from(raw, pos)
        pos += _NAME.size
        names.append(raw[pos : pos + length].decode())
        pos += length
    end = pos + count * ENTRY.size
    if end != len(raw):
        raise ValueError("dedupe marks record of the wrong length")
    return names, ENTRY.iter_unpack(memoryview(raw)[pos:end])


@dataclass(frozen=True, slots=True)
class RoundMarks:
    """A round's marks as they go to Kafka, and as they were packed."""

    # (partition, record value): one per partition (more only past MARKS_PER_RECORD).
    records: list[tuple[int, bytes]]
    # Each partition's marks as packed, in the round's order, for the marks store to
    # hold once the round has landed (`MarkStore.put_entries`) without computing each
    # mark's partition and digest again; None when the round forgets a key (a None
    # mark), which the store must then be told key by key.
    entries: dict[int, list[Entry]] | None


def round_marks(
    log_: MarksLog, marks: Iterable[tuple[str, Mark | None]], partitions: int
) -> RoundMarks:
    """A round's marks records, and its marks per partition as packed. A None mark
    (nothing forgets marks this way any more) is not written."""
    grouped: dict[int, list[Entry]] = {}
    forgets = False
    tenant_of = log_.tenant_of
    for key, mark in marks:
        if mark is None:
            forgets = True
            continue
        partition = partition_for(tenant_of(key), partitions)
        position = mark.position
        expires = mark.expires
        if not 0 <= expires <= NEVER:
            expires = expiry_of(expires)
        entry = (digest(key), position.tp, position.offset, expires)
        group = grouped.get(partition)
        if group is None:
            group = grouped[partition] = []
        group.append(entry)
    records = [
        (partition, pack_entries(entries[i : i + MARKS_PER_RECORD]))
        for partition, entries in grouped.items()
        for i in range(0, len(entries), MARKS_PER_RECORD)
    ]
    return RoundMarks(records, None if forgets else grouped)


def marks_records(
    log_: MarksLog, marks: Iterable[tuple[str, Mark | None]], partitions: int
) -> list[tuple[int, bytes]]:
    """A round's marks as (partition, record value) pairs: one per partition (more
    only past MARKS_PER_RECORD). A None mark is skipped."""
    return round_marks(log_, marks, partitions).records


async def recover_marks(
    reader: ChangelogReader,
    store: MarkStore,
    partitions: set[int],
    topic: str,
    legacy: str | None,
    now: int | None = None,
) -> int:
    """Hold the marks of `partitions` read from Kafka, in place of what the store held
    for them (another worker may have written some since). Returns the marks held."""
    store.drop(partitions)
    if not partitions:
        return 0
    at = int(time.time() if now is None else now)
    held = 0
    if legacy is not None:
        found = await reader.end_offsets(f"{legacy}:{p}" for p in partitions)
        tps = [TP(legacy, p) for p in partitions if f"{legacy}:{p}" in found]
        if tps:

            def apply_legacy(partition: int, key: bytes | None, value: bytes | None) -> None:
                if key is None:
                    return
                d = digest(key.decode())
                if value is None:
                    store.table(partition).remove(d)
                    return
                mark = load_mark(value)
                expires = expiry_of(mark.expires)
                if expires > at:
                    position = mark.position
                    store.put_digest(partition, d, position.tp, position.offset, expires)

            await reader.read(tps, apply_legacy)

    # Gathered per partition as they are read (24 bytes a mark, as they are then
    # held), and held in one go once read: far cheaper per mark than one at a time.
    staged: dict[int, tuple[bytearray, bytearray]] = {
        p: (bytearray(), bytearray()) for p in partitions
    }
    pack = VALUE.pack

    def apply(partition: int, _key: bytes | None, value: bytes | None) -> None:
        # Per mark, the least work: recovery reads millions of them.
        nonlocal held
        if value is None:
            return
        names, entries = read_record(value, at)
        tps = [store.tp_index(name) << OFFSET_BITS for name in names]
        live = [e for e in entries if e[3] > at and e[2] <= OFFSET_MASK]
        keys, vals = staged[partition]
        keys += b"".join([e[0] for e in live])
        vals += b"".join([pack(tps[e[1]] | e[2], e[3]) for e in live])
        held += len(live)

    await reader.read([TP(topic, p) for p in partitions], apply)
    for partition in sorted(staged):
        keys, vals = staged.pop(partition)
        store.table(partition).load(keys, vals)
        del keys, vals
    _return_freed_memory()
    log.info("read %d dedupe marks of %d partitions", held, len(partitions))
    return held


def _return_freed_memory() -> None:
    """Hand back to the system what the read freed: glibc keeps freed heap mapped until
    trimmed, and a read of millions of marks leaves about as much freed as it holds
    (docs/performance.md, "Compact dedupe marks")."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
