"""Kafka's wire format for the worker's two busiest requests, Fetch v11 and Produce v12,
encoded and decoded by hand.

aiokafka codes every request through its generic `Schema`: an interpreted call for each
field of each partition, and a tuple for each. A fetch names every assigned partition
(sixty in the worker) and its answer carries them all back; a round's produce names
up to thirty-six. Those four codings were about a twentieth of the worker's loop at
half its drain rate (docs/performance.md, "The hot requests coded by hand"). Here each
is a loop of precompiled `struct` calls; the values are the ones aiokafka's schemas
give and take (tests/unit/test_protocol.py checks both ways against them), so the glue
(processor/kafka/glue/codecs.py) can hand them to aiokafka's fetcher and to the
rounds unchanged. Nothing here knows aiokafka.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
# Fetch v11's head: replica id, max wait, min bytes, max bytes, isolation level,
# session id, session epoch.
_FETCH_HEAD: Final = struct.Struct(">iiiibii")
# A partition in a fetch: partition, current leader epoch, fetch offset, log start
# offset, max bytes.
_FETCH_PARTITION: Final = struct.Struct(">iiqqi")
# A partition in either answer, up to its variable fields: partition, error, then three
# 64-bit fields (a fetch's high watermark, last stable offset and log start offset; a
# produce's base offset, log append time and log start offset).
_ANSWERED_PARTITION: Final = struct.Struct(">ihqqq")
_ABORTED: Final = struct.Struct(">qq")
# The answer's head: throttle time, error, session id.
_FETCHED_HEAD: Final = struct.Struct(">ihi")
_PRODUCE_HEAD: Final = struct.Struct(">hi")

# No leader epoch known, no fetch session (a full fetch each time), as aiokafka asks.
_NO_EPOCH: Final = -1
_NO_SESSION: Final = 0
_FINAL_EPOCH: Final = -1
_CONSUMER: Final = -1

# (partition, error code, high watermark, last stable offset, log start offset,
# aborted transactions as (producer id, first offset) or None, preferred read replica,
# the records' bytes or None): FetchResponse v11's partition, as aiokafka decodes it.
FetchedPartition = tuple[int, int, int, int, int, list[tuple[int, int]] | None, int, bytes | None]
# (partition, error code, base offset, log append time, log start offset, record errors
# as (batch index, message, tagged fields), error message, tagged fields): Produce v12's.
ProducedPartition = tuple[
    int,
    int,
    int,
    int,
    int,
    list[tuple[int, str | None, dict[int, bytes]]] | None,
    str | None,
    dict[int, bytes],
]


class Underrun(ValueError):
    """An answer ended before its fields did."""


def _string(value: str) -> bytes:
    raw = value.encode()
    return _I16.pack(len(raw)) + raw


def _uvarint(value: int) -> bytes:
    out = bytearray()
    value &= 0xFFFFFFFF
    while value & ~0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _compact_string(value: str | None) -> bytes:
    if value is None:
        return b"\x00"
    raw = value.encode()
    return _uvarint(len(raw) + 1) + raw


def encode_fetch_v11(
    max_wait_ms: int,
    min_bytes: int,
    max_bytes: int,
    isolation_level: int,
    topics: Sequence[tuple[str, Sequence[tuple[int, int, int]]]],
    rack_id: str,
) -> bytes:
    """A FetchRequest v11's body: `topics` as aiokafka's fetcher plans them, each
    partition as (partition, fetch offset, max bytes)."""
    parts = [
        _FETCH_HEAD.pack(
            _CONSUMER,
            max_wait_ms,
            min_bytes,
            max_bytes,
            isolation_level,
            _NO_SESSION,
            _FINAL_EPOCH,
        ),
        _I32.pack(len(topics)),
    ]
    pack = _FETCH_PARTITION.pack
    for topic, partitions in topics:
        parts.append(_string(topic))
        parts.append(_I32.pack(len(partitions)))
        for partition, offset, partition_max in partitions:
            parts.append(pack(partition, _NO_EPOCH, offset, -1, partition_max))
    parts.append(_I32.pack(0))  # no forgotten topics: there is no session
    parts.append(_string(rack_id))
    return b"".join(parts)


class _Reader:
    """A position in an answer's bytes."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, size: int) -> int:
        start = self.pos
        end = start + size
        if end > len(self.data):
            raise Underrun(f"the answer ends at {len(self.data)}, a field at {end}")
        self.pos = end
        return start

    def i32(self) -> int:
        value: int = _I32.unpack_from(self.data, self.take(4))[0]
        return value

    def i16(self) -> int:
        value: int = _I16.unpack_from(self.data, self.take(2))[0]
        return value

    def bytes_(self, size: int) -> bytes:
        start = self.take(size)
        return self.data[start : start + size]

    def string(self) -> str | None:
        size = self.i16()
        return None if size < 0 else self.bytes_(size).decode()

    def uvarint(self) -> int:
        value = 0
        shift = 0
        while True:
            byte = self.data[self.take(1)]
            if not byte & 0x80:
                return value | (byte << shift)
            value |= (byte & 0x7F) << shift
            shift += 7
            if shift > 28:
                raise ValueError(f"a varint longer than 32 bits at {self.pos}")

    def compact_string(self) -> str | None:
        size = self.uvarint() - 1
        return None if size < 0 else self.bytes_(size).decode()

    def tags(self) -> dict[int, bytes]:
        count = self.uvarint()
        found: dict[int, bytes] = {}
        last = -1
        for _ in range(count):
            tag = self.uvarint()
            if tag <= last:
                raise ValueError(f"tag {tag} out of order")
            last = tag
            found[tag] = self.bytes_(self.uvarint())
        return found


def decode_fetch_v11(
    data: bytes, pos: int = 0
) -> tuple[int, int, int, list[tuple[str | None, list[FetchedPartition]]]]:
    """A FetchResponse v11's body from `pos`: (throttle time, error code, session id,
    topics), each topic (name, partitions)."""
    r = _Reader(data, pos)
    throttle, error, session = _FETCHED_HEAD.unpack_from(data, r.take(_FETCHED_HEAD.size))
    topics: list[tuple[str | None, list[FetchedPartition]]] = []
    for _ in range(r.i32()):
        name = r.string()
        partitions: list[FetchedPartition] = []
        for _ in range(r.i32()):
            partition, code, high, stable, start = _ANSWERED_PARTITION.unpack_from(
                data, r.take(_ANSWERED_PARTITION.size)
            )
            count = r.i32()
            aborted: list[tuple[int, int]] | None = None
            if count >= 0:
                aborted = []
                for _ in range(count):
                    producer, first = _ABORTED.unpack_from(data, r.take(_ABORTED.size))
                    aborted.append((producer, first))
            replica = r.i32()
            size = r.i32()
            records = None if size < 0 else r.bytes_(size)
            partitions.append((partition, code, high, stable, start, aborted, replica, records))
        topics.append((name, partitions))
    return throttle, error, session, topics


def _tagged(tags: dict[int, bytes]) -> bytes:
    if not tags:
        return b"\x00"
    parts = [_uvarint(len(tags))]
    for tag in sorted(tags):
        parts += [_uvarint(tag), _uvarint(len(tags[tag])), tags[tag]]
    return b"".join(parts)


# Produce v12's topics as aiokafka's schema holds them: (name, [(partition, the record
# batches' bytes, tagged fields)], tagged fields). aiokafka's batch builder gives a
# bytearray, and a compiled module checks the type it is given.
ProduceTopics = Sequence[
    tuple[str, Sequence[tuple[int, bytes | bytearray, dict[int, bytes]]], dict[int, bytes]]
]


def encode_produce_v12(
    transactional_id: str | None,
    required_acks: int,
    timeout_ms: int,
    topics: ProduceTopics,
    tags: dict[int, bytes],
) -> bytes:
    """A ProduceRequest v12's body (a flexible version: compact fields, tagged fields)."""
    parts: list[bytes | bytearray] = [
        _compact_string(transactional_id),
        _PRODUCE_HEAD.pack(required_acks, timeout_ms),
        _uvarint(len(topics) + 1),
    ]
    for topic, partitions, topic_tags in topics:
        parts.append(_compact_string(topic))
        parts.append(_uvarint(len(partitions) + 1))
        for partition, records, partition_tags in partitions:
            parts.append(_I32.pack(partition))
            parts.append(_uvarint(len(records) + 1))
            parts.append(records)
            parts.append(_tagged(partition_tags))
        parts.append(_tagged(topic_tags))
    parts.append(_tagged(tags))
    return b"".join(parts)


def decode_produce_v12(
    data: bytes, pos: int = 0
) -> tuple[
    list[tuple[str | None, list[ProducedPartition] | None, dict[int, bytes]]] | None,
    int,
    dict[int, bytes],
]:
    """A ProduceResponse v12's body from `pos`: (topics, throttle time, tagged fields),
    each topic (name, partitions, tagged fields)."""
    r = _Reader(data, pos)
    topics: list[tuple[str | None, list[ProducedPartition] | None, dict[int, bytes]]] | None
    topics = None
    count = r.uvarint() - 1
    if count >= 0:
        topics = []
        for _ in range(count):
            name = r.compact_string()
            partitions: list[ProducedPartition] | None = None
            pcount = r.uvarint() - 1
            if pcount >= 0:
                partitions = []
                for _ in range(pcount):
                    partition, code, base, append_time, start = _ANSWERED_PARTITION.unpack_from(
                        data, r.take(_ANSWERED_PARTITION.size)
                    )
                    errors: list[tuple[int, str | None, dict[int, bytes]]] | None = None
                    ecount = r.uvarint() - 1
                    if ecount >= 0:
                        errors = []
                        for _ in range(ecount):
                            index = r.i32()
                            errors.append((index, r.compact_string(), r.tags()))
                    message = r.compact_string()
                    partitions.append(
                        (partition, code, base, append_time, start, errors, message, r.tags())
                    )
            topics.append((name, partitions, r.tags()))
    throttle = r.i32()
    return topics, throttle, r.tags()
