"""Acks settled per partition per round (`GuardedConsumer.settle`): the same commits as
one ack per record, and a rebalance still waits for the records in flight."""

from __future__ import annotations

import random
from collections import defaultdict
from types import SimpleNamespace
from typing import Any
from weakref import WeakSet

import pytest
from faust.types import TP
from intervaltree import IntervalTree

from processor.kafka import glue
from processor.worker.consumer import GuardedConsumer, InFlight, Taken

A = TP("usage.calls", 0)
GENERATION = 7


class _Message:
    def __init__(self, offset: int, generation: int = GENERATION) -> None:
        self.tp, self.topic, self.offset = A, A.topic, offset
        self.generation_id = generation
        self.acked = False
        self.refcount = 0

    def ack(self, consumer: Any) -> bool:  # Faust's Message.ack, without references
        return bool(consumer.ack(self)) if not self.acked else False


def _consumer(committed: int | None, acked: list[int], refused: set[int]) -> Any:
    c: Any = object.__new__(GuardedConsumer)
    c.refused = {A: set(refused)} if refused else {}
    c.taken = Taken()
    c.guarded = frozenset({A.topic})
    c.in_flight = InFlight()
    c.app = SimpleNamespace(
        consumer_generation_id=GENERATION,
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
    )
    glue.set_consumer_state(
        c,
        acked=defaultdict(list, {A: list(acked)}),
        acked_index=defaultdict(set, {A: set(acked)}),
        gap=defaultdict(IntervalTree),
        committed_offset=defaultdict(lambda: None, {A: committed}),
        waiting_for_ack=None,
        unacked_messages=WeakSet(),
    )
    return c


def _per_record(c: Any, messages: list[_Message]) -> None:
    """What `Meter._landed` did before: each record taken, then acked."""
    for m in messages:
        c.taken.took(m.tp, m.offset)
        m.ack(c)


@pytest.mark.parametrize("seed", range(40))
def test_settling_a_partition_at_once_commits_what_one_ack_per_record_did(seed: int) -> None:
    rng = random.Random(seed)
    committed = rng.choice([None, 0, 5, 10])
    start = 5 if committed is None else committed
    offsets = sorted(rng.sample(range(start - 3, start + 40), 25))
    refused = set(rng.sample(offsets, 3))  # skipped earlier, read again since
    old = set(rng.sample(offsets, rng.choice([0, 0, 2])))  # fetched before a rebalance
    acked = sorted(rng.sample(range(start, start + 10), 2))  # acked twice

    def batch() -> list[_Message]:
        return [_Message(o, GENERATION - 1 if o in old else GENERATION) for o in offsets]

    one, at_once = _consumer(committed, acked, refused), _consumer(committed, acked, refused)
    one_messages, at_once_messages = batch(), batch()
    _per_record(one, one_messages)
    at_once.staged(len(at_once_messages))
    at_once.settle(A, at_once_messages)
    assert sorted(at_once.acked[A]) == sorted(one.acked[A])
    assert at_once.refused == one.refused
    assert at_once.commit_offset(A) == one.commit_offset(A)
    assert all(m.acked for m in at_once_messages)


def test_a_record_fetched_in_an_older_generation_holds_the_commit_back() -> None:
    c = _consumer(committed=5, acked=[], refused=set())
    messages = [_Message(5), _Message(6), _Message(7, GENERATION - 1), _Message(8)]
    c.staged(4)
    c.settle(A, messages)
    assert c.refused[A] == {7}
    assert c.commit_offset(A) == 7  # next to read: the refused record


def test_a_rebalance_waits_while_any_staged_record_is_in_flight() -> None:
    c = _consumer(committed=0, acked=[], refused=set())
    c.staged(3)
    c.staged(2)
    [pending] = list(c.unacked)
    assert not pending.acked  # Faust's wait_empty waits
    c.settle(A, [_Message(0), _Message(1), _Message(2)])
    assert list(c.unacked) == [pending] and not pending.acked
    c.unstaged(2)  # a failed round: its acks refused (`Meter._landed`)
    assert not c.unacked and pending.acked
    c.staged(0)
    assert not c.unacked
