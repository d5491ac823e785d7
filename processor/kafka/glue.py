"""Every reach into Faust's, mode's and aiokafka's private members, in one place.

Written against faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0
(requirements.lock): `VERSIONS`. Each private member used here is listed in `REACHES`
with the reason it is needed, and tests/unit/test_glue.py checks, for the installed
versions, that each still exists where this module expects it (methods with the
parameters the overrides assume). An upgrade that moves one fails that test, not the
fault suite. Everywhere else ruff's SLF rule forbids private access (pyproject.toml).

What the worker needs from the libraries' insides, and why:

- Faust's consumer (`FetchLoop`): its fetch loop, copied from faust-streaming 0.15.3 and
  reshaped (no task per record, a list hand-over for `direct` topics, stale records
  dropped); the commit offset it computes (`_new_offset`), which the worker's guard
  narrows; its gap bookkeeping, whose end Faust sets one record too far; the
  bookkeeping itself (acked offsets, gaps, read and committed offsets), which the
  guard reads.
- Faust's consumer thread (`ConsumerThread`): the aiokafka consumer it builds, which
  Faust gives no way to configure (fetch wait, isolation level), and aiokafka's
  fetcher, whose seeks are counted so that a fetch that came back before a seek can be
  told stale. And the thread itself, left out (`MainLoopConsumer`): aiokafka runs on
  the worker's loop, with mode's thread service started and stopped as a plain one.
- Faust's app: its HTTP client, closed by tests that never start the app; the tasks and
  timers it starts with, and the blueprints its web server serves (tests check them).
- A Faust table's changelog topic, built again once the table's serializers are set
  (`use_codecs`); mode's crash of a service (`crash`); aiokafka's cluster
  metadata (`fetch_metadata`); the table manager's recovery, absent from its type.

The worker's policy (what is taken, refused, staged) stays in processor/worker/consumer.py,
which subclasses `FetchLoop` and fills in its hooks (`hand_over`, `drop_stale`,
`commit_offset`): this module imports nothing of ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.tables.base import Collection
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.consumer import Consumer as FaustBaseConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, Message
from faust.types.tuples import ack_lock
from faust.web.base import Web as FaustWeb
from mode import Service
from mode.threads import ServiceThread
from mode.utils.futures import maybe_async, notify

from processor.kafka.stepping import step

VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


@dataclass(frozen=True)
class Reach:
    """One private member this module uses.

    A "method" is looked up on `owner` and, with `params`, its parameter names are
    compared (an override assumes them). An "attribute" is an instance attribute that
    `owner.<set_in>` assigns; a "class attribute" one with a default on `owner`.
    """

    owner: type[Any]
    name: str
    kind: Literal["method", "attribute", "class attribute"]
    why: str
    params: tuple[str, ...] | None = None
    set_in: str = "__init__"


_C = FaustBaseConsumer
_AC = faust_aiokafka.Consumer
_T = faust_aiokafka.AIOKafkaConsumerThread
_SELF = ("self",)

REACHES: tuple[Reach, ...] = (
    # Faust's consumer: overridden.
    Reach(_C, "_drain_messages", "method", "the fetch loop", ("self", "fetcher")),
    Reach(_C, "_wait_next_records", "method", "a fetch's seek count", ("self", "timeout")),
    Reach(
        _C,
        "_add_gap",
        "method",
        "a gap ends before its record",
        ("self", "tp", "offset_from", "offset_to"),
    ),
    Reach(_C, "_new_offset", "method", "the guard narrows the commit", ("self", "tp")),
    Reach(_AC, "_new_consumer_thread", "method", "to build our consumer thread", _SELF),
    # Faust's consumer: read.
    Reach(_C, "_get_active_partitions", "method", "a seek pauses them", _SELF),
    Reach(_C, "_acked", "attribute", "the guard holds acks past a refusal"),
    Reach(_C, "_acked_index", "attribute", "acks of a partition at once (`ack_offsets`)"),
    Reach(_C, "_gap", "attribute", "a known gap at the committed offset"),
    Reach(_C, "_read_offset", "attribute", "the fetch loop; off by one after a seek"),
    Reach(_C, "_committed_offset", "attribute", "lag, deliveries, the head check"),
    Reach(_C, "_commit_every", "attribute", "the fetch loop's commit by count"),
    Reach(_C, "_waiting_for_ack", "attribute", "acks of a partition at once wake it too"),
    Reach(_C, "_unacked_messages", "attribute", "what `unacked` reads (unit tests)"),
    Reach(_C, "_n_acked", "class attribute", "the fetch loop's commit by count"),
    Reach(_AC, "_thread", "attribute", "our consumer thread"),
    # mode's service: the fetch loop stops on these; a failed hand-over crashes the app.
    Reach(Service, "_stopped", "attribute", "the fetch loop stops with the consumer"),
    Reach(Service, "_crashed", "attribute", "set with `_stopped` (unit tests)"),
    Reach(Service, "_crash", "method", "crash policy: restart, read again", ("self", "reason")),
    # mode's thread service, run on the main loop (`MainLoopConsumer`).
    Reach(Service, "_default_start", "method", "start as a plain service", _SELF),
    Reach(Service, "_started", "attribute", "start and stop once"),
    Reach(Service, "_shutdown", "attribute", "set where the thread set it"),
    Reach(Service, "_default_stop_children", "method", "as the thread ended", _SELF),
    Reach(Service, "_default_stop_futures", "method", "as the thread ended", _SELF),
    Reach(Service, "_default_stop_exit_stacks", "method", "as the thread ended", _SELF),
    Reach(ServiceThread, "_thread_keepalive", "method", "turned the thread's loop (a task)"),
    # Faust's consumer thread.
    Reach(_T, "_create_worker_consumer", "method", "fetch wait, isolation", ("self", "transport")),
    Reach(
        _T,
        "_fetch_records",
        "method",
        "to tag each fetch with the seek count",
        ("self", "consumer", "active_partitions", "timeout", "max_records"),
    ),
    Reach(_T, "_ensure_consumer", "method", "the aiokafka consumer", _SELF),
    # aiokafka.
    Reach(AIOKafkaConsumer, "_fetch_max_wait_ms", "attribute", "read when the fetcher is built"),
    Reach(AIOKafkaConsumer, "_isolation_level", "attribute", "read when the fetcher is built"),
    Reach(AIOKafkaConsumer, "_fetcher", "attribute", "its seeks are counted", set_in="start"),
    Reach(AIOKafkaConsumer, "_client", "attribute", "cluster metadata (partitions of a topic)"),
    # Faust's app and web server (tests end apps they never started, and check them).
    Reach(faust.App, "_maybe_close_http_client", "method", "close its HTTP client", _SELF),
    Reach(faust.App, "_app_tasks", "attribute", "the tasks and timers it starts with"),
    Reach(FaustWeb, "_enabled_blueprints", "method", "the blueprints it serves", _SELF),
    # Faust's table.
    Reach(
        Collection,
        "_new_changelog_topic",
        "method",
        "the changelog topic must name our codecs",
        ("self", "retention", "compacting", "deleting"),
    ),
)

# Faust's bookkeeping a unit test may set on a consumer built without Faust's __init__.
CONSUMER_STATE = frozenset(
    {
        "acked",
        "acked_index",
        "waiting_for_ack",
        "unacked_messages",
        "gap",
        "read_offset",
        "committed_offset",
        "commit_every",
        "thread",
        "stopped",
        "crashed",
    }
)


class Fetched(dict[TP, list[Any]]):
    """One fetch's records, with the consumer thread's seek count when they came back."""

    def __init__(self, records: Mapping[TP, list[Any]], seeks: int) -> None:
        super().__init__(records)
        self.seeks = seeks


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, counting seeks so that stale fetches can be told apart.

    A fetch comes back from the thread to the main loop later than it left aiokafka; a
    seek the thread carries out in between (a rebalance's seek to the committed offsets)
    makes its records stale: read from the old position, delivered after the new one
    was set. Delivered, they would be processed ahead of the records the seek is about
    to read again, a hole. Each seek is numbered as aiokafka's fetcher makes it, and
    each fetch carries the number of seeks made when it came back.
    """

    seeks = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per partition, the number of its last seek.
        self.seeked: dict[TP, int] = {}

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Both are read by the aiokafka consumer's start(), when it builds its fetcher;
        # Faust passes neither through. The values are the worker's (FetchLoop).
        owner = cast(FetchLoop, self.consumer)
        if owner.fetch_max_wait_ms is not None:
            consumer._fetch_max_wait_ms = owner.fetch_max_wait_ms
        if owner.isolation_level is not None:
            consumer._isolation_level = owner.isolation_level
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        self.count_seeks(self._ensure_consumer()._fetcher)

    def count_seeks(self, fetcher: Any) -> None:
        """Number every position change aiokafka's fetcher makes (seek, reset)."""
        seek_to, reset = fetcher.seek_to, fetcher.request_offset_reset

        def counted_seek_to(tp: Any, offset: int) -> None:
            seek_to(tp, offset)
            self._count((tp,))

        def counted_reset(tps: Iterable[Any], strategy: Any) -> Any:
            tps = list(tps)
            try:
                return reset(tps, strategy)
            finally:
                self._count(tps)

        fetcher.seek_to = counted_seek_to
        fetcher.request_offset_reset = counted_reset

    def _count(self, tps: Iterable[Any]) -> None:
        self.seeks += 1
        for tp in tps:
            self.seeked[TP(tp.topic, tp.partition)] = self.seeks

    async def pause_fetching(self, tps: Iterable[TP]) -> None:
        """Pause partitions in aiokafka itself, not only in Faust's view.

        Faust's pause only takes a partition out of the set its fetch loop hands over:
        aiokafka still fetches it, and the records it returns then are dropped with its
        position already past them. Paused in aiokafka, they are neither fetched nor
        handed out, and the position stays.
        """
        await self.call_thread(self._pause_here, set(tps), True)

    async def resume_fetching(self, tps: Iterable[TP]) -> None:
        await self.call_thread(self._pause_here, set(tps), False)

    async def _pause_here(self, tps: set[TP], pause: bool) -> None:
        consumer = self._ensure_consumer()
        # aiokafka refuses partitions no longer assigned (a rebalance meanwhile).
        mine = [tp for tp in consumer.assignment() if TP(tp.topic, tp.partition) in tps]
        if pause:
            consumer.pause(*mine)
        else:
            consumer.resume(*mine)

    def stale(self, tp: TP, fetched: int) -> bool:
        """Whether a record of `tp` that came back at seek count `fetched` is stale."""
        return self.seeked.get(tp, 0) > fetched

    async def _fetch_records(self, *args: Any, **kwargs: Any) -> Any:
        records = await super()._fetch_records(*args, **kwargs)
        return Fetched(records, self.seeks)


class MainLoopConsumer(ConsumerThread):
    """Faust's consumer thread without the thread: aiokafka runs on the worker's loop.

    In the thread, each fetch passed from the thread's loop to the main loop and the
    next request back, each side waiting for the other's turn and both for the
    interpreter lock (docs/performance.md). Here `call_thread` is a plain await, the
    rebalance callbacks call Faust's consumer directly rather than through its method
    queue, and the service starts and stops as a plain one: what `ServiceThread` did
    in its thread (`_serve`, `_shutdown_thread`) is done in `start` and `stop`.
    """

    def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        # The "thread's" loop is the main loop, which ServiceThread then never closes.
        super().__init__(*args, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        await self._default_start()

    async def maybe_start(self) -> bool:
        if self._started.is_set():
            return False
        await self.start()
        return True

    async def stop(self) -> None:
        # `_shutdown_thread`'s steps (the method queue and aiokafka consumer stopped by
        # `on_thread_stop`), with `Service.stop`'s guard and ending.
        if not self._started.is_set() or self._stopped.is_set():
            return
        self._stopped.set()
        await self.on_thread_stop()
        await self._default_stop_children()
        self._shutdown.set()
        await self._default_stop_futures()
        await self._default_stop_exit_stacks()
        await self.on_shutdown()

    @Service.task
    async def _thread_keepalive(self) -> None:
        """Kept the thread's loop turning so that its method queue was served: none."""

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Some are plain functions (aiokafka's subscribe, seek_to_beginning).
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        await maybe_async(fun(*args, **kwargs))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await self.consumer.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await self.consumer.on_partitions_assigned(assigned, generation_id)


class FetchLoop(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with our fetch loop, and its bookkeeping made public.

    A subclass sets the class attributes and fills in the hooks: `hand_over` (records
    of `direct` topics), `drop_stale` (told of a stale record of a `guarded` topic) and
    `commit_offset` (Faust's commit offset for a partition, or None for no commit).
    """

    # Topics whose records, fetched before a seek of their partition, are dropped.
    guarded: frozenset[str] = frozenset()
    # Topics whose records bypass Faust's conductor, channel, stream and take buffer:
    # the fetch loop hands them to `hand_over` up to `hand_over_every` at a time.
    direct: frozenset[str] = frozenset()
    hand_over_every = 100
    # Set on the aiokafka consumer Faust builds, which Faust configures without them.
    fetch_max_wait_ms: int | None = None
    isolation_level: str | None = None
    # The consumer thread's seek count when the fetch being handed over came back.
    fetched_at = 0
    # aiokafka on the main loop (`MainLoopConsumer`) or in Faust's consumer thread.
    on_main_loop = True

    # ---- the hooks ---------------------------------------------------------------

    async def hand_over(self, batch: list[Message]) -> None:
        raise NotImplementedError

    def drop_stale(self, tp: TP, offset: int) -> None:
        """Told of each record dropped as stale (they are read again)."""

    def commit_offset(self, tp: TP) -> int | None:
        """The offset a commit of `tp` would reach (Faust's `_new_offset`)."""
        return super()._new_offset(tp)

    # ---- Faust's bookkeeping, public -----------------------------------------------

    @property
    def thread(self) -> ConsumerThread:
        return cast(ConsumerThread, self._thread)

    @property
    def acked(self) -> dict[TP, list[int]]:
        """Per partition, the offsets acked and not yet committed past."""
        return cast(dict[TP, list[int]], self._acked)

    @property
    def gaps(self) -> dict[TP, Any]:
        """Per partition, an IntervalTree of offsets known to hold no record."""
        return cast(dict[TP, Any], self._gap)

    @property
    def read_offsets(self) -> dict[TP, int | None]:
        return cast(dict[TP, int | None], self._read_offset)

    @property
    def committed_offsets(self) -> Mapping[TP, int | None]:
        return committed_offsets(self)

    def active_partitions(self) -> set[TP]:
        return set(self._get_active_partitions())

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> None:
        """Faust's `ack` for many records of `tp` at once (its bookkeeping, one lock).

        As there, offsets below the committed one or acked already are left out, and a
        `wait_empty` waiting for acks is woken.
        """
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            fresh = [o for o in offsets if o not in index and (committed is None or o >= committed)]
            index.update(fresh)
            self._acked[tp].extend(fresh)
            self._n_acked += len(fresh)
            notify(self._waiting_for_ack)

    # ---- Faust's private methods, overridden -----------------------------------------

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        if self.on_main_loop:
            return MainLoopConsumer(self, loop=self.loop, beacon=self.beacon)
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        return self.commit_offset(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        await self.record_gap(tp, offset_from, offset_to)

    async def record_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's `_add_gap`, with the gap ending before `offset_to`.

        Faust passes the offset of the record that revealed the gap as its end, and
        that record is being delivered, not missing.
        """
        await super()._add_gap(tp, offset_from, offset_to - 1)

    async def _wait_next_records(self, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's)
        records, active = await super()._wait_next_records(timeout)
        # Read by the fetch loop while it hands this fetch's records over. Records that
        # did not come through the thread's fetch (none do) carry no count: current.
        self.fetched_at = getattr(records, "seeks", self.thread.seeks)
        return records, active

    async def _drain_messages(self, fetcher: Any) -> None:
        await self.fetch_loop(fetcher)

    async def fetch_loop(self, fetcher: Any) -> None:
        """Faust's fetch loop (faust-streaming 0.15.3), without a task per record.

        Faust hands each record over with `wait_first(callback(message),
        suspend_flow.wait())`: two tasks and an asyncio.wait per record (a tenth of
        the worker's time per record: docs/performance.md), so that a hand-over blocked on a full
        stream buffer gives way when a rebalance suspends the flow. A hand-over almost
        never blocks, so here it is stepped once directly; one that does block is
        handed to wait_first as before. And a guarded record whose partition was
        sought after its fetch came back is dropped, not delivered: it is stale, and
        the seek reads it again in its place (`ConsumerThread`).

        Records of the `direct` topics skip the conductor and the streams altogether:
        they are collected and handed over in lists (per fetch, at most
        `hand_over_every` at a time). The per-record path of a stream (an Event, a
        channel queue, the stream's iteration, a take buffer, its acks) cost about as
        much as rating and applying the record. Everything else is Faust's loop as it is.
        """
        thread: Any = self._thread
        stale = thread.stale
        guarded = self.guarded
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = self.hand_over_every
        num_since_yield = 0
        direct = self.direct
        batch: list[Message] = []
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        if tp.topic in guarded and stale(tp, self.fetched_at):
                            self.drop_stale(tp, message.offset)
                            continue
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            if batch:
                                await self.hand_over(batch)
                                batch = []
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if tp.topic in direct:
                                batch.append(message)
                            else:
                                blocked = step(callback(message))
                                if blocked is not None:
                                    await self.wait_first(blocked, self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    if batch:
                        await self.hand_over(batch)
                        batch = []
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


def set_consumer_state(consumer: Any, **state: Any) -> None:
    """Set Faust's bookkeeping (`CONSUMER_STATE`) on a consumer built without __init__.

    For unit tests, whose doubles hold just what the code under test reads.
    """
    for name, value in state.items():
        if name not in CONSUMER_STATE:
            raise TypeError(f"not a consumer state glue knows: {name}")
        setattr(consumer, "_" + name, value)


# ---- single reaches ------------------------------------------------------------------


def committed_offsets(consumer: Any) -> Mapping[TP, int | None]:
    """Faust's record of what the group committed (next offset to read), per partition.

    None before the first commit of a fresh group and, in Faust, for offset 0.
    Consumers without one (test doubles) have none.
    """
    found: Mapping[TP, int | None] = getattr(consumer, "_committed_offset", {})
    return found


def use_codecs(table: Any, key_serializer: str, value_serializer: str) -> None:
    """Make `table` send and recover with these registered codecs.

    Faust picks a table's changelog codecs from its key and value types ("json" for
    anything but a faust.Record) and takes no serializer arguments: sends read the
    table's attributes, recovery decodes with its changelog topic, which the table
    built in its __init__ from the serializers it had then. So both are set here, and
    the topic built again.
    """
    table.key_serializer = key_serializer
    table.value_serializer = value_serializer
    table.changelog_topic = table._new_changelog_topic()


def crash(service: Any, exc: BaseException) -> None:
    """Crash a mode service (the app) as mode does for an uncaught error: it stops."""
    service._crash(exc)


def recovery_of(app: AppT) -> Any | None:
    """The app's table recovery service (None before the tables are set up).

    `TableManager.recovery` is public but not part of `TableManagerT`.
    """
    recovery: Any | None = getattr(app.tables, "recovery", None)
    return recovery


async def fetch_metadata(consumer: AIOKafkaConsumer) -> Any:
    """The cluster's metadata for every topic (`ClusterMetadata`), fetched now.

    aiokafka's consumer offers partitions of subscribed topics only; its client asks
    for all of them.
    """
    return await consumer._client.fetch_all_metadata()


async def close_http_client(app: faust.App) -> None:
    """Close the app's HTTP client if it made one (as its stop does)."""
    await app._maybe_close_http_client()


def app_tasks(app: faust.App) -> list[Callable[[], Awaitable[Any]]]:
    """The tasks and timers the app starts with, in the order they were registered."""
    return list(app._app_tasks)


def enabled_blueprints(web: Any) -> list[tuple[str, Any]]:
    """The (URL prefix, blueprint) pairs Faust's web server serves."""
    return list(web._enabled_blueprints())
