"""The accounts table's store: Faust's in-memory store, with recovery that keeps the
newest value of each account (`StoredAccount.order`) rather than the last one read.

A worker paused past its session timeout (a zombie) can still write account values
after its successor took over; reading the changelog in order would then restore the
zombie's branch. Comparing (epoch, generation, seq) keeps the successor's.

And recovery always reads an active partition's changelog from its start. Faust
resumes from where this worker's recovery of the partition last stopped, if it still
remembers it (it forgets only on a revoke it did not skip); a zombie that rejoins and
gets its partitions back would then keep its own late values and never read the
successor's writes, which came before them in the log (seen by the frozen-worker fault
test). The changelog is compacted, so a full read is one record per tenant, and the
comparison makes it safe whatever this worker still holds in memory.

That read is done in bulk (processor/kafka/changelog.py) when the store has a reader:
the active partitions are read to their end here, during the rebalance, and Faust's
own recovery is told to start after what was read, so it only reads the tail. Account
values read that way stay undecoded until first read (`codec.Undecoded`), which holds
what the comparison and the counts need.

The dedupe marks are no table of Faust's: they are held compact
(processor/worker/marks.py) and read back here too, right after the fence
(processor/worker/marks_log.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.serializers import codecs
from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.types import TP, EventT

from processor.core.money import Unit, check_unit
from processor.core.stored import InputsRewound, StoredAccount, newer, rewound_inputs
from processor.kafka.changelog import ChangelogReader
from processor.kafka.routing import partition_for
from processor.worker.codec import Undecoded
from processor.worker.marks import MarkStore
from processor.worker.marks_log import recover_marks
from processor.worker.tally import AccountTally

SCHEME = "metermemory"


class UndecodableValue(RuntimeError):
    """A value read at recovery that turned out not to decode when first read."""


_MISSING = object()


class SeqMemoryStore(MemoryStore[Any, Any]):
    # Given by the app once the store exists (`attach`); None: Faust's recovery reads
    # everything.
    reader: ChangelogReader | None = None
    # The accounts table's counts per partition (processor/worker/tally.py).
    tally: AccountTally | None = None
    # Called with the active partition numbers before the changelog is read: the app
    # starts their transactional producers there, which fences any earlier owner.
    # (and the rebalance's generation: a second call for the same generation and
    # partitions fences nothing again)
    fence: Callable[[set[int], int], Awaitable[None]] | None = None
    # The running rate card's currency and decimals: an account value read back in
    # another currency, or at more decimals, stops the worker (core/money.py).
    unit: Unit | None = None
    # The dedupe marks (processor/worker/marks.py), read back with the accounts, from
    # the marks topic and the legacy changelog (`marks_topics`; None: none).
    marks: MarkStore | None = None
    marks_topics: tuple[str, str | None] = ("", None)

    def attach(
        self,
        *,
        reader: ChangelogReader | None,
        fence: Callable[[set[int], int], Awaitable[None]] | None,
        tally: AccountTally | None = None,
        unit: Unit | None = None,
        marks: MarkStore | None = None,
        marks_topics: tuple[str, str | None] = ("", None),
    ) -> None:
        """Give the store what it recovers with. Faust builds the store itself (from
        the table's `store` URL), so the app hands these over once, right after."""
        self.reader = reader
        self.fence = fence
        self.tally = tally
        self.unit = unit
        self.marks = marks
        self.marks_topics = marks_topics

    def __post_init__(self) -> None:
        super().__post_init__()
        # Per changelog partition, the offset the bulk read of this rebalance reached.
        self._read_to: dict[TP, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self._read_to.get(tp)

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        # Runs before the recovery's own on_rebalance, which then starts these after
        # what the reader read here (persisted_offset), or from the earliest offset.
        changelog = self.table.changelog_topic.get_topic_name()
        tables: Any = self.app.tables
        offsets = tables.recovery.active_offsets
        for tp in [tp for tp in offsets if tp.topic == changelog]:
            del offsets[tp]
        self._read_to = {}
        actives = self.app.assignor.assigned_actives()
        mine = [tp for tp in actives if tp.topic == changelog]
        partitions = {tp.partition for tp in mine}
        if self.fence is not None:
            await self.fence(partitions, generation_id)
        if self.marks is not None:
            # Held only for the active partitions, read again whole (after the fence,
            # like the accounts: another worker may have written some meanwhile).
            self.marks.keep_only(partitions)
            if self.reader is not None:
                topic, legacy = self.marks_topics
                await recover_marks(self.reader, self.marks, partitions, topic, legacy)
        if self.reader is not None and mine:
            table: Any = self.table
            keys = codecs.get_codec(table.key_serializer).loads
            # The highest offset the accounts read have applied, per input partition.
            highest: dict[str, int] = {}
            # Account values are decoded when first read (codec.Undecoded).
            values = (
                (lambda raw: Undecoded(raw, highest))
                if self.tally is not None
                else codecs.get_codec(table.value_serializer).loads
            )

            def apply(partition: int, key: bytes | None, value: bytes | None) -> None:
                # Every write to a table's changelog has a key; Faust's recovery
                # would fail on one without.
                if key is not None:
                    self.apply_recovered(
                        partition, keys(key), None if value is None else values(value)
                    )

            self._read_to = await self.reader.read(mine, apply)
            if highest:
                await self._check_inputs(self.reader, highest)

    async def _check_inputs(self, reader: ChangelogReader, highest: dict[str, int]) -> None:
        """Refuse inputs whose offsets restarted below what the accounts applied: a
        topic deleted and re-created. Its new records would be taken for records
        already applied, and never reach a balance. Raised out of the rebalance, the
        worker stops (processor/ops/service_commands.py, exit 2)."""
        problems = rewound_inputs(highest, await reader.end_offsets(highest))
        if problems:
            raise InputsRewound(
                "; ".join(problems) + ". Restore the topic's records, or decide how to "
                "start these accounts again (docs/guarantees.md, 'Inputs re-created')"
            )

    def apply_recovered(self, partition: int, key: Any, value: Any) -> None:
        """Keep one value read back from the changelog (None: a tombstone)."""
        self._key_partition[key] = partition
        if value is None:
            self._count(partition, key, self.data.pop(key, None), None)
            self._key_partition.pop(key, None)
        else:
            self._keep(partition, key, value)

    def _keep(self, partition: int, key: Any, value: Any) -> None:
        if not isinstance(value, (StoredAccount, Undecoded)):
            self.data[key] = value
            return
        running = self.unit
        if running is not None and value.unit is not None and value.unit != running:
            # Raised out of the rebalance: the worker stops with exit 2
            # (processor/ops/service_commands.py).
            check_unit(value.unit, running, str(key))
        current = self.data.get(key)
        if newer(current, value):
            if isinstance(value, StoredAccount):
                # One string for the key and the tenant id it holds, not two.
                tenant = value.account.tenant_id
                key = tenant if tenant == key else key
            self.data[key] = value
            self._count(partition, key, current, value)

    def _count(self, partition: int, key: Any, old: Any, new: Any) -> None:
        if self.tally is not None:
            self.tally.replace(partition, key, old, new)

    # Every read of a value comes through here (Faust's `get` is Mapping's, on top).
    def __getitem__(self, key: Any) -> Any:
        value = self.data[key]
        if type(value) is Undecoded:
            try:
                value = self.data[key] = value.decode()
            except Exception as exc:
                # Not a KeyError, which `get` would take for "no such tenant" and the
                # engine for a new account.
                raise UndecodableValue(f"stored value of {key!r} does not decode") from exc
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        # Mapping's get goes through __getitem__ and a KeyError for a missing key: a
        # raised exception for every new tenant looked up.
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return default
        return self[key] if type(value) is Undecoded else value

    def values(self) -> Any:
        return (self[key] for key in list(self.data))

    def items(self) -> Any:
        return ((key, self[key]) for key in list(self.data))

    def copy(self) -> dict[Any, Any]:
        return dict(self.items())

    def _partition_of(self, key: Any) -> int:
        """The changelog partition a key was read from, or its tenant's (an account key
        is the tenant id), remembered so Faust drops it when the partition moves."""
        partition = self._key_partition.get(key)
        if partition is None:
            partition = self._key_partition[key] = partition_for(key, self.table.partitions)
        return partition

    # The flusher's writes (a batch's values, once in Kafka) come through here.
    def __setitem__(self, key: Any, value: Any) -> None:
        if self.tally is not None:
            self.tally.replace(self._partition_of(key), key, self.data.get(key), value)
        self.data[key] = value

    def settle_values(self, values: list[tuple[Any, Any]]) -> None:
        """What `store[key] = value` does for each, in one call: the flusher settles a
        batch's values here (`Staged.settle`), one interpreted call a batch rather than
        two a value."""
        data = self.data
        tally = self.tally
        if tally is None:
            data.update(values)
            return
        for key, value in values:
            tally.replace(self._partition_of(key), key, data.get(key), value)
            data[key] = value

    def __delitem__(self, key: Any) -> None:
        partition = self._key_partition.pop(key, None)
        old = self.data.pop(key)
        if partition is not None:
            self._count(partition, key, old, None)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        # Faust drops the keys of partitions no longer active here, straight from
        # `data`; the counts are rebuilt from what stays.
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.tally is not None:
            self.tally.clear()
            for key, value in self.data.items():
                self.tally.replace(self._partition_of(key), key, None, value)

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        for event in batch:
            value = None if event.message.value is None else to_value(event.value)
            self.apply_recovered(event.message.partition, to_key(event.key), value)


def register() -> str:
    """Make `metermemory://` a store URL Faust understands; returns the URL."""
    STORES.aliases[SCHEME] = f"{__name__}:SeqMemoryStore"
    # With a host: Faust falls back to the app's default store when the table's store
    # URL is falsy, and yarl's URL("metermemory://") is (no host, no path).
    return f"{SCHEME}://accounts"
