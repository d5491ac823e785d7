"""What is stored per tenant so that every input changes a balance exactly once.

The worker runs Faust at-least-once: after a crash it replays every record since the
last committed offset, and any of the writes a record caused (the account's changelog
record, the dedupe mark, the outputs) may or may not have reached Kafka. One write is
atomic: the account's own table value. So that value carries, next to the balance:

- `applied`: per input topic-partition, the offset of the last record applied to this
  account. A replayed record at or below it is already in the balance.
- `outbox`: outputs not yet acknowledged when the value was written. The worker now
  writes a value only after the outputs of every record it applied are in Kafka, so
  it adds none; values written before that order existed may still hold some, which
  are published again (same ids) when their record is replayed, and dropped once
  their record's offset is committed.
- `seq`, `generation`, `epoch`: a write counter; the consumer group generation of the
  worker that wrote the value; and how many times the value changed hands (a write in
  a generation other than the previous write's counts one more). A worker paused past
  its session timeout (a zombie) may still write values after its successor took its
  partitions over: from an older state, with the same or even higher counters, on a
  branch of its own. Both branches start from the same value; the successor's first
  write moves to a new epoch, or to the same new epoch in a newer generation, so
  recovery keeps the highest (epoch, generation, seq): the successor's branch, and
  the balance never goes back in time. The epoch comes first because generations start
  again from 1 when Kafka deletes a group that stayed empty past its offsets'
  retention; the epoch only grows.

A dedupe mark (kept apart, compact, for re-sent duplicates at other offsets: the
worker's processor/worker/marks.py) records *where* its event was applied; it counts
only if this account value has applied that position. A mark that reached Kafka while
its account value did not is thus ignored, and the event is applied when its record
is replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from processor.core.money import Unit
from processor.core.outputs import Output
from processor.core.state import Account
from processor.core.values import replace

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(init=False, unsafe_hash=True, slots=True)
class Position:
    """An input record's place: `topic:partition` and offset."""

    tp: Final[str]
    offset: Final[int]

    def __init__(self, tp: str, offset: int) -> None:
        self.tp = tp
        self.offset = offset


@dataclass(init=False, unsafe_hash=True, slots=True)
class OutboxEntry:
    seq: Final[int]
    position: Final[Position]
    outputs: Final[tuple[Output, ...]]

    def __init__(self, seq: int, position: Position, outputs: tuple[Output, ...]) -> None:
        self.seq = seq
        self.position = position
        self.outputs = outputs


@dataclass(init=False, unsafe_hash=True, slots=True)
class Mark:
    """A seen event or command: until when to remember it, and where it was applied."""

    expires: Final[int]
    position: Final[Position]

    def __init__(self, expires: int, position: Position) -> None:
        self.expires = expires
        self.position = position


@dataclass(init=False, unsafe_hash=True, slots=True)
class StoredAccount:
    account: Final[Account]
    seq: Final[int]
    generation: Final[int]
    epoch: Final[int]
    applied: Final[Mapping[str, int]]
    outbox: Final[tuple[OutboxEntry, ...]]
    # The currency and decimals the balance is kept in (the rate card's when it was
    # written); None for a value written before units were stored (core/money.py).
    unit: Final[Unit | None]

    def __init__(
        self,
        account: Account,
        seq: int = 0,
        generation: int = 0,
        epoch: int = 0,
        applied: Mapping[str, int] = _EMPTY,
        outbox: tuple[OutboxEntry, ...] = (),
        unit: Unit | None = None,
    ) -> None:
        self.account = account
        self.seq = seq
        self.generation = generation
        self.epoch = epoch
        self.applied = applied
        self.outbox = outbox
        self.unit = unit

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.epoch, self.generation, self.seq)

    def has_applied(self, position: Position) -> bool:
        return self.applied.get(position.tp, -1) >= position.offset

    def outputs_at(self, position: Position) -> tuple[Output, ...]:
        """Outputs of the transition caused by the record at `position`, if still held."""
        return tuple(
            out for entry in self.outbox if entry.position == position for out in entry.outputs
        )

    def advance(
        self,
        account: Account,
        position: Position,
        delivered: Callable[[str, OutboxEntry], bool],
        generation: int = 0,
        unit: Unit | None = None,
    ) -> StoredAccount:
        """The value after applying the record at `position`: one atomic write.

        It holds no outputs of its own: the worker produces a value only after the
        outputs of every record it applied are in Kafka (docs/guarantees.md). `unit`
        is the running card's (this value's is kept when None).
        """
        seq = self.seq + 1
        tenant = account.tenant_id
        kept = tuple(e for e in self.outbox if not delivered(tenant, e)) if self.outbox else ()
        applied = dict(self.applied)
        applied[position.tp] = max(position.offset, applied.get(position.tp, -1))
        return StoredAccount(
            account,
            seq,
            generation,
            self.epoch_for(generation),
            MappingProxyType(applied),
            kept,
            self.unit if unit is None else unit,
        )

    def epoch_for(self, generation: int) -> int:
        """The epoch of a write by `generation`: one more if the value changes hands."""
        return self.epoch if generation == self.generation else self.epoch + 1

    def rewritten(
        self, delivered: Callable[[str, OutboxEntry], bool], generation: int = 0
    ) -> StoredAccount:
        """The same value written again by `generation`, minus delivered outputs."""
        tenant = self.account.tenant_id
        kept = tuple(e for e in self.outbox if not delivered(tenant, e))
        if len(kept) == len(self.outbox) and generation == self.generation:
            return self
        return replace(self, outbox=kept, generation=generation, epoch=self.epoch_for(generation))


def mark_holds(mark: Mark | None, stored: StoredAccount | None) -> bool:
    """A mark proves a duplicate only if its application is in this account value."""
    return mark is not None and stored is not None and stored.has_applied(mark.position)


class Ordered(Protocol):
    """An account value, decoded or not, as far as recovery compares them."""

    @property
    def order(self) -> tuple[int, int, int]: ...


def newer(current: Ordered | None, incoming: Ordered) -> bool:
    """Recovery keeps the newest value: a zombie's late write never wins."""
    return current is None or incoming.order >= current.order


def never_delivered(_tenant: str, _entry: OutboxEntry) -> bool:
    return False


# An Exception, not a RuntimeError: mypyc compiles this module (processor/ops/compiled.py)
# and cannot subclass RuntimeError.
class InputsRewound(Exception):
    """Input partitions whose offsets restarted below what the accounts applied."""


def highest_applied(values: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Per `topic:partition`, the highest offset any of these `applied` maps holds."""
    highest: dict[str, int] = {}
    for applied in values:
        for tp, offset in applied.items():
            if offset > highest.get(tp, -1):
                highest[tp] = offset
    return highest


def rewound_inputs(applied: Mapping[str, int], ends: Mapping[str, int]) -> list[str]:
    """Input partitions whose log is shorter than what the accounts have applied.

    `applied` is `highest_applied` over the account values; `ends` the partitions' end
    offsets now (the offset the next record will get). An account that applied offset
    o of a partition whose end is at or below o saw records that are no longer there:
    the topic was deleted and re-created (or truncated), and its offsets started again.
    Its new records would be taken for ones already applied (a record at or below
    `applied` counts as replayed) and never reach a balance, so each such partition is
    described here, for a refusal; none: the logs are where the accounts left them.
    """
    problems = []
    for tp in sorted(ends):
        done = applied.get(tp)
        if done is not None and done >= ends[tp]:
            problems.append(
                f"input {tp} ends at offset {ends[tp]}, but accounts have applied its records "
                f"up to offset {done}: the topic was deleted and re-created (or truncated), "
                "and its new records would be skipped as already applied"
            )
    return problems
