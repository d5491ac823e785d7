"""TransactionalPublisher (processor/worker/publisher.py) with producers that record calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from processor.kafka.fence import GroupFenced, Member
from processor.worker.publisher import TransactionalPublisher
from processor.worker.records import Out


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


class FakeFence:
    """Records what the publisher asks of the group fence; `refuse` fails a join."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.refuse = False

    async def enlist(self, producer: Any, transactional_id: str) -> None:
        self.log.append(("fence", f"enlist {transactional_id}"))

    async def commit(
        self, producer: Any, transactional_id: str, member: Member, partitions: Iterable[int]
    ) -> None:
        self.log.append(("fence", f"join {transactional_id} as {member} {sorted(partitions)}"))
        if self.refuse:
            raise GroupFenced("refused")

    async def settled(self, producer: Any, partitions: set[int]) -> None:
        self.log.append(("fence", f"settled {sorted(partitions)}"))


class Rig:
    def __init__(self, before_commit: Any = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.fence = FakeFence(self.log)
        self.generation = 1
        self.pub = TransactionalPublisher(
            "app-worker-w1",
            lambda tid: FakeProducer(tid, self.log),
            self.fence,
            lambda: (self.generation, "member-a"),
            before_commit=before_commit,
        )

    def of_producer(self) -> list[str]:
        return [what for who, what in self.log if who == "app-worker-w1"]


async def test_a_round_is_one_transaction_over_every_partition_with_the_fence_joined() -> None:
    rig = Rig()
    await rig.pub.assign({0, 2}, generation=1)
    rig.log.clear()
    await rig.pub.publish(
        [
            Out("ledger", b"a", b"1", owner=0),
            Out("changelog", b"a", b"2", partition=0, state=True, owner=0),
            Out("ledger", b"b", b"3", owner=2),
        ]
    )
    sent = rig.of_producer()
    assert sent[0] == "begin" and sent[-1] == "commit" and sent.count("begin") == 1
    assert len([s for s in sent if s.startswith("send")]) == 2  # ledger and changelog
    # The group is in the transaction before any of its records is sent (a request of
    # the transaction's meanwhile would be refused as concurrent), and the fence is
    # committed as the member the worker was when it was assigned the partitions.
    first_send = next(i for i, (_, what) in enumerate(rig.log) if what.startswith("send"))
    assert rig.log.index(("fence", "enlist app-worker-w1")) < first_send
    assert ("fence", "join app-worker-w1 as (1, 'member-a') [0, 2]") in rig.log


async def test_records_of_a_partition_not_owned_are_not_produced() -> None:
    rig = Rig()
    await rig.pub.assign({0}, generation=1)
    rig.log.clear()
    await rig.pub.publish([Out("timer", b"t", b"tick", owner=3)])
    assert rig.log == []
    await rig.pub.publish(
        [Out("timer", b"t", b"tick", owner=3), Out("ledger", b"a", b"1", owner=0)]
    )
    assert ("fence", "join app-worker-w1 as (1, 'member-a') [0]") in rig.log


async def test_an_assignment_waits_for_open_transactions_once_per_generation() -> None:
    rig = Rig()
    await rig.pub.assign({0, 1}, generation=1)
    await rig.pub.assign({0, 1}, generation=1)  # the second table's store: nothing again
    assert rig.log == [("app-worker-w1", "start"), ("fence", "settled [0, 1]")]
    rig.log.clear()
    # A new generation: the producer is started anew (this worker may have been a
    # zombie whose producer the broker fenced), and the new member is remembered.
    rig.generation = 2
    await rig.pub.assign({1}, generation=2)
    assert rig.log == [
        ("app-worker-w1", "stop"),
        ("app-worker-w1", "start"),
        ("fence", "settled [1]"),
    ]
    assert rig.pub.partitions == frozenset({1})
    await rig.pub.publish([Out("ledger", b"a", b"1", owner=1)])
    assert ("fence", "join app-worker-w1 as (2, 'member-a') [1]") in rig.log


async def test_a_failing_commit_fails_the_publish() -> None:
    async def crash(partitions: frozenset[int]) -> None:
        raise RuntimeError(f"crashed before committing {sorted(partitions)}")

    rig = Rig(before_commit=crash)
    await rig.pub.assign({0})
    with pytest.raises(RuntimeError, match=r"committing \[0\]"):
        await rig.pub.publish([Out("ledger", b"a", b"1", owner=0)])


async def test_a_transaction_the_group_refuses_is_aborted_and_fails_the_publish() -> None:
    rig = Rig()
    await rig.pub.assign({0}, generation=1)
    rig.fence.refuse = True
    with pytest.raises(GroupFenced):
        await rig.pub.publish([Out("ledger", b"a", b"1", owner=0)])
    sent = rig.of_producer()
    assert sent[-1] == "abort" and "commit" not in sent


def test_the_transaction_retry_backoff_aiokafka_hides_is_still_where_we_set_it() -> None:
    from aiokafka.producer import sender

    # A moved or renamed constant would leave every round paying aiokafka's 20 ms.
    assert isinstance(sender.BACKOFF_OVERRIDE, float)
    Rig()
    assert sender.BACKOFF_OVERRIDE == 0.002


async def test_a_revoke_stops_producing_for_it_and_the_next_assignment_owns_it_again() -> None:
    rig = Rig()
    await rig.pub.assign({0, 1}, generation=1)
    await rig.pub.release({1})
    assert rig.pub.partitions == frozenset({0})
    rig.log.clear()
    await rig.pub.publish([Out("timer", b"t", b"tick", owner=1)])  # staged before the revoke
    assert rig.log == []
    await rig.pub.assign({0, 1}, generation=2)
    assert rig.pub.partitions == frozenset({0, 1})
    assert ("fence", "settled [0, 1]") in rig.log
