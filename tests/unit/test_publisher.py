"""TransactionalPublisher (processor/worker/publisher.py) with producers that record calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import RecordListTooLargeError

from processor.worker.publisher import TransactionalPublisher, transactional_producer
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


def rig() -> tuple[TransactionalPublisher, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    return TransactionalPublisher("app", lambda tid: FakeProducer(tid, log)), log


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
    async def crash(partition: int) -> None:
        raise RuntimeError(f"fenced on {partition}")

    pub = TransactionalPublisher("app", lambda tid: FakeProducer(tid, []), before_commit=crash)
    await pub.assign({0})
    with pytest.raises(RuntimeError, match="fenced on 0"):
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
    """The broker refuses a batch of more than one record: the topic's
    max.message.bytes was lowered after the worker sized its batches."""

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> Any:
        done = await super().send_batch(batch, topic, partition)
        if len(batch.records) > 1:
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(RecordListTooLargeError())
            return refused
        return done


async def test_a_batch_refused_as_too_large_goes_again_one_record_a_batch() -> None:
    log: list[tuple[str, str]] = []
    pub = TransactionalPublisher("app", lambda tid: ShrunkTopic(tid, log))
    await pub.assign({0}, generation=1)
    log.clear()
    await pub.publish([Out("ledger", b"a", v, partition=0, owner=0) for v in (b"1", b"2", b"3")])
    assert [what for _, what in log] == [
        "begin",
        "send ledger[0] [b'1', b'2', b'3']",
        "abort",
        "stop",
        "start",  # a new epoch: aiokafka does not take back the refused batch's numbers
        "begin",
        "send ledger[0] [b'1']",
        "send ledger[0] [b'2']",
        "send ledger[0] [b'3']",
        "commit",
    ]
