"""A round's records packed into record batches by the glue (`glue.pack_group`): what
`BatchBuilder.append` would have built, batch by batch, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch

from processor.kafka import glue


@dataclass(frozen=True)
class _Rec:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] | None = None


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    # Never started: batches are built without a broker.
    made = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", max_batch_size=1024)
    yield made
    await made.stop()


def _read(batch: glue.Batch) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    builder = batch[2]
    records = list(DefaultRecordBatch(bytearray(builder._build())))  # noqa: SLF001
    assert [r.offset for r in records] == list(range(len(records)))
    assert builder.record_count() == len(records)
    return [(r.key, r.value, list(r.headers)) for r in records]


async def test_records_fill_batches_in_order_and_read_back_whole(
    producer: AIOKafkaProducer,
) -> None:
    records = [
        _Rec(f"k{i}".encode(), b"v" * 100 + str(i).encode(), (("h", b"1"),) if i % 3 else None)
        for i in range(30)
    ]
    batches: list[glue.Batch] = []
    assert glue.pack_group(producer, "t", 4, records, batches)
    assert len(batches) > 1  # 30 records of ~110 bytes do not fit in 1 KiB
    assert {(topic, partition) for topic, partition, _ in batches} == {("t", 4)}
    read = [record for batch in batches for record in _read(batch)]
    assert read == [(r.key, r.value, list(r.headers or ())) for r in records]


async def test_a_record_larger_than_a_batch_has_one_of_its_own(
    producer: AIOKafkaProducer,
) -> None:
    # As BatchBuilder.append: an empty batch takes any record (the broker may refuse it).
    small, big = _Rec(b"k", b"v"), _Rec(b"k", b"x" * 4096)
    batches: list[glue.Batch] = []
    assert glue.pack_group(producer, "t", 0, [small, big, small], batches)
    assert [_read(batch) for batch in batches] == [
        [(b"k", b"v", [])],
        [(b"k", b"x" * 4096, [])],
        [(b"k", b"v", [])],
    ]
