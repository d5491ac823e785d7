"""A fetch's input records become plain records, staged and held in order; one fetched
in another generation, or while the flow is stopped, is refused and not staged."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types.tuples import ConsumerMessage

from processor.worker.fetched import FetchedStager, input_bytes, record_of
from processor.worker.records import Record, Source


def message(
    key: bytes | None = b"acme",
    value: bytes | None = b"{}",
    *,
    topic: str = "usage.calls",
    offset: int = 0,
    headers: Any = None,
    generation: int = 7,
) -> ConsumerMessage:
    m = ConsumerMessage(topic, 3, offset, 0.0, 0, headers or [], key, value, None)
    m.generation_id = generation
    return m


def test_a_fetched_records_size_is_its_key_and_value_a_null_one_counting_nothing() -> None:
    assert input_bytes(message(b"acme", b"x" * 100)) == 104
    assert input_bytes(message(None, b"x" * 100)) == 100
    assert input_bytes(message(None, None)) == 0


@pytest.mark.parametrize(
    "headers",
    [[("h", b"1"), ("g", b"2")], (("h", b"1"), ("g", b"2")), {"h": b"1", "g": b"2"}],
)
def test_a_message_becomes_a_record_with_its_position_generation_and_headers(
    headers: Any,
) -> None:
    rec = record_of(message(offset=42, headers=headers))
    assert rec == Record(
        "usage.calls", 3, 42, b"acme", b"{}", (("h", b"1"), ("g", b"2")), generation=7
    )
    assert rec.header("g") == b"2"


def test_a_message_without_headers_or_generation_gets_none_and_zero() -> None:
    m = message(generation=0)
    m.generation_id = None
    rec = record_of(m)
    assert rec.headers == () and rec.generation == 0


class _Intake:
    def __init__(self, fail_at: int | None = None) -> None:
        self.staged: list[tuple[Source, Record]] = []
        self.fail_at = fail_at

    def stage(self, source: Source, rec: Record) -> str:
        if rec.offset == self.fail_at:
            raise RuntimeError("a bug")
        self.staged.append((source, rec))
        return "applied"


class _Flusher:
    def __init__(self) -> None:
        self.held: list[tuple[Any, int]] = []

    def hold(self, token: Any, size: int) -> None:
        self.held.append((token, size))


class _Consumer:
    def __init__(self) -> None:
        self.in_flight = 0
        self.refused: list[int] = []

    def staged(self, count: int) -> None:
        self.in_flight += count

    def ack(self, m: ConsumerMessage) -> bool:
        # What Faust's `Message.ack` calls once the message's last reference is gone.
        self.refused.append(m.offset)
        return True


def _stager(intake: _Intake, flusher: _Flusher) -> FetchedStager:
    # The compiled class takes the pipeline's own parts; these stand-ins quack alike.
    sources = {"usage.calls": Source.CALLS, "usage.commands": Source.COMMANDS}
    return FetchedStager(sources, intake, flusher)  # type: ignore[arg-type]


def _fetch() -> list[ConsumerMessage]:
    return [
        message(topic="usage.calls", offset=0),
        message(topic="usage.commands", offset=1, generation=6),  # an older generation
        message(topic="usage.commands", offset=2, value=b"x" * 10),
    ]


def test_the_records_of_this_generation_are_staged_and_held_in_order() -> None:
    intake, flusher, consumer = _Intake(), _Flusher(), _Consumer()
    fetch = _fetch()
    _stager(intake, flusher).stage(fetch, 7, consumer)
    assert [(s, r.offset) for s, r in intake.staged] == [(Source.CALLS, 0), (Source.COMMANDS, 2)]
    assert flusher.held == [(fetch[0], 6), (fetch[2], 14)]
    assert consumer.refused == [1] and consumer.in_flight == 2


def test_nothing_is_staged_while_the_flow_is_stopped() -> None:
    intake, flusher, consumer = _Intake(), _Flusher(), _Consumer()
    fetch = _fetch()
    _stager(intake, flusher).stage(fetch, None, consumer)
    assert intake.staged == [] and flusher.held == []
    assert consumer.refused == [0, 1, 2] and consumer.in_flight == 0


def test_the_records_staged_before_a_failure_are_still_counted_in_flight() -> None:
    intake, flusher, consumer = _Intake(fail_at=2), _Flusher(), _Consumer()
    fetch = _fetch()
    with pytest.raises(RuntimeError, match="a bug"):
        _stager(intake, flusher).stage(fetch, 7, consumer)
    assert consumer.in_flight == 1 and [m for m, _ in flusher.held] == [fetch[0]]
