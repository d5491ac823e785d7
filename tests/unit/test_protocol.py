"""The hand-written Fetch v11 and Produce v12 codings give the bytes and the values of
aiokafka's generic schemas, for any request and answer."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v11, FetchResponse_v11
from aiokafka.protocol.types import TaggedFields
from hypothesis import given
from hypothesis import strategies as st

from processor.kafka.glue.transactions_v2 import ProduceRequestV12, ProduceResponseV12
from processor.kafka.protocol import (
    Underrun,
    decode_fetch_v11,
    decode_produce_v12,
    encode_fetch_v11,
    encode_produce_v12,
)

i8 = st.integers(-(2**7), 2**7 - 1)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
names = st.text(max_size=12)
blobs = st.binary(max_size=64)
tags = st.dictionaries(st.integers(0, 300), st.binary(max_size=8), max_size=3)

fetch_topics = st.lists(
    st.tuples(names, st.lists(st.tuples(i32, i64, i32), max_size=6)), max_size=4
)
# Both answers' partitions begin alike: partition, error code, then three offsets (or
# times).
PARTITION_HEAD = (i32, i16, i64, i64, i64)
fetched_partitions = st.lists(
    st.tuples(
        *PARTITION_HEAD,
        st.none() | st.lists(st.tuples(i64, i64), max_size=3),
        i32,
        st.none() | blobs,
    ),
    max_size=6,
)
produce_topics: st.SearchStrategy[list[Any]] = st.lists(
    st.tuples(names, st.lists(st.tuples(i32, blobs, st.just({})), max_size=6), st.just({})),
    max_size=4,
)
produced_partitions = st.lists(
    st.tuples(
        *PARTITION_HEAD,
        st.none() | st.lists(st.tuples(i32, st.none() | names, st.just({})), max_size=2),
        st.none() | names,
        st.just({}),
    ),
    max_size=6,
)


@given(i32, i32, i32, i8, fetch_topics, names)
def test_a_fetch_is_the_bytes_aiokafka_sends(
    wait: int, least: int, most: int, isolation: int, topics: Any, rack: str
) -> None:
    theirs = FetchRequest(wait, least, most, isolation, topics, rack_id=rack)
    assert encode_fetch_v11(wait, least, most, isolation, topics, rack) == (
        theirs.build(FetchRequest_v11).encode()
    )


@given(i32, i16, i32, st.lists(st.tuples(st.none() | names, fetched_partitions), max_size=4))
def test_a_fetch_answer_reads_as_aiokafka_reads_it(
    throttle: int, error: int, session: int, topics: Any
) -> None:
    wire = b"HEADER" + FetchResponse_v11(throttle, error, session, topics).encode()
    theirs = FetchResponse_v11.decode(BytesIO(wire[6:]))
    assert decode_fetch_v11(wire, 6) == (
        theirs.throttle_time_ms,
        theirs.error_code,
        theirs.session_id,
        theirs.topics,
    )


@given(st.none() | names, i16, i32, produce_topics)
def test_a_produce_is_the_bytes_of_its_schema(
    transactional_id: str | None, acks: int, timeout: int, topics: Any
) -> None:
    fields = [transactional_id, acks, timeout, topics, {}]
    assert encode_produce_v12(*fields) == ProduceRequestV12.SCHEMA.encode(fields)


@given(
    st.none() | st.lists(st.tuples(st.none() | names, produced_partitions, st.just({}))),
    i32,
)
def test_a_produce_answer_reads_as_its_schema_reads_it(topics: Any, throttle: int) -> None:
    wire = ProduceResponseV12.SCHEMA.encode([topics, throttle, {}])
    buffer = BytesIO(wire)
    assert decode_produce_v12(wire) == tuple(
        field.decode(buffer) for field in ProduceResponseV12.SCHEMA.fields
    )


@given(tags)
def test_tagged_fields_are_written_and_read(fields: dict[int, bytes]) -> None:
    # aiokafka's schema cannot write a tagged field (it leaves out the size), so the
    # bytes are checked against its reader, and ours reads them back: an answer may
    # carry tagged fields (a moved partition's new leader).
    head = encode_produce_v12(None, 0, 0, [], {})
    written = encode_produce_v12(None, 0, 0, [], fields)[len(head) - 1 :]
    assert TaggedFields.decode(BytesIO(written)) == fields
    answer = b"\x01" + (7).to_bytes(4, "big") + written  # no topics, throttle 7 ms
    assert decode_produce_v12(answer) == ([], 7, fields)


def test_a_short_answer_is_refused() -> None:
    wire = FetchResponse_v11(0, 0, 0, [("usage", [(0, 0, 5, 5, 0, None, -1, b"abc")])]).encode()
    with pytest.raises(Underrun):
        decode_fetch_v11(wire[:-1])


def test_a_produce_takes_the_batch_builder_s_bytes() -> None:
    # aiokafka's record batch builder gives a bytearray.
    built = bytearray(b"RECORDS")
    topics: Any = [("ledger", [(2, built, {})], {})]
    assert encode_produce_v12("t", -1, 1, topics, {}) == encode_produce_v12(
        "t", -1, 1, [("ledger", [(2, bytes(built), {})], {})], {}
    )
