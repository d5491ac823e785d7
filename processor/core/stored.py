"""What is stored per tenant so that every input changes a balance exactly once.

The worker runs Faust at-least-once: after a crash it replays every record since the
last committed offset, and any of the writes a record caused (the account's changelog
record, the dedupe mark, the outputs) may or may not have reached Kafka. One write is
atomic: the account's own table value. So that value carries, next to the balance:

- `applied`: per input topic-partition, the offset of the last record applied to this
  account. A replayed record at or below it is already in the balance.
- `outbox`: the outputs of recent transitions, until the broker has acknowledged them.
  When a record is recognised as replayed, its outputs are published again from here
  (same ids), so an output lost in the crash is never lost for good.
- `seq`: a write counter. A worker that was paused past its session timeout (a zombie)
  may still write an older value after its successor wrote a newer one; recovery keeps
  the value with the highest `seq`, so the balance never goes back in time.

A dedupe mark (kept in a separate table, for re-sent duplicates at other offsets)
records *where* its event was applied; it counts only if this account value has
applied that position. A mark that reached Kafka while its account value did not is
thus ignored, and the event is applied when its record is replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from processor.core.account import Account, Output

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Position:
    """An input record's place: `topic:partition` and offset."""

    tp: str
    offset: int


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    position: Position
    outputs: tuple[Output, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    """A seen event or command: until when to remember it, and where it was applied."""

    expires: int
    position: Position


@dataclass(frozen=True, slots=True)
class StoredAccount:
    account: Account
    seq: int = 0
    applied: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    outbox: tuple[OutboxEntry, ...] = ()

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
        outputs: tuple[Output, ...],
        delivered: Callable[[str, OutboxEntry], bool],
    ) -> StoredAccount:
        """The value after applying the record at `position`: one atomic write."""
        seq = self.seq + 1
        tenant = account.tenant_id
        kept = tuple(e for e in self.outbox if not delivered(tenant, e))
        if outputs:
            kept = (*kept, OutboxEntry(seq, position, outputs))
        applied = dict(self.applied)
        applied[position.tp] = max(position.offset, applied.get(position.tp, -1))
        return StoredAccount(account, seq, MappingProxyType(applied), kept)

    def without_delivered(self, delivered: Callable[[str, OutboxEntry], bool]) -> StoredAccount:
        tenant = self.account.tenant_id
        kept = tuple(e for e in self.outbox if not delivered(tenant, e))
        return self if len(kept) == len(self.outbox) else replace(self, outbox=kept)


def mark_holds(mark: Mark | None, stored: StoredAccount | None) -> bool:
    """A mark proves a duplicate only if its application is in this account value."""
    return mark is not None and stored is not None and stored.has_applied(mark.position)


def newer(current: StoredAccount | None, incoming: StoredAccount) -> bool:
    """Recovery keeps the higher `seq`: a zombie's late write never rolls a balance back."""
    return current is None or incoming.seq >= current.seq


def never_delivered(_tenant: str, _entry: OutboxEntry) -> bool:
    return False
