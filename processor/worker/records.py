"""The plain data the worker's parts share: input records, outputs, and their headers.

No Faust here: the agents and the fetch loop hand over plain `Record`s, and outputs
leave as `Out`s through a `Publisher`, so the whole path runs in unit tests with an
in-memory publisher (processor/testing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from processor.core.stored import Position
from processor.worker.sizing import KeyFacts

# Headers that carry a re-routed record's origin, so its ledger entry and any
# rejection still name the topic, partition and offset it first arrived at.
H_SOURCE = "meter-source"
H_TOPIC = "meter-source-topic"
H_PARTITION = "meter-source-partition"
H_OFFSET = "meter-source-offset"
H_KEY = "meter-source-key"  # absent when the original record had no key
# A key over sizing.KEY_BOUND travels as its prefix (H_KEY) with its size and SHA-256.
H_KEY_SIZE = "meter-source-key-size"
H_KEY_SHA256 = "meter-source-key-sha256"
# `meter replay-rejected --force-too-old` sets both on a record it re-sends: an event
# older than the dedupe window is then applied on the operator's word (docs/contract.md).
# Honoured only with H_REPLAY_OF beside it, and carried along by a re-route.
H_FORCE_TOO_OLD = "meter-force-too-old"
H_REPLAY_OF = "meter-replay-of"


class Source(StrEnum):
    CALLS = "calls"
    CONFERENCING = "conferencing"
    COMMANDS = "commands"


@dataclass(init=False, unsafe_hash=True, slots=True)
class Record:
    topic: Final[str]
    partition: Final[int]
    offset: Final[int]
    key: Final[bytes | None]
    value: Final[bytes | None]
    headers: Final[Sequence[tuple[str, bytes]]]
    # The consumer group generation the record was fetched in: what the account value
    # written for it is stamped with (core/stored.py), however late it is processed.
    generation: Final[int]
    # Set when `key` holds only a prefix of the original key (a re-routed record's
    # origin): the original's size and SHA-256, for its rejection.
    key_facts: Final[KeyFacts | None]

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        generation: int = 0,
        key_facts: KeyFacts | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.generation = generation
        self.key_facts = key_facts

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def position(self) -> Position:
        return Position(f"{self.topic}:{self.partition}", self.offset)


@dataclass(init=False, unsafe_hash=True, slots=True)
class Out:
    """One record to produce."""

    topic: Final[str]
    key: Final[bytes | None]
    # None: a tombstone (a key forgotten from the accounts' view, `Staged.forget`);
    # dedupe marks are never written as tombstones (processor/worker/marks_log.py).
    value: Final[bytes | None]
    headers: Final[Sequence[tuple[str, bytes]] | None]
    # None: the key's partition by Kafka's default partitioner (any, for no key).
    partition: Final[int | None]
    # A changelog record of the processor's own state, not an output of the contract.
    state: Final[bool]
    # The partition number whose transaction carries the record: that of the input
    # record that caused it, or of the tenant a timer tick or a state record is for.
    owner: Final[int]

    def __init__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        state: bool = False,
        owner: int = -1,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.partition = partition
        self.state = state
        self.owner = owner


class Publisher(Protocol):
    # Whether `publish` lands its records all together or not at all (a transaction):
    # then a batch's outputs and state go in one round, else outputs first.
    atomic: bool

    async def publish(self, records: Sequence[Out]) -> None:
        """Produce every record; return once the broker has acknowledged all of them.

        Raises if any record could not be delivered.
        """
        ...


@dataclass(frozen=True, slots=True)
class Changelog:
    """Where a table's batch writes go besides its local store: its changelog topic.

    The flusher produces the changelog records itself (the engine is given the table's
    store, not the table), so that a batch costs one record per touched key, sent after
    the batch's outputs.
    """

    topic: str
    encode: Callable[[Any], bytes]
    tenant_of: Callable[[str], str]


def utcnow() -> datetime:
    return datetime.now(UTC)
