"""aiokafka's transactional producer speaking Kafka's transactions v2 (KIP-890 part 2).

aiokafka 0.14.0 (pinned) speaks the first transaction protocol only: before a
transaction's first batch to a partition it asks the transaction coordinator to add
the partition (AddPartitionsToTxn), waits for the answer, then produces, then ends the
transaction (EndTxn). Three requests in a row each round, and the first is refused
with CONCURRENT_TRANSACTIONS while the last round's markers are still being written,
so it often goes twice (docs/performance.md, "Transactions v2").

A broker of Kafka 4.0 or later with the feature `transaction.version` 2 finalized
takes a transactional produce of version 12 or later as the partition's addition too
(the leader adds it with the coordinator itself, retrying there on
CONCURRENT_TRANSACTIONS), and an EndTxn of version 5 or later bumps the producer's
epoch with every transaction and returns the new one. So a round is two requests: the
produce and EndTxn. What changes on the client, as Java's producer does it
(`TransactionManager` with `isTransactionV2Enabled`):

- no AddPartitionsToTxn: a partition counts as added when its first batch is queued;
- Produce v12 (the flexible form of v11, nothing new in it) for the transaction's
  batches;
- EndTxn v5, whose answer carries the producer id and epoch of the next transaction;
  the sequence numbers start again from 0 under the new epoch.

A producer speaks v2 when the cluster has `transaction.version` 2 finalized (Kafka
4.0's default for a new cluster), which it asks the transaction coordinator's broker
for when it starts (`transactions_v2_supported`), as Java's producer does; elsewhere
`TransactionsV2Producer` behaves as aiokafka's.
Fencing is unchanged: InitProducerId still bumps the epoch and fences the last owner,
and a fenced producer's next request is refused.
"""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.errors import ConcurrentTransactions
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.producer.transaction_manager import PidAndEpoch
from aiokafka.protocol.api import Request, RequestStruct, Response, ResponseHeader_v0
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactBytes,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from processor.kafka.glue.codecs import answer_fields
from processor.kafka.protocol import decode_produce_v12, encode_produce_v12

PRODUCE_V2 = 12
END_TXN_V2 = 5
_PRODUCE = 0
_END_TXN = 26


_API_VERSIONS = 18
# ApiVersions' tagged field holding the cluster's finalized features.
_FINALIZED_FEATURES_TAG = 2
TRANSACTION_VERSION = "transaction.version"


def offers_v2(versions: dict[int, tuple[int, int]]) -> bool:
    """Whether a broker whose ApiVersions answer is `versions` (api key: min, max)
    offers Produce 12 and EndTxn 5."""
    produce = versions.get(_PRODUCE, (0, 0))[1]
    end_txn = versions.get(_END_TXN, (0, 0))[1]
    return produce >= PRODUCE_V2 and end_txn >= END_TXN_V2


def transactions_v2_supported(
    versions: dict[int, tuple[int, int]], transaction_version: int
) -> bool:
    """Whether a broker speaks transactions v2: its ApiVersions answer's `versions` and
    the cluster's finalized `transaction.version` (0 when absent). A broker offers the
    new versions whatever the feature; the feature is what says every broker of the
    cluster takes them (Java's producer asks the same)."""
    return transaction_version >= 2 and offers_v2(versions)


class ApiVersionsResponseV3(Response):  # type: ignore[misc]
    API_KEY = _API_VERSIONS
    API_VERSION = 3
    SCHEMA = Schema(
        ("error_code", Int16),
        (
            "api_versions",
            CompactArray(
                ("api_key", Int16),
                ("min_version", Int16),
                ("max_version", Int16),
                ("tags", TaggedFields),
            ),
        ),
        ("throttle_time_ms", Int32),
        ("tags", TaggedFields),
    )


_FINALIZED_FEATURES = CompactArray(
    ("name", CompactString("utf-8")),
    ("max_version_level", Int16),
    ("min_version_level", Int16),
    ("tags", TaggedFields),
)


class ApiVersionsRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = _API_VERSIONS
    API_VERSION = 3
    RESPONSE_TYPE = ApiVersionsResponseV3
    SCHEMA = Schema(
        ("client_software_name", CompactString("utf-8")),
        ("client_software_version", CompactString("utf-8")),
        ("tags", TaggedFields),
    )

    def parse_response_header(self, read_buffer: BytesIO | bytes) -> ResponseHeader_v0:
        # ApiVersions answers with the first header at every version (KIP-511), so that
        # a client can read an answer to a version the broker does not know.
        return ResponseHeader_v0.decode(read_buffer)


class ApiVersionsV3(Request[ApiVersionsRequestV3]):  # type: ignore[misc]
    API_KEY = _API_VERSIONS

    def build(self, request_struct_class: type[ApiVersionsRequestV3]) -> ApiVersionsRequestV3:
        return request_struct_class("credits-meter", "1", {})


def finalized_transaction_version(answer: Any) -> int:
    """The cluster's finalized `transaction.version` in an ApiVersions v3 answer."""
    raw = answer.tags.get(_FINALIZED_FEATURES_TAG)
    if not raw:
        return 0
    for name, level, _min, _tags in _FINALIZED_FEATURES.decode(BytesIO(raw)):
        if name == TRANSACTION_VERSION:
            return int(level)
    return 0


# ---- the two requests, in their flexible forms -----------------------------------------


class ProduceResponseV12(Response):  # type: ignore[misc]
    API_KEY = _PRODUCE
    API_VERSION = PRODUCE_V2
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("error_code", Int16),
                        ("offset", Int64),
                        ("timestamp", Int64),
                        ("log_start_offset", Int64),
                        (
                            "record_errors",
                            CompactArray(
                                ("batch_index", Int32),
                                ("message", CompactString("utf-8")),
                                ("tags", TaggedFields),
                            ),
                        ),
                        ("error_message", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("throttle_time_ms", Int32),
        ("tags", TaggedFields),
    )

    @classmethod
    def decode(cls, data: BytesIO | bytes) -> ProduceResponseV12:
        # By hand (processor/kafka/protocol.py).
        return cls(*answer_fields(decode_produce_v12, data))


class ProduceRequestV12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = _PRODUCE
    API_VERSION = PRODUCE_V2
    RESPONSE_TYPE = ProduceResponseV12
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("required_acks", Int16),
        ("timeout", Int32),
        (
            "topics",
            CompactArray(
                ("topic", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32), ("messages", CompactBytes), ("tags", TaggedFields)
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )

    def encode(self) -> bytes:
        # By hand (processor/kafka/protocol.py): the schema's bytes, without its calls.
        return encode_produce_v12(
            self.transactional_id, self.required_acks, self.timeout, self.topics, self.tags
        )


class ProduceV2(Request[ProduceRequestV12]):  # type: ignore[misc]
    """A transaction's batches, produced under v2 (the produce adds the partitions)."""

    API_KEY = _PRODUCE

    def __init__(
        self,
        transactional_id: str,
        required_acks: int,
        timeout: int,
        topics: list[tuple[str, list[tuple[int, bytes]]]],
    ) -> None:
        self.transactional_id = transactional_id
        self.required_acks = required_acks
        self.timeout = timeout
        self.topics = topics

    def build(self, request_struct_class: type[ProduceRequestV12]) -> ProduceRequestV12:
        return request_struct_class(
            self.transactional_id,
            self.required_acks,
            self.timeout,
            [
                (topic, [(p, data, {}) for p, data in partitions], {})
                for topic, partitions in self.topics
            ],
            {},
        )


class EndTxnResponseV5(Response):  # type: ignore[misc]
    API_KEY = _END_TXN
    API_VERSION = END_TXN_V2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class EndTxnRequestV5(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = _END_TXN
    API_VERSION = END_TXN_V2
    RESPONSE_TYPE = EndTxnResponseV5
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("transaction_result", Boolean),
        ("tags", TaggedFields),
    )


class EndTxnV2(Request[EndTxnRequestV5]):  # type: ignore[misc]
    API_KEY = _END_TXN

    def __init__(
        self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool
    ) -> None:
        self.fields = (transactional_id, producer_id, producer_epoch, commit)

    def build(self, request_struct_class: type[EndTxnRequestV5]) -> EndTxnRequestV5:
        return request_struct_class(*self.fields, {})


# ---- the sender's handlers -------------------------------------------------------------

# Errors the v2 versions answer that aiokafka does not know, as the codes the first
# protocol answers in their place (and aiokafka handles): PRODUCER_FENCED (KIP-588) for
# an epoch another producer of the id bumped, INVALID_PRODUCER_EPOCH before; and
# TRANSACTION_ABORTABLE (KIP-890), INVALID_TXN_STATE before.
_AS_V1: dict[int, int] = {90: 47, 120: 48}


def v1_code(code: int) -> int:
    return _AS_V1.get(code, code)


class ProduceV2Handler(aiokafka_sender.SendProduceReqHandler):  # type: ignore[misc]
    """A produce of a transaction's batches at v12. A partition the coordinator still
    writes the last transaction's markers to is retried on the broker; should the
    answer still be CONCURRENT_TRANSACTIONS, the batch goes again after the short
    backoff, not the producer's 100 ms."""

    def create_request(self) -> ProduceV2:
        topics: dict[str, list[tuple[int, bytes]]] = {}
        for tp, batch in self._batches.items():
            topics.setdefault(tp.topic, []).append((tp.partition, batch.get_data_buffer()))
        return ProduceV2(
            self._sender._txn_manager.transactional_id,
            self._sender._acks,
            self._sender._request_timeout_ms,
            list(topics.items()),
        )

    def handle_response(self, response: Any) -> None:
        # In the shape aiokafka reads at v8, the last it knows.
        topics = []
        for topic, partitions, _tags in response.topics:
            rows = []
            for p, error, offset, ts, start, errors, message, _ptags in partitions:
                if error == ConcurrentTransactions.errno:
                    self._default_backoff = aiokafka_sender.BACKOFF_OVERRIDE
                rows.append((p, v1_code(error), offset, ts, start, errors, message))
            topics.append((topic, rows))
        super().handle_response(SimpleNamespace(API_VERSION=8, topics=topics))

    def _can_retry(self, error: Any, batch: Any) -> bool:
        return isinstance(error, ConcurrentTransactions) or bool(super()._can_retry(error, batch))


class EndTxnV2Handler(aiokafka_sender.EndTxnHandler):  # type: ignore[misc]
    """EndTxn at v5: on success the producer takes the epoch (and id) it returns, and
    its sequence numbers start again."""

    def create_request(self) -> EndTxnV2:
        txn = self._sender._txn_manager
        return EndTxnV2(
            txn.transactional_id,
            txn.producer_id,
            txn.producer_epoch,
            bool(self._commit_result),
        )

    def handle_response(self, resp: Any) -> float | None:
        if resp.error_code == 0:
            txn = self._sender._txn_manager
            txn._pid_and_epoch = PidAndEpoch(resp.producer_id, resp.producer_epoch)
            txn._sequence_numbers.clear()
        resp.error_code = v1_code(resp.error_code)
        backoff: float | None = super().handle_response(resp)
        return backoff


class SenderV2(aiokafka_sender.Sender):  # type: ignore[misc]
    """aiokafka's sender, speaking v2 once the coordinator's broker says it can."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Decided at start, from the transaction coordinator's ApiVersions answer.
        self.v2 = False

    async def start(self) -> None:
        await self._maybe_wait_for_pid()
        node_id = await self._find_coordinator(
            CoordinationType.TRANSACTION, self._txn_manager.transactional_id
        )
        conn = await self.client._get_conn(node_id, group=ConnectionGroup.COORDINATION)
        # The feature is asked for only where the versions are there to use.
        if conn is not None and offers_v2(conn._versions):
            answer = await self.client.send(
                node_id, ApiVersionsV3(), group=ConnectionGroup.COORDINATION
            )
            self.v2 = transactions_v2_supported(
                conn._versions, finalized_transaction_version(answer)
            )
        await super().start()

    def _maybe_do_transactional_request(self) -> Any:
        if self.v2:
            txn = self._txn_manager
            # The produce adds them: added as soon as they are queued.
            for tp in list(txn.partitions_to_add()):
                txn.partition_added(tp)
        return super()._maybe_do_transactional_request()

    # These two are aiokafka 0.14.0's own, with the v2 handler: aiokafka names its handler
    # classes inside them, so there is no other place to choose one.
    async def _send_produce_req(self, node_id: int, batches: Any) -> None:
        if not self.v2:
            await super()._send_produce_req(node_id, batches)
            return
        await ProduceV2Handler(self, batches).do(node_id)
        self._in_flight.remove(node_id)
        for tp in batches:
            self._muted_partitions.remove(tp)

    async def _do_txn_commit(self, commit_result: Any) -> None:
        if not self.v2:
            await super()._do_txn_commit(commit_result)
            return
        await self._message_accumulator.flush_for_commit()
        txn = self._txn_manager
        if txn.is_empty_transaction():
            txn.complete_transaction()
            return
        node_id = await self._find_coordinator(CoordinationType.TRANSACTION, txn.transactional_id)
        await EndTxnV2Handler(self, commit_result).do(node_id)


class TransactionsV2Producer(AIOKafkaProducer):  # type: ignore[misc]
    """A transactional `AIOKafkaProducer` that speaks transactions v2 where the broker
    does (`transactions_v2`, known once started)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        plain: Any = cast(Any, self)._sender
        self._sender = SenderV2(
            self.client,
            acks=plain._acks,
            txn_manager=self._txn_manager,
            retry_backoff_ms=plain._retry_backoff * 1000,
            message_accumulator=self._message_accumulator,
            request_timeout_ms=plain._request_timeout_ms,
        )

    @property
    def transactions_v2(self) -> bool:
        sender: Any = self._sender
        return bool(sender.v2)
