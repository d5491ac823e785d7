"""What a partition holds past its last stable offset, read batch by batch with each
batch's producer id. Part of the glue (processor/kafka/glue/__init__.py lists the
private members reached here, in `REACHES`).

A broker killed between a transaction's PrepareCommit and its markers can complete the
transaction on restart without writing them: its coordinator skips the partitions it has
no leader for yet (docs/guarantees.md, "A broker that loses a round's markers"). Their
records then wait past the last stable offset, unreadable by `read_committed`, until the
same producer's next marker on the partition, which commits them. Recovery must read
them as the state they will become: aiokafka's records do not carry their producer id,
so the batches are fetched here (`read_uncommitted`) and sorted out by it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

# A read_uncommitted fetch: every record up to the high watermark.
_READ_UNCOMMITTED = 0
_MAX_BYTES = 64 * 1024 * 1024
# A control record's key: version (int16), then type: 0 abort, 1 commit.
_COMMIT = 1

# (offset, key, value) of one record.
Pending = tuple[int, bytes | None, bytes | None]
# A batch as read: (producer id, transactional, control type or None, its records).
_Batch = tuple[int, bool, int | None, list[Pending]]


async def pending_records(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    producers: Collection[int],
) -> dict[TopicPartition, list[Pending]]:
    """Per partition, in offset order, the records from `starts` (its last stable offset)
    to its high watermark that are committed, or that a transaction of one of `producers`
    holds with no marker yet: what the next commit of those producers there makes
    readable. Records of an aborted transaction, and of another producer's open one,
    are left out."""
    client: Any = consumer._client
    found: dict[TopicPartition, list[_Batch]] = {}
    todo = dict(starts)
    while todo:
        by_node: dict[int, list[TopicPartition]] = {}
        for tp in todo:
            leader = client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                raise RuntimeError(f"no leader for {tp}: its pending records cannot be read")
            by_node.setdefault(leader, []).append(tp)
        for node, tps in by_node.items():
            topics: dict[str, list[tuple[int, int, int]]] = {}
            for tp in tps:
                topics.setdefault(tp.topic, []).append((tp.partition, todo[tp], _MAX_BYTES))
            request = FetchRequest(
                0, 0, _MAX_BYTES, _READ_UNCOMMITTED, [(t, ps) for t, ps in topics.items()]
            )
            response = await client.send(node, request)
            for topic, partitions in response.topics:
                for partition, error, highwater, *data in partitions:
                    tp = TopicPartition(topic, partition)
                    if error:
                        raise RuntimeError(f"fetching {tp}'s pending records: error {error}")
                    offset, batches = _batches(data[-1], todo[tp])
                    found.setdefault(tp, []).extend(batches)
                    if offset >= highwater or offset == todo[tp]:
                        del todo[tp]
                    else:
                        todo[tp] = offset
    return {tp: _resolved(batches, producers) for tp, batches in found.items()}


def _batches(raw: bytes, start: int) -> tuple[int, list[_Batch]]:
    """The batches in a fetch's record set from `start` on, and the offset after them."""
    records = MemoryRecords(raw)
    out: list[_Batch] = []
    after = start
    while records.has_next():
        batch = records.next_batch()
        if batch is None:
            break
        every = [(r.offset, r.key, r.value) for r in batch]
        if every:
            after = max(after, every[-1][0] + 1)
        rows = [row for row in every if row[0] >= start]
        control = None
        if batch.is_control_batch:
            key = rows[0][1] if rows else None
            control = int.from_bytes(key[2:4], "big") if key else None
            rows = []
        out.append((batch.producer_id, batch.is_transactional, control, rows))
    return after, out


def _resolved(batches: list[_Batch], producers: Collection[int]) -> list[Pending]:
    out: list[Pending] = []
    open_: dict[int, list[Pending]] = {}
    for producer, transactional, control, rows in batches:
        if control is not None:
            held = open_.pop(producer, [])
            if control == _COMMIT:
                out.extend(held)
        elif transactional:
            open_.setdefault(producer, []).extend(rows)
        else:
            out.extend(rows)
    for producer, held in open_.items():
        if producer in producers:
            out.extend(held)
    out.sort(key=lambda row: row[0])
    return out
