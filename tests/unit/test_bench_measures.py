"""The latency phase's p99 second by second shows when in the phase the tail came, and
the ceiling's loop does not pay for the harness's collector."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bench import measures
from bench.measures import p99_by_second
from processor.kafka import glue


def test_each_second_of_sends_gets_its_own_p99_and_only_acked_reads_count() -> None:
    # Second 0: 100 records at 10 ms, one at 90; second 2: 100 at 200 ms; second 1: none.
    sent = {f"a{i}": 100.0 + i / 1000 for i in range(101)}
    sent |= {f"c{i}": 102.0 + i / 1000 for i in range(100)}
    arrived = {e: t + 0.010 for e, t in sent.items() if e.startswith("a")}
    arrived["a100"] = sent["a100"] + 0.090
    arrived |= {e: t + 0.200 for e, t in sent.items() if e.startswith("c")}
    sent["x"] = 100.5  # sent and read, but never acknowledged: not counted
    arrived["x"] = 101.5
    acked = set(sent) - {"x"}

    by_second = p99_by_second(sent, arrived, acked)

    assert by_second == [10.0, 0.0, 200.0]


def test_a_phase_with_nothing_read_has_no_seconds() -> None:
    assert p99_by_second({"a": 1.0}, {}, {"a"}) == []
    assert p99_by_second({}, {}, set()) == []


class _Record:
    def __init__(self, n: int) -> None:
        self.key = b"t"
        self.value = b'{"tenant_id": "t", "duration_seconds": 1, "event_id": "e%d"}' % n


class _Consumer:
    """Hands out `records` one fetch at a time; notes the collector's frozen count."""

    def __init__(self, records: int, *, fail: bool = False, **_: object) -> None:
        self.left = records
        self.fail = fail
        self.frozen_while_fetching: list[int] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: object) -> None: ...

    async def seek_to_beginning(self, *tps: object) -> None: ...

    async def getmany(self, **_: object) -> dict[str, list[_Record]]:
        self.frozen_while_fetching.append(gc.get_freeze_count())
        if self.fail:
            raise RuntimeError("the broker went away")
        take, self.left = min(self.left, 3), self.left - min(self.left, 3)
        return {"tp": [_Record(i) for i in range(take)]}


class _Producer:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, *_: object, **__: object) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}


def _fakes(monkeypatch: pytest.MonkeyPatch, consumer: _Consumer) -> None:
    async def metadata(_: object) -> _Cluster:
        return _Cluster()

    monkeypatch.setattr(measures, "AIOKafkaConsumer", lambda **_: consumer)
    monkeypatch.setattr(measures, "producer", lambda *_, **__: _Producer())
    monkeypatch.setattr(glue, "fetch_metadata", metadata)


def test_the_ceiling_loop_runs_with_the_harness_frozen_out_of_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bench's own objects would otherwise be walked by every full collection the
    # loop triggers; after the pass they are the collector's again.
    held = [[i] for i in range(1000)]
    before = gc.get_freeze_count()
    consumer = _Consumer(10)
    _fakes(monkeypatch, consumer)

    rate = asyncio.run(measures.ceiling("b", ["calls"], "out", expected=10))

    assert rate > 0
    assert consumer.frozen_while_fetching
    assert min(consumer.frozen_while_fetching) >= before + len(held)
    assert gc.get_freeze_count() == before == 0


def test_a_failed_ceiling_pass_leaves_nothing_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    before = gc.get_freeze_count()
    consumer = _Consumer(10, fail=True)
    _fakes(monkeypatch, consumer)

    with pytest.raises(RuntimeError, match="went away"):
        asyncio.run(measures.ceiling("b", ["calls"], "out", expected=10))

    assert consumer.frozen_while_fetching[0] > before
    assert gc.get_freeze_count() == before == 0
