"""Every reach into Faust's, mode's and aiokafka's private members, in one place.

Written against faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0
(requirements.lock): `VERSIONS`. Each private member used here is listed in `REACHES`
with the reason it is needed, and tests/unit/test_glue.py checks, for the installed
versions, that each still exists where this module expects it (methods with the
parameters the overrides assume). An upgrade that moves one fails that test, not the
fault suite. Everywhere else ruff's SLF rule forbids private access (pyproject.toml).

What the worker needs from the libraries' insides, and why:

- Faust's consumer (`FetchLoop`): its fetch loop, copied from faust-streaming 0.15.3 and
  reshaped (no task per record, a list hand-over for `direct` topics, stale records
  dropped, the commit by count in a task beside it), and its `getmany` (a partition
  at a time, with Faust's `_to_message` and buffered partitions); the commit offset it
  computes (`_new_offset`), which the worker's guard narrows; its gap bookkeeping,
  whose end Faust sets one record too far; the bookkeeping itself (acked offsets,
  gaps, read and committed offsets), which the guard reads.
- Faust's consumer thread (`ConsumerThread`): the aiokafka consumer it builds, which
  Faust gives no way to configure (fetch wait, isolation level), and aiokafka's
  fetcher, whose seeks are counted so that a fetch that came back before a seek can be
  told stale. And the thread itself, left out (`MainLoopConsumer`): aiokafka runs on
  the worker's loop, with mode's thread service started and stopped as a plain one.
- Faust's app: its HTTP client, closed by tests that never start the app; the tasks and
  timers it starts with, and the blueprints its web server serves (tests check them).
- A Faust table's changelog topic, built again once the table's serializers are set
  (`use_codecs`); mode's crash of a service (`crash`); aiokafka's cluster
  metadata (`fetch_metadata`); the table manager's recovery, absent from its type.
- aiokafka's producer: the sequence numbers of a batch the broker refused, taken back
  (`unnumber`), so that the batches after it are not refused as out of order. And its
  sender, taught Kafka's transactions v2 (`transactions_v2.py`): a round's transaction
  in two requests where aiokafka sends three; and a round's transaction sent straight
  (`rounds.py`), its batches numbered and built outside aiokafka's accumulator.
- aiokafka's fetcher and requests: each fetch it plans, and each round's produce, coded
  by hand (`codecs.py`, processor/kafka/protocol.py) in place of its generic schemas.

The worker's policy (what is taken, refused, staged) stays in processor/worker/consumer.py,
which subclasses `FetchLoop` and fills in its hooks (`hand_over`, `drop_stale`,
`commit_offset`). The glue is this package: here the list and the single reaches, in
`driver.py` Faust's aiokafka driver reshaped (`ConsumerThread`, `MainLoopConsumer`,
`FetchLoop`), in `transactions_v2.py` aiokafka's transactional producer speaking v2
(`TransactionsV2Producer`). It imports nothing of ours but `processor.kafka.stepping` and
`processor.kafka.protocol`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import faust
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import AIOKafkaConnection
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition
from faust.tables.base import Collection
from faust.transport.consumer import Consumer as FaustBaseConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import AppT
from faust.web.base import Web as FaustWeb
from mode import Service
from mode.threads import ServiceThread

from processor.kafka.glue.driver import (
    CONSUMER_STATE,
    ConsumerThread,
    Fetched,
    FetchLoop,
    MainLoopConsumer,
    committed_offsets,
    set_consumer_state,
)
from processor.kafka.glue.pending import pending_records
from processor.kafka.glue.rounds import (
    Batch,
    RoundRefused,
    end_round,
    pack_group,
    produce_round,
)
from processor.kafka.glue.transactions_v2 import TransactionsV2Producer

__all__ = [
    "CONSUMER_STATE",
    "REACHES",
    "VERSIONS",
    "Batch",
    "ConsumerThread",
    "FetchLoop",
    "Fetched",
    "MainLoopConsumer",
    "Reach",
    "RoundRefused",
    "TransactionsV2Producer",
    "app_tasks",
    "close_http_client",
    "committed_offsets",
    "crash",
    "enabled_blueprints",
    "end_round",
    "fetch_metadata",
    "pack_group",
    "pending_records",
    "produce_round",
    "producer_id",
    "recovery_of",
    "set_consumer_state",
    "speaks_v2",
    "unnumber",
    "use_codecs",
]
VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


@dataclass(frozen=True)
class Reach:
    """One private member this module uses.

    A "method" is looked up on `owner` and, with `params`, its parameter names are
    compared (an override assumes them). An "attribute" is an instance attribute that
    `owner.<set_in>` assigns; a "class attribute" one with a default on `owner`.
    """

    owner: type[Any]
    name: str
    kind: Literal["method", "attribute", "class attribute"]
    why: str
    params: tuple[str, ...] | None = None
    set_in: str = "__init__"


_C = FaustBaseConsumer
_AC = faust_aiokafka.Consumer
_T = faust_aiokafka.AIOKafkaConsumerThread
_SELF = ("self",)
_S = aiokafka_sender.Sender
_PH = aiokafka_sender.SendProduceReqHandler
_EH = aiokafka_sender.EndTxnHandler
_TM = TransactionManager
_GET_CONN = ("self", "node_id", "group", "no_hint")

REACHES: tuple[Reach, ...] = (
    # Faust's consumer: overridden.
    Reach(_C, "_drain_messages", "method", "the fetch loop", ("self", "fetcher")),
    Reach(_C, "_wait_next_records", "method", "a fetch's seek count", ("self", "timeout")),
    Reach(
        _C,
        "_add_gap",
        "method",
        "a gap ends before its record",
        ("self", "tp", "offset_from", "offset_to"),
    ),
    Reach(_C, "_new_offset", "method", "the guard narrows the commit", ("self", "tp")),
    Reach(_AC, "_to_message", "method", "getmany a partition at a time", ("self", "tp", "record")),
    Reach(_AC, "_new_consumer_thread", "method", "to build our consumer thread", _SELF),
    # Faust's consumer: read.
    Reach(_C, "_get_active_partitions", "method", "a seek pauses them", _SELF),
    Reach(_C, "_acked", "attribute", "the guard holds acks past a refusal"),
    Reach(_C, "_acked_index", "attribute", "acks of a partition at once (`ack_offsets`)"),
    Reach(_C, "_gap", "attribute", "a known gap at the committed offset"),
    Reach(_C, "_buffered_partitions", "attribute", "getmany's active-partition filter"),
    Reach(_C, "_read_offset", "attribute", "the fetch loop; off by one after a seek"),
    Reach(_C, "_committed_offset", "attribute", "lag, deliveries, the head check"),
    Reach(_C, "_commit_every", "attribute", "the fetch loop's commit by count"),
    Reach(_C, "_waiting_for_ack", "attribute", "acks of a partition at once wake it too"),
    Reach(_C, "_unacked_messages", "attribute", "what `unacked` reads (unit tests)"),
    Reach(_C, "_n_acked", "class attribute", "the fetch loop's commit by count"),
    Reach(_AC, "_thread", "attribute", "our consumer thread"),
    # mode's service: the fetch loop stops on these; a failed hand-over crashes the app.
    Reach(Service, "_stopped", "attribute", "the fetch loop stops with the consumer"),
    Reach(Service, "_crashed", "attribute", "set with `_stopped` (unit tests)"),
    Reach(Service, "_crash", "method", "crash policy: restart, read again", ("self", "reason")),
    # mode's thread service, run on the main loop (`MainLoopConsumer`).
    Reach(Service, "_default_start", "method", "start as a plain service", _SELF),
    Reach(Service, "_started", "attribute", "start and stop once"),
    Reach(Service, "_shutdown", "attribute", "set where the thread set it"),
    Reach(Service, "_default_stop_children", "method", "as the thread ended", _SELF),
    Reach(Service, "_default_stop_futures", "method", "as the thread ended", _SELF),
    Reach(Service, "_default_stop_exit_stacks", "method", "as the thread ended", _SELF),
    Reach(ServiceThread, "_thread_keepalive", "method", "turned the thread's loop (a task)"),
    # Faust's consumer thread.
    Reach(
        _T,
        "_create_worker_consumer",
        "method",
        "fetch wait and size, isolation",
        ("self", "transport"),
    ),
    Reach(
        _T,
        "_fetch_records",
        "method",
        "to tag each fetch with the seek count",
        ("self", "consumer", "active_partitions", "timeout", "max_records"),
    ),
    Reach(_T, "_ensure_consumer", "method", "the aiokafka consumer", _SELF),
    # aiokafka.
    Reach(AIOKafkaConsumer, "_fetch_max_wait_ms", "attribute", "read when the fetcher is built"),
    Reach(AIOKafkaConsumer, "_fetch_min_bytes", "attribute", "read when the fetcher is built"),
    Reach(AIOKafkaConsumer, "_isolation_level", "attribute", "read when the fetcher is built"),
    Reach(AIOKafkaConsumer, "_fetcher", "attribute", "its seeks are counted", set_in="start"),
    # Its fetches coded by hand (`codecs.py`).
    Reach(
        Fetcher,
        "_get_actions_per_node",
        "method",
        "its requests made quick",
        ("self", "assignment"),
    ),
    Reach(FetchRequest, "_max_wait_ms", "attribute", "a quick fetch's copy"),
    Reach(FetchRequest, "_min_bytes", "attribute", "a quick fetch's copy"),
    Reach(FetchRequest, "_max_bytes", "attribute", "a quick fetch's copy"),
    Reach(FetchRequest, "_isolation_level", "attribute", "a quick fetch's copy"),
    Reach(FetchRequest, "_rack_id", "attribute", "a quick fetch's copy"),
    Reach(AIOKafkaConsumer, "_client", "attribute", "cluster metadata; pending records' fetch"),
    Reach(AIOKafkaProducer, "_txn_manager", "attribute", "a refused batch's numbers taken back"),
    # aiokafka's producer speaking transactions v2 (`transactions_v2.py`).
    Reach(AIOKafkaProducer, "_sender", "attribute", "replaced by the v2 sender"),
    Reach(AIOKafkaProducer, "_message_accumulator", "attribute", "the v2 sender drains it"),
    Reach(_S, "_txn_manager", "attribute", "the transaction's id, producer id and epoch"),
    Reach(_S, "_acks", "attribute", "a v12 produce's acks"),
    Reach(_S, "_retry_backoff", "attribute", "the v2 sender is built like the one it replaces"),
    Reach(_S, "_request_timeout_ms", "attribute", "a v12 produce's timeout"),
    Reach(_S, "_in_flight", "attribute", "a produce's node is free again when answered"),
    Reach(_S, "_muted_partitions", "attribute", "its partitions too"),
    Reach(_S, "_message_accumulator", "attribute", "flushed before EndTxn"),
    Reach(_S, "_maybe_wait_for_pid", "method", "a v2 sender starts with a producer id", _SELF),
    Reach(
        _S,
        "_find_coordinator",
        "method",
        "whose broker's versions decide v2",
        ("self", "coordinator_type", "coordinator_key"),
    ),
    Reach(_S, "_maybe_do_transactional_request", "method", "no AddPartitionsToTxn", _SELF),
    Reach(_S, "_send_produce_req", "method", "a v12 produce", ("self", "node_id", "batches")),
    Reach(_S, "_do_txn_commit", "method", "a v5 EndTxn", ("self", "commit_result")),
    Reach(_PH, "_batches", "attribute", "the batches of a v12 produce"),
    Reach(_PH, "_sender", "attribute", "its sender", set_in="__init__"),
    Reach(_PH, "_default_backoff", "attribute", "short after CONCURRENT_TRANSACTIONS"),
    Reach(_PH, "_can_retry", "method", "CONCURRENT_TRANSACTIONS is", ("self", "error", "batch")),
    Reach(_EH, "_commit_result", "attribute", "commit or abort"),
    Reach(_TM, "_pid_and_epoch", "attribute", "the epoch EndTxn v5 returns"),
    Reach(_TM, "_sequence_numbers", "attribute", "start again under a new epoch"),
    Reach(AIOKafkaClient, "_get_conn", "method", "the coordinator's connection", _GET_CONN),
    # A round's transaction sent straight (`rounds.py`).
    Reach(
        BatchBuilder,
        "_set_producer_state",
        "method",
        "a batch numbered outside the accumulator",
        ("self", "producer_id", "producer_epoch", "base_sequence"),
    ),
    Reach(BatchBuilder, "_build", "method", "its bytes for a produce of our own", _SELF),
    Reach(BatchBuilder, "_builder", "attribute", "the C builder fed straight (`pack_group`)"),
    Reach(BatchBuilder, "_relative_offset", "attribute", "the count `pack_group` appended"),
    Reach(BatchBuilder, "_key_serializer", "attribute", "`pack_group` takes bytes only"),
    Reach(BatchBuilder, "_value_serializer", "attribute", "`pack_group` takes bytes only"),
    Reach(
        _S,
        "_coordinator_dead",
        "method",
        "EndTxn found the coordinator moved",
        ("self", "coordinator_type"),
    ),
    Reach(AIOKafkaConnection, "_versions", "attribute", "its broker's ApiVersions answer"),
    # Faust's app and web server (tests end apps they never started, and check them).
    Reach(faust.App, "_maybe_close_http_client", "method", "close its HTTP client", _SELF),
    Reach(faust.App, "_app_tasks", "attribute", "the tasks and timers it starts with"),
    Reach(FaustWeb, "_enabled_blueprints", "method", "the blueprints it serves", _SELF),
    # Faust's table.
    Reach(
        Collection,
        "_new_changelog_topic",
        "method",
        "the changelog topic must name our codecs",
        ("self", "retention", "compacting", "deleting"),
    ),
)

# ---- single reaches ------------------------------------------------------------------


def use_codecs(table: Any, key_serializer: str, value_serializer: str) -> None:
    """Make `table` send and recover with these registered codecs.

    Faust picks a table's changelog codecs from its key and value types ("json" for
    anything but a faust.Record) and takes no serializer arguments: sends read the
    table's attributes, recovery decodes with its changelog topic, which the table
    built in its __init__ from the serializers it had then. So both are set here, and
    the topic built again.
    """
    table.key_serializer = key_serializer
    table.value_serializer = value_serializer
    table.changelog_topic = table._new_changelog_topic()


def crash(service: Any, exc: BaseException) -> None:
    """Crash a mode service (the app) as mode does for an uncaught error: it stops."""
    service._crash(exc)


def recovery_of(app: AppT) -> Any | None:
    """The app's table recovery service (None before the tables are set up).

    `TableManager.recovery` is public but not part of `TableManagerT`.
    """
    recovery: Any | None = getattr(app.tables, "recovery", None)
    return recovery


async def fetch_metadata(consumer: AIOKafkaConsumer) -> Any:
    """The cluster's metadata for every topic (`ClusterMetadata`), fetched now.

    aiokafka's consumer offers partitions of subscribed topics only; its client asks
    for all of them.
    """
    return await consumer._client.fetch_all_metadata()


async def close_http_client(app: faust.App) -> None:
    """Close the app's HTTP client if it made one (as its stop does)."""
    await app._maybe_close_http_client()


def app_tasks(app: faust.App) -> list[Callable[[], Awaitable[Any]]]:
    """The tasks and timers the app starts with, in the order they were registered."""
    return list(app._app_tasks)


def enabled_blueprints(web: Any) -> list[tuple[str, Any]]:
    """The (URL prefix, blueprint) pairs Faust's web server serves."""
    return list(web._enabled_blueprints())


def producer_id(producer: AIOKafkaProducer) -> int:
    """The producer id a started transactional producer writes under (-1 before its
    first InitProducerId)."""
    pid: int = producer._txn_manager.producer_id
    return pid


def speaks_v2(producer: object) -> bool:
    """Whether `producer` commits with transactions v2 (a started `TransactionsV2Producer`
    on a cluster that has them)."""
    return isinstance(producer, TransactionsV2Producer) and producer.transactions_v2


def unnumber(producer: AIOKafkaProducer, topic: str, partition: int, records: int) -> None:
    """Take back the sequence numbers of `records` records of a batch the broker refused
    (appended nothing of) on that partition.

    aiokafka numbers a batch's records as it sends it and keeps the numbers when the
    broker refuses the batch, which expects them again: every later batch of the
    producer to that partition would be refused as out of order. (Java's producer takes
    them back: `TransactionManager.adjustSequencesDueToFailedBatch`.)
    """
    if speaks_v2(producer):
        return  # the abort before this bumped the epoch: the numbers start again from 0
    producer._txn_manager.increment_sequence_number(TopicPartition(topic, partition), -records)
