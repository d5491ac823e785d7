"""The group fence: one transactional producer per worker, zombies still fenced.

A transaction of the worker's carries records for many partition numbers, so no
partition's transactional id can fence the partition's earlier owner (the design before
this one: a producer per partition number, docs/guarantees.md). The fence is the
consumer group instead, as in Kafka's exactly-once v2 (KIP-447), which aiokafka 0.14
does not implement; this module adds the two requests it needs:

- every transaction commits, with the group's generation and this worker's member id
  (`TxnOffsetCommit` v3), offset 0 of the fence topic's partition for each partition
  number it writes. A worker the group has moved on from (a zombie) is refused
  (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID): its transaction is aborted, nothing it wrote
  is ever read, and it fails and starts afresh;
- a worker assigned partitions waits, before it reads their state, until no
  transaction that committed fence offsets for them is still open (`OffsetFetch` v7,
  require_stable), and until no transaction at all is open on their state partitions
  (the committed end offset equals the log end): whatever a zombie committed before it
  was refused is then in what the worker reads, and what it never committed never is.

The fence topic is never written; its committed offsets stay 0, so lag tools show it
as caught up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.errors import (
    ConcurrentTransactions,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaError,
    NodeNotReadyError,
    NotCoordinatorError,
    RequestTimedOutError,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.protocol.transaction import AddOffsetsToTxnRequest
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)

GROUP, TRANSACTION = CoordinationType.GROUP, CoordinationType.TRANSACTION
# Kafka's error codes for a member the group no longer has in this generation.
FENCED_CODES = frozenset(
    {
        22,  # ILLEGAL_GENERATION
        25,  # UNKNOWN_MEMBER_ID
        27,  # REBALANCE_IN_PROGRESS
        82,  # FENCED_INSTANCE_ID
    }
)
UNSTABLE_OFFSET_COMMIT = 88
NOT_COORDINATOR_CODES = frozenset({15, 16})  # COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR
LEADER_MOVED_CODES = frozenset({5, 6})  # LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER
UNKNOWN_TOPIC_OR_PARTITION = 3
# Answers worth the same request again, after a pause.
RETRIABLE = (
    ConcurrentTransactions,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
    NodeNotReadyError,
    RequestTimedOutError,
)
RETRY_SECONDS = 0.002
# Waiting for a transaction to end polls this often (a zombie's may take up to the
# transaction timeout, after which the broker aborts it).
POLL_SECONDS = 0.05


class GroupFenced(KafkaError):  # type: ignore[misc]
    """The group refused this worker's transaction: it is no longer the member, or not
    in this generation (a zombie). The transaction was aborted."""

    retriable = False


# ---- the two requests aiokafka 0.14 lacks -----------------------------------------


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommit(Request[TxnOffsetCommitRequest_v3]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(self, *fields: Any) -> None:
        self._fields = fields

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]) -> Any:
        return request_struct_class(*self._fields)


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetch(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(self, *fields: Any) -> None:
        self._fields = fields

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> Any:
        return request_struct_class(*self._fields)


# ---- the fence ---------------------------------------------------------------------

# The group member a transaction is committed as: (generation, member id).
Member: TypeAlias = tuple[int, str]
# The transactional producer's identity: (producer id, epoch), read from aiokafka.
Identity = Callable[[Any], tuple[int, int]]


@dataclass(frozen=True)
class GroupFence:
    """Fences transactions by consumer group generation (module docstring)."""

    group_id: str
    # The fence topic, with a partition per partition number.
    topic: str
    # The topics whose partitions hold a partition number's state (changelogs, marks).
    state_topics: tuple[str, ...]
    identity: Identity
    _coordinators: _Coordinators = field(default_factory=lambda: _Coordinators(), init=False)

    async def enlist(self, producer: Any, transactional_id: str) -> None:
        """Add the group to `producer`'s transaction (AddOffsetsToTxn). Done before the
        transaction's records are sent: the coordinator answers a request that comes
        while another of the transaction's is in progress with CONCURRENT_TRANSACTIONS,
        and aiokafka waits 100 ms before it adds partitions again."""
        producer_id, epoch = self.identity(producer)
        add = AddOffsetsToTxnRequest(
            transactional_id=transactional_id,
            producer_id=producer_id,
            producer_epoch=epoch,
            group_id=self.group_id,
        )
        while True:
            response = await self._coordinators.ask(
                producer.client, TRANSACTION, transactional_id, add
            )
            # CONCURRENT_TRANSACTIONS while the broker still writes the last one's markers.
            if not _retriable(response.error_code):
                _raise_for(response.error_code)
                return
            self._coordinators.answered(TRANSACTION, transactional_id, {response.error_code})
            await asyncio.sleep(RETRY_SECONDS)

    async def commit(
        self, producer: Any, transactional_id: str, member: Member, partitions: Iterable[int]
    ) -> None:
        """Commit the fence offsets of `partitions` in `producer`'s transaction, which
        `enlist` added the group to, as `member` (TxnOffsetCommit v3). Raises
        GroupFenced if the group refuses."""
        client = producer.client
        producer_id, epoch = self.identity(producer)
        generation, member_id = member
        topics: list[Any] = [
            (
                self.topic,
                [(p, 0, -1, "", {}) for p in sorted(set(partitions))],
                {},
            )
        ]
        commit = TxnOffsetCommit(
            transactional_id,
            self.group_id,
            producer_id,
            epoch,
            generation,
            member_id,
            None,
            topics,
            {},
        )
        while True:
            response = await self._coordinators.ask(client, GROUP, self.group_id, commit)
            codes = {code for _t, parts, _ in response.topics for _p, code, _ in parts}
            if codes & FENCED_CODES:
                raise GroupFenced(
                    f"the group {self.group_id!r} refused generation {generation} of "
                    f"member {member_id!r} (error codes {sorted(codes)})"
                )
            if any(_retriable(code) for code in codes):
                self._coordinators.answered(GROUP, self.group_id, codes)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for code in codes:
                _raise_for(code)
            return

    async def settled(self, producer: Any, partitions: set[int]) -> None:
        """Return once no transaction is open that could still commit state for these
        partition numbers: none with fence offsets of theirs pending, and none with
        records in their state topics' partitions."""
        if not partitions:
            return
        client = producer.client
        fetch = StableOffsetFetch(self.group_id, [(self.topic, sorted(partitions), {})], True, {})
        while True:
            response = await self._coordinators.ask(client, GROUP, self.group_id, fetch)
            codes = {part[4] for _t, parts, _ in response.topics for part in parts} | {
                response.error_code
            }
            # UNSTABLE_OFFSET_COMMIT: a transaction with fence offsets of theirs is open.
            if UNSTABLE_OFFSET_COMMIT not in codes and not any(map(_retriable, codes)):
                for code in codes:
                    _raise_for(code)
                break
            self._coordinators.answered(GROUP, self.group_id, codes)
            await asyncio.sleep(POLL_SECONDS)
        tps = [TopicPartition(t, p) for t in self.state_topics for p in sorted(partitions)]
        while True:
            committed = await _end_offsets(client, tps, read_committed=True)
            written = await _end_offsets(client, tps, read_committed=False)
            open_ = [tp for tp in tps if committed.get(tp, 0) < written.get(tp, 0)]
            if not open_:
                return
            log.info("waiting for transactions open on %s to end", open_[:4])
            await asyncio.sleep(POLL_SECONDS)


class _Coordinators:
    """The coordinator node of each (kind, key), looked up once and again only after
    a request to it failed (a lookup per request would be a round trip more)."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, str], int] = {}

    async def ask(self, client: Any, kind: int, key: str, request: Any) -> Any:
        """`request` to the coordinator of `key`; again, after a pause, on a failure
        to reach it."""
        while True:
            node = self._nodes.get((kind, key))
            try:
                if node is None:
                    node = self._nodes[(kind, key)] = await client.coordinator_lookup(kind, key)
                return await client.send(node, request, group=ConnectionGroup.COORDINATION)
            except RETRIABLE:
                self._nodes.pop((kind, key), None)
                await asyncio.sleep(RETRY_SECONDS)

    def answered(self, kind: int, key: str, codes: set[int]) -> None:
        """Forget the coordinator if it answered that it is not (or not yet) one."""
        if codes & NOT_COORDINATOR_CODES:
            self._nodes.pop((kind, key), None)


def _retriable(code: int) -> bool:
    return bool(code) and issubclass(for_code(code), RETRIABLE)


def _raise_for(code: int) -> None:
    if code:
        raise for_code(code)()


async def _end_offsets(
    client: Any, tps: list[TopicPartition], read_committed: bool
) -> dict[TopicPartition, int]:
    """The end offsets of `tps`: the last stable offset if `read_committed`, else the
    log end (ListOffsets, latest, from each partition's leader). A partition of a topic
    that does not exist (an older worker's) is left out: nothing is open on it."""
    while True:
        found, moved = await _ask_leaders(client, tps, read_committed)
        if not moved:
            return found
        # A leader not (yet) known or moved, as for a topic just created.
        await client.force_metadata_update()
        await asyncio.sleep(POLL_SECONDS)


async def _ask_leaders(
    client: Any, tps: list[TopicPartition], read_committed: bool
) -> tuple[dict[TopicPartition, int], bool]:
    by_leader: dict[int, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    if any(_leader(client, tp) is None for tp in tps):
        await client.force_metadata_update()
    for tp in tps:
        leader = _leader(client, tp)
        if leader is not None:
            by_leader[leader][tp.topic].append((tp.partition, -1))
    found: dict[TopicPartition, int] = {}
    moved = False
    for leader, topics in by_leader.items():
        request = OffsetRequest(-1, 1 if read_committed else 0, list(topics.items()))
        response = await client.send(leader, request)
        for topic, parts in response.topics:
            for part in parts:
                # (partition, error code, timestamp, offset[, leader epoch])
                partition, code, offset = part[0], part[1], part[3]
                if code in LEADER_MOVED_CODES:
                    moved = True
                elif code != UNKNOWN_TOPIC_OR_PARTITION:
                    _raise_for(code)
                    found[TopicPartition(topic, partition)] = offset
    return found, moved


def _leader(client: Any, tp: TopicPartition) -> int | None:
    leader = client.cluster.leader_for_partition(tp)
    return None if leader is None or leader < 0 else int(leader)
