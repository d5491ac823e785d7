"""The wire forms of Kafka's transactions v2 that aiokafka lacks, checked byte by byte
against the protocol's definitions (Produce v12, EndTxn v5: flexible versions), and
what the producer makes of a v12 answer."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import ConcurrentTransactions, ProducerFenced
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.protocol.api import RequestHeader_v2
from aiokafka.structs import TopicPartition

from processor.kafka.glue.transactions_v2 import (
    ApiVersionsResponseV3,
    ApiVersionsV3,
    EndTxnRequestV5,
    EndTxnResponseV5,
    EndTxnV2,
    EndTxnV2Handler,
    ProduceResponseV12,
    ProduceV2,
    ProduceV2Handler,
    finalized_transaction_version,
    transactions_v2_supported,
)

BROKER_4 = {0: (0, 13), 22: (0, 5), 24: (0, 5), 26: (0, 5)}


def test_v2_takes_the_feature_finalized_and_the_versions_offered() -> None:
    assert transactions_v2_supported(BROKER_4, 2)
    # A broker of Kafka 4 offers the versions whatever the feature: the feature decides.
    assert not transactions_v2_supported(BROKER_4, 1)
    assert not transactions_v2_supported(BROKER_4, 0)
    # A broker before Kafka 4.0: Produce 11, EndTxn 4 at most.
    assert not transactions_v2_supported({**BROKER_4, 0: (3, 11), 26: (0, 4)}, 2)
    assert not transactions_v2_supported({}, 2)


def _api_versions_answer(features: bytes | None) -> bytes:
    tags = b"\x00" if features is None else b"\x01\x02" + bytes([len(features)]) + features
    return (
        b"\x00\x00"  # no error
        + b"\x02"  # one api
        + (26).to_bytes(2, "big")
        + (0).to_bytes(2, "big")
        + (5).to_bytes(2, "big")
        + b"\x00"
        + (0).to_bytes(4, "big")  # throttle time
        + tags
    )


def _feature(name: str, level: int) -> bytes:
    return bytes([len(name) + 1]) + name.encode() + level.to_bytes(2, "big") + b"\x00\x01\x00"


def test_the_finalized_transaction_version_is_read_from_api_versions_v3() -> None:
    request = ApiVersionsV3().prepare({18: (0, 4)})
    assert request.encode() == b"\x0ecredits-meter\x021\x00"
    # The answer's header is the first one at every version (no tagged fields).
    assert request.parse_response_header(BytesIO((9).to_bytes(4, "big"))).correlation_id == 9
    features = b"\x03" + _feature("group.version", 1) + _feature("transaction.version", 2)
    answer = ApiVersionsResponseV3.decode(BytesIO(_api_versions_answer(features)))
    assert answer.api_versions == [(26, 0, 5, {})]
    assert finalized_transaction_version(answer) == 2
    one = ApiVersionsResponseV3.decode(
        BytesIO(_api_versions_answer(b"\x02" + _feature("transaction.version", 1)))
    )
    assert finalized_transaction_version(one) == 1
    none = ApiVersionsResponseV3.decode(BytesIO(_api_versions_answer(None)))
    assert finalized_transaction_version(none) == 0


def test_end_txn_v5_on_the_wire() -> None:
    request = EndTxnV2("t", 7, 3, True).prepare(BROKER_4)
    assert isinstance(request, EndTxnRequestV5)
    # A flexible request has the header with tagged fields.
    assert isinstance(request.build_request_header(1, "c"), RequestHeader_v2)
    # compact string "t" (length + 1), producer id, epoch, committed, no tagged fields
    assert request.encode() == b"\x02t" + (7).to_bytes(8, "big") + b"\x00\x03" + b"\x01" + b"\x00"


def test_end_txn_v5_answer_carries_the_next_epoch() -> None:
    wire = (0).to_bytes(4, "big") + b"\x00\x00" + (7).to_bytes(8, "big") + b"\x00\x04" + b"\x00"
    answer = EndTxnResponseV5.decode(BytesIO(wire))
    assert (answer.error_code, answer.producer_id, answer.producer_epoch) == (0, 7, 4)


def test_produce_v12_on_the_wire() -> None:
    records = b"RECORDS"
    request = ProduceV2("t", -1, 30_000, [("ledger", [(2, records)])]).prepare(BROKER_4)
    assert request.API_VERSION == 12
    assert request.encode() == (
        b"\x02t"  # transactional id
        + b"\xff\xff"  # acks -1
        + (30_000).to_bytes(4, "big")
        + b"\x02"  # one topic
        + b"\x07ledger"
        + b"\x02"  # one partition
        + (2).to_bytes(4, "big")
        + bytes([len(records) + 1])
        + records
        + b"\x00"  # the partition's tagged fields
        + b"\x00"  # the topic's
        + b"\x00"  # the request's
    )


def _answer(error: int) -> Any:
    wire = (
        b"\x02\x07ledger\x02"
        + (2).to_bytes(4, "big")
        + error.to_bytes(2, "big")
        + (41).to_bytes(8, "big")  # base offset
        + (-1).to_bytes(8, "big", signed=True)  # log append time
        + (0).to_bytes(8, "big")  # log start offset
        + b"\x01"  # no record errors
        + b"\x00"  # no error message
        + b"\x00\x00"  # partition, topic tagged fields
        + (0).to_bytes(4, "big")  # throttle time
        + b"\x00"
    )
    return ProduceResponseV12.decode(BytesIO(wire))


class FakeBatch:
    def __init__(self) -> None:
        self.done_with: tuple[Any, ...] | None = None
        self.failed: BaseException | None = None

    def done(self, *args: Any) -> None:
        self.done_with = args

    def failure(self, exception: BaseException) -> None:
        self.failed = exception

    def expired(self) -> bool:
        return False


def _sender() -> Any:
    """What aiokafka's handlers read of their sender."""
    return SimpleNamespace(client=None, _retry_backoff=0.1, _txn_manager=None)


def _handler(batch: FakeBatch) -> ProduceV2Handler:
    return ProduceV2Handler(_sender(), {TopicPartition("ledger", 2): batch})


def test_an_appended_batch_is_done_at_its_offset() -> None:
    batch = FakeBatch()
    _handler(batch).handle_response(_answer(0))
    assert batch.done_with == (41, -1, 0)


def test_concurrent_transactions_sends_the_batch_again_soon() -> None:
    # The broker retried adding the partition itself and gave up: the last transaction's
    # markers are still being written. The batch goes again after the short backoff,
    # not the producer's 100 ms, and is not failed.
    batch = FakeBatch()
    handler = _handler(batch)
    handler.handle_response(_answer(ConcurrentTransactions.errno))
    assert batch.failed is None and batch.done_with is None
    assert handler._to_reenqueue == [batch]  # noqa: SLF001 - aiokafka's own handler state
    assert handler._default_backoff == aiokafka_sender.BACKOFF_OVERRIDE  # noqa: SLF001


def test_a_fenced_produce_fails_its_batch_as_fenced() -> None:
    # v12 answers PRODUCER_FENCED (90) where the first protocol answered 47.
    batch = FakeBatch()
    _handler(batch).handle_response(_answer(90))
    assert isinstance(batch.failed, ProducerFenced)


def test_a_fenced_end_txn_raises_fenced() -> None:
    fenced = EndTxnResponseV5(0, 90, -1, -1, {})
    with pytest.raises(ProducerFenced):
        EndTxnV2Handler(_sender(), True).handle_response(fenced)
