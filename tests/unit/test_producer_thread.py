"""ThreadedPublisher (processor/worker/producer_thread.py): the transactional publisher's
work on a thread of its own, awaited from the worker's loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from processor.worker.producer_thread import SWITCH_INTERVAL_SECONDS, ThreadedPublisher, new_loop
from processor.worker.publisher import TransactionalPublisher
from processor.worker.records import Out
from tests.support.producers import FakeProducer


class ThreadNoting(FakeProducer):
    """Notes the thread each transaction step runs on; refuses commits when told."""

    def __init__(self, transactional_id: str, log: list[tuple[str, str]]) -> None:
        super().__init__(transactional_id, log)
        self.refuse_commit = False

    async def begin_transaction(self) -> None:
        await super().begin_transaction()
        self.log.append((self.id, f"on {threading.current_thread().name}"))

    async def commit_transaction(self) -> None:
        if self.refuse_commit:
            raise RuntimeError("the broker refused the commit")
        await super().commit_transaction()


def rig() -> tuple[ThreadedPublisher, list[tuple[str, str]], dict[str, ThreadNoting]]:
    log: list[tuple[str, str]] = []
    producers: dict[str, ThreadNoting] = {}

    def make(tid: str) -> ThreadNoting:
        producers[tid] = ThreadNoting(tid, log)
        log.append((tid, f"made on {threading.current_thread().name}"))
        return producers[tid]

    inner = TransactionalPublisher("app", make, partitions=4)
    return ThreadedPublisher(inner, name="producers-under-test"), log, producers


def ledger(p: int) -> Out:
    return Out("ledger", bytes([p]), b"entry", partition=p, owner=p)


async def test_a_round_is_produced_and_committed_on_the_producer_thread() -> None:
    pub, log, _ = rig()
    await pub.assign(range(4), generation=1)
    thread = pub.thread
    assert thread is not None and thread.is_alive() and thread is not threading.current_thread()
    assert pub.atomic and pub.routes == dict.fromkeys(range(4), "app-g1.0")
    assert {what for _, what in log if what.startswith("made on")} == {
        "made on producers-under-test"
    }
    log.clear()
    await pub.publish([ledger(p) for p in range(4)])
    assert log[0] == ("app-g1.0", "begin")
    assert log[1] == ("app-g1.0", "on producers-under-test")
    assert [what for _, what in log if what.startswith("send")] == [
        f"send ledger[{p}] [b'entry']" for p in range(4)
    ]
    assert log[-1] == ("app-g1.0", "commit")
    await pub.stop()


async def test_a_failed_commit_reaches_the_caller_and_the_thread_goes_on() -> None:
    pub, log, producers = rig()
    await pub.assign(range(4), generation=1)
    producers["app-g1.0"].refuse_commit = True
    with pytest.raises(RuntimeError, match="refused the commit"):
        await pub.publish([ledger(0)])
    assert ("app-g1.0", "abort") not in log  # the commit itself failed: the caller crashes
    producers["app-g1.0"].refuse_commit = False
    await pub.publish([ledger(1)])
    assert log[-1] == ("app-g1.0", "commit")
    await pub.stop()


async def test_stop_stops_the_producers_and_ends_the_thread() -> None:
    pub, log, _ = rig()
    await pub.stop()  # never started: nothing to stop
    assert pub.thread is None and log == []
    await pub.assign({0, 1}, generation=1)
    first = pub.thread
    assert first is not None
    await pub.stop()
    assert not first.is_alive() and pub.thread is None
    assert ("app-g2.0", "stop") in log
    # A later call starts the thread again (a worker stopped and started in one process).
    await pub.assign({2, 3}, generation=2)
    second = pub.thread
    assert second is not None and second.is_alive() and second is not first
    await pub.release({2})
    assert pub.partitions == {3}
    await pub.stop()
    assert not second.is_alive()


async def test_rounds_and_a_reassignment_asked_together_do_not_interleave() -> None:
    pub, log, _ = rig()
    await pub.assign(range(4), generation=1)
    log.clear()
    await asyncio.gather(
        pub.publish([ledger(0)]), pub.assign({0, 1}, generation=2), pub.publish([ledger(1)])
    )
    steps = [(tid, what) for tid, what in log if what in {"begin", "commit", "start", "stop"}]
    # Each transaction's begin is followed by its commit before anything else.
    for i, (tid, what) in enumerate(steps):
        if what == "begin":
            assert steps[i + 1] == (tid, "commit")
    assert [what for _, what in steps].count("commit") == 2
    assert pub.routes == dict.fromkeys((0, 1), "app-b2.0")
    await pub.stop()


def test_the_loop_kinds_and_the_switch_interval() -> None:
    import uvloop

    for kind, expected in (("uvloop", uvloop.Loop), ("asyncio", asyncio.AbstractEventLoop)):
        loop = new_loop(kind)  # type: ignore[arg-type]
        try:
            assert isinstance(loop, expected)
        finally:
            loop.close()
    # Shorter than a round's requests (about a millisecond each): the worker's loop hands
    # the interpreter over to an answer that waits in time.
    assert 0 < SWITCH_INTERVAL_SECONDS <= 0.002
