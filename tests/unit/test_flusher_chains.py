"""Each partition number's batches land in a chain of their own (processor/worker/flusher.py).

With an atomic publisher a record's outputs and state all go in its partition's
transaction, so a partition's next round need not wait for another partition's slow
commit; a failure anywhere still fails every batch not landed, in every chain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processor.config.settings import Settings
from processor.core.dedupe import DedupeWindow, dedupe_tenant
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.core.state import RechargePolicy
from processor.core.stored import Mark, StoredAccount
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.worker.codec import dump_stored
from processor.worker.marks_log import MarksLog
from processor.worker.pipeline import Pipeline
from processor.worker.records import Changelog, Out, Record, Source
from tests.support import events

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
NAMES = TopicNames.from_settings(Settings(_env_file=None))
CARD = load_rate_card(example_rate_card_path())
PARTITIONS = 4
AT = "2026-11-25T09:59:00Z"
SLOW, FAST = "acme", "zeta"
assert partition_for(SLOW, PARTITIONS) != partition_for(FAST, PARTITIONS)


@dataclass
class PerPartition:
    """An atomic publisher whose rounds the test acknowledges (or refuses) one at a
    time, per partition number."""

    calls: list[tuple[int, list[Out]]] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)
    refused: set[int] = field(default_factory=set)
    atomic: bool = True

    async def publish(self, records: Sequence[Out]) -> None:
        owners = {r.owner for r in records}
        assert len(owners) == 1, owners  # one partition's transaction per round
        index = len(self.calls)
        self.calls.append((owners.pop(), list(records)))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if index in self.refused:
            raise ConnectionError("broker refused the transaction")

    def rounds(self, partition: int) -> list[int]:
        return [i for i, (owner, _records) in enumerate(self.calls) if owner == partition]

    def release(self, index: int) -> None:
        self.gates[index].set()

    def refuse(self, index: int) -> None:
        self.refused.add(index)
        self.gates[index].set()


@dataclass
class Rig:
    pub: PerPartition = field(default_factory=PerPartition)
    batch_max: int = 2000
    accounts: dict[str, StoredAccount] = field(default_factory=dict)
    seen: dict[str, Mark] = field(default_factory=dict)
    landed: list[tuple[list[Any], Exception | None]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline.build(
            CARD,
            RechargePolicy(timeout=timedelta(hours=1)),
            DedupeWindow(7),
            self.accounts,
            self.seen,
            NAMES,
            PARTITIONS,
            self.pub,
            clock=lambda: T0,
            changelogs=(
                Changelog("accounts-changelog", dump_stored, str),
                MarksLog("dedupe-marks", dedupe_tenant),
            ),
            batch_max=self.batch_max,
            landed=lambda held, failure: self.landed.append((held, failure)),
        )

    def funds(self, tenant: str, command_id: str) -> str:
        """Stage a funds command for `tenant` and hold its token (`tenant:id`)."""
        p = partition_for(tenant, PARTITIONS)
        offset = self.offsets.get(tenant, 0)
        self.offsets[tenant] = offset + 1
        value = json.dumps(events.funds(command_id, tenant=tenant, amount="10.00", at=AT))
        rec = Record(NAMES.commands, p, offset, tenant.encode(), value.encode())
        assert self.pipeline.intake.stage(Source.COMMANDS, rec) == "applied"
        token = f"{tenant}:{command_id}"
        self.pipeline.flusher.hold(token)
        return token

    def landed_ok(self) -> list[Any]:
        return [t for held, failure in self.landed if failure is None for t in held]


async def turns(n: int = 8) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_slow_partitions_commit_does_not_hold_another_partitions_rounds() -> None:
    rig = Rig()
    pub = rig.pub
    slow, fast = partition_for(SLOW, PARTITIONS), partition_for(FAST, PARTITIONS)
    rig.funds(SLOW, "s1")
    rig.funds(FAST, "f1")
    await turns()
    assert sorted(owner for owner, _ in pub.calls) == sorted([slow, fast])
    [slow_round] = pub.rounds(slow)
    [fast_round] = pub.rounds(fast)
    # The slow partition's commit hangs; the fast one's lands, and its next records
    # go out in a round of their own meanwhile, and land too.
    pub.release(fast_round)
    await turns()
    assert rig.landed_ok() == ["zeta:f1"]
    assert rig.accounts[FAST].seq == 1 and SLOW not in rig.accounts
    rig.funds(FAST, "f2")
    await turns()
    assert len(pub.rounds(fast)) == 2 and len(pub.rounds(slow)) == 1
    pub.release(pub.rounds(fast)[1])
    await turns()
    assert rig.landed_ok() == ["zeta:f1", "zeta:f2"] and rig.accounts[FAST].seq == 2
    # Each round carries its partition's outputs and state together.
    for _owner, records in pub.calls:
        assert any(r.state for r in records) and any(not r.state for r in records)
    # flush() is a barrier over every partition: it waits for the slow one too.
    barrier = asyncio.create_task(rig.pipeline.flusher.flush())
    await turns()
    assert not barrier.done()
    pub.release(slow_round)
    await barrier
    assert rig.landed_ok() == ["zeta:f1", "zeta:f2", "acme:s1"]
    assert rig.accounts[SLOW].seq == 1


async def test_a_failure_fails_every_batch_not_landed_in_every_partition() -> None:
    rig = Rig()
    pub = rig.pub
    slow, fast = partition_for(SLOW, PARTITIONS), partition_for(FAST, PARTITIONS)
    rig.funds(SLOW, "s1")
    rig.funds(FAST, "f1")
    await turns()
    pub.release(pub.rounds(fast)[0])
    await turns()
    assert rig.landed_ok() == ["zeta:f1"]
    # Both partitions have a round in flight, and the slow one a batch waiting.
    rig.funds(FAST, "f2")
    await turns()
    rig.funds(SLOW, "s2")
    waiting = asyncio.create_task(rig.pipeline.flusher.flush())
    await turns()
    assert len(pub.rounds(fast)) == 2 and len(pub.rounds(slow)) == 1
    pub.refuse(pub.rounds(slow)[0])
    with pytest.raises(ConnectionError):
        await waiting
    failed = sorted(t for held, failure in rig.landed if failure is not None for t in held)
    assert failed == ["acme:s1", "acme:s2", "zeta:f2"]  # every batch not landed
    # The fast partition's round in flight commits after the failure: too late, it
    # was failed with the rest (the worker replays it), and nothing settles locally.
    pub.release(pub.rounds(fast)[1])
    await turns()
    assert rig.landed_ok() == ["zeta:f1"]
    assert rig.accounts[FAST].seq == 1 and SLOW not in rig.accounts
    # And every later flush fails at once.
    rig.funds(FAST, "f3")
    with pytest.raises(ConnectionError):
        await rig.pipeline.flusher.flush()
    assert len(pub.calls) == 3


async def test_a_worker_behind_starts_its_partitions_rounds_together() -> None:
    # With an eighth of batch_max held, a partition whose round landed waits for the
    # rounds still in flight, so that rounds stay large under load.
    rig = Rig(batch_max=16)
    pub = rig.pub
    slow, fast = partition_for(SLOW, PARTITIONS), partition_for(FAST, PARTITIONS)
    rig.funds(SLOW, "s1")
    rig.funds(FAST, "f1")
    await turns()
    assert len(pub.rounds(fast)) == len(pub.rounds(slow)) == 1  # not behind: each goes
    rig.funds(FAST, "f2")  # held while f1's round is in flight: two held
    rig.funds(FAST, "f3")
    pub.release(pub.rounds(fast)[0])
    await turns()
    assert len(pub.rounds(fast)) == 1  # parked behind the slow round
    pub.release(pub.rounds(slow)[0])
    await turns()
    # Both records of the fast partition go in one round, once the slow one landed.
    assert len(pub.rounds(fast)) == 2
    pub.release(pub.rounds(fast)[1])
    await rig.pipeline.flusher.flush()
    assert rig.landed_ok() == ["zeta:f1", "acme:s1", "zeta:f2", "zeta:f3"]
    assert rig.accounts[FAST].seq == 3


async def test_parked_partitions_all_go_together_once_the_rounds_in_flight_land() -> None:
    rig = Rig(batch_max=16)
    pub = rig.pub
    tenants = [t for t in ("acme", "zeta", "beta", "gamma", "delta", "omega")]
    by_partition = {partition_for(t, PARTITIONS): t for t in tenants}
    assert len(by_partition) >= 3
    first, *others = list(by_partition.values())[:3]
    rig.funds(first, "a1")
    await turns()
    for tenant in others:  # four held while a round is in flight: behind
        rig.funds(tenant, "b1")
        rig.funds(tenant, "b2")
    await turns()
    assert len(pub.calls) == 1  # both parked behind the first round
    pub.release(0)
    await turns()
    # Released together: neither waits for the other's round.
    assert sorted(owner for owner, _ in pub.calls[1:]) == sorted(
        partition_for(t, PARTITIONS) for t in others
    )
    for index in (1, 2):
        pub.release(index)
    await rig.pipeline.flusher.flush()
    assert len(rig.landed_ok()) == 5
