"""TransactionalPublisher (processor/worker/publisher.py) with producers that record calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber, RecordListTooLargeError

from processor.worker.publisher import (
    TRANSACTION_LEVELS,
    TransactionalPublisher,
    transaction_routes,
    transactional_producer,
)
from processor.worker.records import Out
from processor.worker.sizing import Limits


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[bytes | None] = []

    def append(self, *, key: Any, value: bytes | None, timestamp: Any, headers: Any) -> object:
        self.records.append(value)
        return object()

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    def __init__(self, transactional_id: str, log: list[tuple[str, str]]) -> None:
        self.id = transactional_id
        self.log = log

    async def start(self) -> None:
        self.log.append((self.id, "start"))

    async def stop(self) -> None:
        self.log.append((self.id, "stop"))

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> Any:
        self.log.append((self.id, f"send {topic}[{partition}] {batch.records}"))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def begin_transaction(self) -> None:
        self.log.append((self.id, "begin"))

    async def commit_transaction(self) -> None:
        self.log.append((self.id, "commit"))

    async def abort_transaction(self) -> None:
        self.log.append((self.id, "abort"))


def rig(partitions: int | None = None) -> tuple[TransactionalPublisher, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    pub = TransactionalPublisher("app", lambda tid: FakeProducer(tid, log), partitions=partitions)
    return pub, log


def test_partition_numbers_share_the_coarsest_transaction_group_owned_whole() -> None:
    assert TRANSACTION_LEVELS == (1, 2, 3, 4)
    every = frozenset(range(12))
    # Alone on every partition: one transaction a round.
    routes, fenced = transaction_routes("app", every, 12)
    assert set(routes.values()) == {"app-g1.0"}
    assert fenced == {
        *(f"app-p{p}" for p in range(12)),
        *(f"app-g{k}.{r}" for k in (1, 2, 3, 4) for r in range(k)),
        *(f"app-b{k}.{b}" for k in (2, 3, 4) for b in range(k)),
    }
    # Faust's round robin over k workers gives each the groups of level k, whole.
    for k in (2, 3, 4):
        for r in range(k):
            routes, _ = transaction_routes("app", frozenset(range(r, 12, k)), 12)
            assert set(routes.values()) == {f"app-g{k}.{r}"}
    # A worker that joins one owning everything: Faust's sticky assignment hands it the
    # lowest partition numbers and keeps the rest, contiguous blocks either way.
    for k in (2, 3, 4):
        size = 12 // k
        for b in range(k):
            block = frozenset(range(b * size, (b + 1) * size))
            routes, _ = transaction_routes("app", block, 12)
            assert set(routes.values()) == {f"app-b{k}.{b}"}
    # Blocks of a count that k does not divide: the last one is shorter.
    routes, fenced = transaction_routes("app", frozenset({8, 9}), 10)
    assert routes == {8: "app-b3.2", 9: "app-b3.2"}
    assert {"app-b4.2", "app-b4.3"} <= fenced and "app-b4.1" not in fenced
    # A group split between workers: the coarsest group still whole, else alone, and
    # every group's id fenced all the same (an earlier owner may have used it).
    routes, fenced = transaction_routes("app", frozenset({0, 1, 5, 9}), 12)
    assert routes == {0: "app-p0", 1: "app-g4.1", 5: "app-g4.1", 9: "app-g4.1"}
    assert {"app-g1.0", "app-g2.0", "app-g3.0", "app-g4.0", "app-g2.1"} <= fenced
    assert {"app-b2.0", "app-b3.0", "app-b4.0", "app-b4.1", "app-b2.1", "app-b4.3"} <= fenced
    # No partition count: a transaction per partition number, as before groups.
    routes, fenced = transaction_routes("app", frozenset({0, 4}), None)
    assert routes == {0: "app-p0", 4: "app-p4"} and fenced == {"app-p0", "app-p4"}


async def test_a_worker_owning_every_partition_commits_a_round_in_one_transaction() -> None:
    pub, log = rig(partitions=8)
    await pub.assign(range(8), generation=1)
    # Every id is started (fenced); all but the one used are stopped again.
    started = {tid for tid, what in log if what == "start"}
    assert {f"app-p{p}" for p in range(8)} | {"app-g1.0", "app-g2.1", "app-g4.3"} <= started
    assert {tid for tid, what in log if what == "stop"} == started - {"app-g1.0"}
    log.clear()
    await pub.publish([Out("ledger", bytes([p]), b"x", partition=p, owner=p) for p in range(8)])
    assert [tid for tid, what in log if what == "commit"] == ["app-g1.0"]
    assert {what for tid, what in log if what.startswith("send")} == {
        f"send ledger[{p}] [b'x']" for p in range(8)
    }


async def test_a_revoke_splitting_a_group_stops_its_producer_and_the_rest_go_on_alone() -> None:
    pub, log = rig(partitions=4)
    await pub.assign(range(4), generation=1)
    log.clear()
    await pub.release({3})
    # The next owner of 3 fences app-g1.0: this worker no longer commits under it.
    assert log == [
        ("app-g1.0", "stop"),
        ("app-p0", "start"),
        ("app-p1", "start"),
        ("app-p2", "start"),
    ]
    assert pub.routes == {0: "app-p0", 1: "app-p1", 2: "app-p2"}
    log.clear()
    await pub.publish([Out("timer", b"t", b"tick", owner=p) for p in (0, 3)])
    assert [tid for tid, what in log if what == "commit"] == ["app-p0"]


async def test_each_partition_number_commits_its_own_records_in_one_transaction() -> None:
    pub, log = rig()
    await pub.assign({0, 2}, generation=1)
    log.clear()
    await pub.publish(
        [
            Out("ledger", b"a", b"1", owner=0),
            Out("changelog", b"a", b"2", partition=0, state=True, owner=0),
            Out("ledger", b"b", b"3", owner=2),
        ]
    )
    p0 = [what for tid, what in log if tid == "app-p0"]
    assert p0[0] == "begin" and p0[-1] == "commit" and len(p0) == 4
    assert [what for tid, what in log if tid == "app-p2"][::2] == ["begin", "commit"]


async def test_records_of_a_partition_not_owned_are_not_produced() -> None:
    pub, log = rig()
    await pub.assign({0}, generation=1)
    log.clear()
    await pub.publish([Out("timer", b"t", b"tick", owner=3)])
    assert log == []


async def test_every_assignment_starts_fresh_producers_once_per_generation() -> None:
    pub, log = rig()
    await pub.assign({0, 1}, generation=1)
    await pub.assign({0, 1}, generation=1)  # the second table's store: nothing again
    assert log == [("app-p0", "start"), ("app-p1", "start")]
    log.clear()
    # A new generation: even a kept partition's producer is started anew, since a
    # successor may have fenced it meanwhile (this worker was a zombie).
    await pub.assign({1}, generation=2)
    assert log == [("app-p0", "stop"), ("app-p1", "stop"), ("app-p1", "start")]
    assert pub.partitions == frozenset({1})


async def test_a_failing_commit_fails_the_publish() -> None:
    async def crash(transactional_id: str) -> None:
        raise RuntimeError(f"fenced on {transactional_id}")

    pub = TransactionalPublisher("app", lambda tid: FakeProducer(tid, []), before_commit=crash)
    await pub.assign({0})
    with pytest.raises(RuntimeError, match="fenced on app-p0"):
        await pub.publish([Out("ledger", b"a", b"1", owner=0)])


def test_the_transaction_retry_backoff_aiokafka_hides_is_still_where_we_set_it() -> None:
    from aiokafka.producer import sender

    # A moved or renamed constant would leave every round paying aiokafka's 20 ms.
    assert isinstance(sender.BACKOFF_OVERRIDE, float)
    rig()
    assert sender.BACKOFF_OVERRIDE == 0.002


async def test_a_revoke_stops_its_producers_and_the_next_assignment_starts_them_again() -> None:
    pub, log = rig()
    await pub.assign({0, 1}, generation=1)
    await pub.release({1})
    assert pub.partitions == frozenset({0})
    log.clear()
    await pub.publish([Out("timer", b"t", b"tick", owner=1)])  # staged before the revoke
    assert log == []
    await pub.assign({0, 1}, generation=2)
    assert ("app-p1", "start") in log


async def test_a_busy_partitions_round_fits_one_record_batch() -> None:
    # aiokafka sends one batch per partition in a request and keeps one request in
    # flight: each further batch of a round waited a round trip (docs/performance.md).
    ledger_entry = b"e" * 400
    round_of_one_partition = 2_000

    def batches(producer: Any) -> int:
        batch, count = producer.create_batch(), 1
        for _ in range(round_of_one_partition):
            if batch.append(key=b"tenant", value=ledger_entry, timestamp=None, headers=[]) is None:
                batch, count = producer.create_batch(), count + 1
        return count

    ours = transactional_producer("127.0.0.1:1", "app-p0", Limits().batch_bytes(), {})
    assert batches(ours) == 1
    # What aiokafka's default batch size (16 KiB) made of it.
    assert batches(transactional_producer("127.0.0.1:1", "app-p0", 16 * 1024, {})) > 40


class ShrunkTopic(FakeProducer):
    """The broker refuses a batch of more than one record, or the record b"huge", as too
    large (the topic's max.message.bytes was lowered after the worker sized its
    batches), and every later batch of the partition as out of order: aiokafka numbered
    the refused batch's records and keeps the numbers."""

    def __init__(self, transactional_id: str, log: list[tuple[str, str]]) -> None:
        super().__init__(transactional_id, log)
        self.gap: set[tuple[str, int]] = set()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> Any:
        await super().send_batch(batch, topic, partition)
        failure: Exception | None = None
        if (topic, partition) in self.gap:
            failure = OutOfOrderSequenceNumber()
        elif len(batch.records) > 1 or batch.records == [b"huge"]:
            failure = RecordListTooLargeError()
            self.gap.add((topic, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)
        return done


def shrunk_rig() -> tuple[TransactionalPublisher, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    producers: list[ShrunkTopic] = []

    def make(tid: str) -> ShrunkTopic:
        producers.append(ShrunkTopic(tid, log))
        return producers[-1]

    def unnumber(producer: Any, topic: str, partition: int, records: int) -> None:
        # The numbers taken back: the broker accepts the partition's next batch again.
        log.append((producer.id, f"unnumber {topic}[{partition}] {records}"))
        producer.gap.discard((topic, partition))

    def stand_in(out: Out) -> Out:
        return Out(out.topic, out.key, b"minimal", partition=out.partition, owner=out.owner)

    return TransactionalPublisher("app", make, fallback=stand_in, unnumber=unnumber), log


async def test_a_batch_refused_as_too_large_goes_again_one_record_a_batch() -> None:
    pub, log = shrunk_rig()
    await pub.assign({0}, generation=1)
    log.clear()
    await pub.publish(
        [
            *(Out("ledger", b"a", v, partition=0, owner=0) for v in (b"1", b"2", b"3")),
            Out("changelog", b"a", b"c", partition=0, state=True, owner=0),
        ]
    )
    assert [what for _, what in log] == [
        "begin",
        "send ledger[0] [b'1', b'2', b'3']",
        "send changelog[0] [b'c']",
        "abort",
        "unnumber ledger[0] 3",
        "begin",
        "send ledger[0] [b'1']",
        "send ledger[0] [b'2']",
        "send ledger[0] [b'3']",
        "send changelog[0] [b'c']",  # only the refused partition's records go one a batch
        "commit",
    ]


async def test_batches_after_a_refused_one_go_again_with_its_stand_in() -> None:
    # One record alone too large: the partition's batches after it were refused as out
    # of order; all their numbers are taken back and they go again, unchanged.
    pub, log = shrunk_rig()
    await pub.assign({0}, generation=1)
    log.clear()
    values = (b"1", b"huge", b"3")
    await pub.publish([Out("ledger", b"a", v, partition=0, owner=0) for v in values])
    assert [what for _, what in log] == [
        "begin",
        "send ledger[0] [b'1', b'huge', b'3']",
        "abort",
        "unnumber ledger[0] 3",
        "begin",
        "send ledger[0] [b'1']",
        "send ledger[0] [b'huge']",
        "send ledger[0] [b'3']",
        "abort",
        "unnumber ledger[0] 1",
        "unnumber ledger[0] 1",
        "begin",
        "send ledger[0] [b'1']",
        "send ledger[0] [b'minimal']",
        "send ledger[0] [b'3']",
        "commit",
    ]


def test_a_refused_batchs_numbers_are_taken_back_in_aiokafkas_producer() -> None:
    from aiokafka.structs import TopicPartition

    from processor.kafka import glue

    async def numbers() -> tuple[int, int]:
        producer = transactional_producer("127.0.0.1:1", "app-p0", 1024, {})
        manager = producer._txn_manager  # noqa: SLF001 - what glue.unnumber reaches
        tp = TopicPartition("ledger", 0)
        manager.increment_sequence_number(tp, 5)  # a sent batch of five
        manager.increment_sequence_number(tp, 3)  # a refused batch of three
        glue.unnumber(producer, "ledger", 0, 3)
        return manager.sequence_number(tp), manager.sequence_number(TopicPartition("ledger", 1))

    assert asyncio.run(numbers()) == (5, 0)
