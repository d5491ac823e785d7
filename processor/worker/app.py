"""The Faust app: topics, tables, thin agents around the `Pipeline`, the timer, HTTP.

Everything about money lives in `processor.core`; this module only wires Kafka to it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

from faust.types import TP, Message, StreamT

from processor.config.settings import Settings
from processor.core.dedupe import DedupeWindow, dedupe_tenant
from processor.core.rating import RateCard
from processor.core.state import ExpiryPolicy, RechargePolicy
from processor.http import admin_web, auth, command_status
from processor.http.accounts import AccountAPI
from processor.kafka import glue
from processor.kafka import options as kafka_options
from processor.kafka.changelog import ChangelogReader
from processor.kafka.topics import TopicNames
from processor.observability import metrics, observe
from processor.worker import consumer as consumer_
from processor.worker import store, web
from processor.worker.codec import dump_stored
from processor.worker.collector import Collector
from processor.worker.faust_app import faust_app, register_codecs
from processor.worker.fetched import FetchedStager, input_bytes, record_of
from processor.worker.flusher import Deliveries
from processor.worker.intake import minimal_rejection
from processor.worker.marks import MarkStore
from processor.worker.marks_log import MarksLog
from processor.worker.pipeline import Pipeline
from processor.worker.publisher import TransactionalPublisher, transactional_producer
from processor.worker.records import Changelog, Publisher, Record, Source, utcnow
from processor.worker.sizing import Limits
from processor.worker.tally import AccountTally
from processor.worker.timer import RechargeTimer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    """How to reach Kafka: addresses plus the client options a secure cluster needs."""

    bootstrap: str

    def faust_urls(self) -> list[str]:
        return [f"kafka://{h.strip()}" for h in self.bootstrap.split(",") if h.strip()]


# A bulk changelog read that has not reached the end by then fails the rebalance (and
# the worker restarts) rather than serve a partial state; ~50,000 values/s here.
RECOVERY_READ_SECONDS = 600.0


# How long a crashed worker may take to stop before it exits anyway.
CRASH_EXIT_SECONDS = 20.0


def _exit_after_crash() -> None:
    log.error("crashed worker still running after %.0fs: exiting", CRASH_EXIT_SECONDS)
    logging.shutdown()
    os._exit(1)


class Meter:
    """One worker's app. Build it with `create_meter`; run it with `faust.Worker`."""

    def __init__(
        self,
        cfg: Settings,
        card: RateCard,
        broker: Broker,
        partitions: int,
        web_host: str = "127.0.0.1",
        limits: Mapping[str, int] | None = None,
        *,
        publisher: Publisher | None = None,
        clock: Callable[[], datetime] = utcnow,
        collector: Collector | None = None,
    ) -> None:
        """`publisher`: where the rounds go instead of Kafka transactions, and `clock`:
        the time records are applied at (both for tests). `collector`: the process's
        garbage collector policy, installed by the caller, renewed here at a
        rebalance (none in tests, which share their process)."""
        self.cfg = cfg
        self.card = card
        self.partitions = partitions
        self.names = TopicNames.from_settings(cfg)
        register_codecs()
        self.app = faust_app(cfg, broker.faust_urls(), partitions, web_host)
        n = self.names
        # Commits count only records the flusher landed (processor/worker/consumer.py); the
        # contract's input topics' records come straight from the fetch loop (`stage`).
        self.taken = consumer_.install(
            self.app,
            (n.calls, n.conferencing, n.commands, n.reroute, n.timer),
            direct=(n.calls, n.conferencing, n.commands),
            sink=self,
        )
        self._direct_sources = {
            n.calls: Source.CALLS,
            n.conferencing: Source.CONFERENCING,
            n.commands: Source.COMMANDS,
        }
        # Handed over by the fetch loop, staged on the loop's next turn.
        self._fetched: list[Message] = []
        self._all_staged: asyncio.Future[None] | None = None
        # The fetch the loop is handing over: how many of its records are still to
        # come, and the flusher's future, done once all of it is staged
        # (`_fetch_in_hand`).
        self._fetch_rest = 0
        self._fetch_staged: asyncio.Future[None] | None = None
        policy = RechargePolicy(
            timeout=timedelta(seconds=cfg.recharge_timeout_seconds),
            retry_after=timedelta(seconds=cfg.recharge_retry_after_seconds),
            max_attempts=cfg.recharge_max_attempts,
        )
        # Recovery keeps the newest account value (`StoredAccount.order`: epoch,
        # generation, write counter), and reads the changelogs in bulk
        # (processor/worker/store.py).
        table_store = store.register() if cfg.store == "memory://" else cfg.store
        self.accounts = self.app.Table("accounts", partitions=partitions, store=table_store)
        # The dedupe marks: compact, read back with the accounts (processor/worker/marks.py).
        self.marks = MarkStore(partitions)
        self.tally = AccountTally()
        glue.use_codecs(self.accounts, "meter-str", "meter-account")
        # Each round's records go out in one Kafka transaction per partition number, or per
        # group of them this worker owns whole (processor/worker/publisher.py); the stores
        # start a partition's producers, fencing its earlier owner, before they read its
        # changelog.
        client_options = kafka_options.kafka_client_options(cfg)
        # `limits`: each topic's max.message.bytes (topics.max_message_bytes).
        sizes = Limits(self.app.conf.producer_max_request_size, dict(limits or {}))
        self.publisher = TransactionalPublisher(
            cfg.app_id,
            lambda transactional_id: transactional_producer(
                broker.bootstrap, transactional_id, sizes.batch_bytes(), client_options
            ),
            # A lone output the broker refuses as too large becomes a minimal rejection.
            fallback=functools.partial(minimal_rejection, self.names, clock),
            partitions=partitions,
        )
        if isinstance(self.accounts.data, store.SeqMemoryStore):
            self.accounts.data.attach(
                reader=ChangelogReader(
                    broker.bootstrap,
                    kafka_options.kafka_client_options(cfg),
                    within=RECOVERY_READ_SECONDS,
                    producers=self.publisher.producer_ids,
                ),
                fence=self.publisher.assign,
                tally=self.tally,
                unit=card.unit,
                marks=self.marks,
                marks_topics=(self.names.dedupe_marks, self.names.dedupe_changelog),
            )

        @self.app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def _stop_producers(sender: Any, **kwargs: Any) -> None:
            await self.publisher.stop()

        if collector is not None:
            self._declare_renewal(collector)

        @self.app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def _release_producers(sender: Any, revoked: Any, **kwargs: Any) -> None:
            await self.publisher.release({tp.partition for tp in revoked})

        # The engine works on the tables' stores: the flusher writes their changelogs
        # itself, once per batch and after the batch's outputs (processor/worker/flusher.py).
        self.pipeline = Pipeline.build(
            card,
            policy,
            DedupeWindow(cfg.dedupe_days, cfg.max_future_seconds),
            self.accounts.data,
            self.marks,
            self.names,
            partitions,
            publisher or self.publisher,
            expiry=ExpiryPolicy(
                expire_after=timedelta(days=cfg.funds_expire_days)
                if cfg.funds_expire_days
                else None,
                notice=timedelta(days=cfg.funds_expiring_notice_days),
            ),
            changelogs=(
                Changelog(self.accounts.changelog_topic.get_topic_name(), dump_stored, str),
                MarksLog(self.names.dedupe_marks, dedupe_tenant),
            ),
            batch_max=cfg.batch_max,
            batch_max_bytes=cfg.batch_max_bytes,
            limits=sizes,
            deliveries=Deliveries(self._committed_offset),
            landed=self._landed,
            fetch_in_hand=self._fetch_in_hand,
            clock=clock,
        )
        self._stager = FetchedStager(
            self._direct_sources, self.pipeline.intake, self.pipeline.flusher
        )
        self.timer = RechargeTimer(self.pipeline, self.tally, self.marks, self._owned_partitions)
        self._crashed = False
        # Who may call which endpoint (processor/http/auth.py; METER_AUTH).
        self.access = auth.access_from(cfg)
        # The account read API, answered from any worker (processor/http/accounts.py).
        self.account_api = AccountAPI(
            card,
            partitions,
            lookup=self.accounts.get,
            owner_url=partial(web.owner_url, self.app, self.accounts, partitions),
            owned_partitions=self._owned_partitions,
            ready=lambda: self.readiness()[0],
            me=lambda: str(self.app.conf.canonical_url),
            session=lambda: self.app.http_client,
            clock=lambda: self.pipeline.intake.clock(),
        )
        self._declare_agents()
        self._declare_timer()
        self.pages = web.install(self.app, self.access, self.account_api, self.readiness)
        observe.install(self)
        admin_web.install(self)
        command_status.install(self)

    # ---- agents ----------------------------------------------------------------

    def _topic(self, name: str) -> Any:
        return self.app.topic(
            name, key_serializer="raw", value_serializer="raw", partitions=self.partitions
        )

    def _declare_agents(self) -> None:
        intake, flusher = self.pipeline.intake, self.pipeline.flusher
        n = self.names
        # The contract's input topics have no agent: the fetch loop hands their
        # records straight to `stage` (processor/worker/consumer.py). Subscribed here, they
        # are assigned and fetched like an agent's topics.
        for name in self._direct_sources:
            self.app.topics.add(self._topic(name))

        async def drive_each(
            stream: StreamT[Any], stage: Callable[[Record], str]
        ) -> AsyncIterator[str]:
            # The processor's own topics' records, one at a time through Faust's stream.
            async for event in stream.events():
                status = stage(record_of(event.message))
                # Faust acks an event once the agent moves on, long before its flush
                # has landed. Holding a reference to its message makes that ack not
                # the last; the last comes when the flush has landed (`_landed`).
                event.message.incref()
                flusher.hold(event.message, input_bytes(event.message))
                if flusher.full():
                    await flusher.room()
                yield status

        @self.app.agent(self._topic(n.reroute), name="rerouted")
        async def rerouted(stream: StreamT[Any]) -> AsyncIterator[str]:
            async for status in drive_each(stream, intake.stage_rerouted):
                yield status

        @self.app.agent(self._topic(n.timer), name="recharge-timer")
        async def ticks(stream: StreamT[Any]) -> AsyncIterator[str]:
            async for status in drive_each(stream, intake.stage_tick):
                yield status

        self.agents = {
            "rerouted": rerouted,
            "ticks": ticks,
        }

    # ---- the input topics' records, straight from the fetch loop ---------------------

    def stage(self, messages: list[Message], rest: int) -> None:
        """Take a fetch's input records (`consumer.Sink`); each is acked once landed.

        The worker's fetch loop hands these over without Faust's streams (see
        `GuardedConsumer._drain_messages`). They are staged on the next turn of the
        loop, not in the fetch loop itself, so that the next fetch is asked for first
        (aiokafka asks the broker for more only once the last fetch's records are
        taken): staged in the loop, a record arriving meanwhile waited for the whole
        fetch's staging before it was even fetched.
        """
        self._fetch_rest = rest
        if not messages:
            self._fetch_done()
            return
        # Records waiting means a staging is already scheduled.
        if not self._fetched:
            asyncio.get_running_loop().call_soon(self._stage_fetched)
        self._fetched.extend(messages)

    def _stage_fetched(self) -> None:
        # What a stream does with a record as it dequeues it is done here: one dequeued
        # while the flow is stopped for a rebalance, or fetched in an older generation,
        # is not processed, and its ack is refused so that nothing is committed past it
        # before the rebalance's seek reads it again.
        messages, self._fetched = self._fetched, []
        staged, self._all_staged = self._all_staged, None
        try:
            self._stage_each(messages)
        except Exception as exc:
            # Intake turns a bad record into a rejection; anything else here is a
            # bug, and the records after it are neither staged nor acked: restart and
            # read them again rather than stall the commits.
            log.exception("staging fetched records failed")
            glue.crash(self.app, exc)
        finally:
            if staged is not None and not staged.done():
                staged.set_result(None)
            self._fetch_done()

    def _fetch_in_hand(self) -> asyncio.Future[None] | None:
        """For the flusher, which cuts no round in the middle of a fetch: a future done
        once the fetch being handed over is all staged, or None if it is."""
        if self._fetch_staged_whole():
            return None
        if self._fetch_staged is None:
            self._fetch_staged = asyncio.get_running_loop().create_future()
        return self._fetch_staged

    def _fetch_staged_whole(self) -> bool:
        return not (self._fetch_rest or self._fetched)

    def _fetch_done(self) -> None:
        if self._fetch_staged_whole():
            self._release_flusher()

    def _release_flusher(self) -> None:
        done, self._fetch_staged = self._fetch_staged, None
        if done is not None and not done.done():
            done.set_result(None)

    def _stage_each(self, messages: list[Message]) -> None:
        app = self.app
        generation = app.consumer_generation_id if app.flow_control.is_active() else None
        self._stager.stage(messages, generation, self._consumer())

    def _consumer(self) -> consumer_.GuardedConsumer:
        return cast(consumer_.GuardedConsumer, self.app.consumer)

    def full(self) -> bool:
        return len(self._fetched) >= self.cfg.batch_max or self.pipeline.flusher.full()

    async def room(self) -> None:
        if self._fetched:
            if self._all_staged is None:
                self._all_staged = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._all_staged)
        if self.pipeline.flusher.full():
            # The flusher may be waiting for the rest of this fetch, which now waits
            # for the flusher's next take.
            self._release_flusher()
        await self.pipeline.flusher.room()

    def _landed(self, messages: list[Message], failure: Exception | None) -> None:
        """The last ack of records whose flush has landed (and only then).

        The input topics' records are settled per partition at once (`settle`); the
        agents' records, which Faust's streams track one by one, are acked each.
        """
        consumer = self._consumer()
        direct = self._direct_sources
        if failure is not None:
            # Not taken: the guard refuses these acks (nothing is committed past
            # them), and a rebalance or the shutdown the crash starts no longer waits
            # for records that will never land here.
            for message in messages:
                message.ack(consumer)
            consumer.unstaged(sum(message.topic in direct for message in messages))
            self._crash_undelivered(failure)
            return
        took = self.taken.took
        settled: dict[TP, list[Message]] = {}
        for message in messages:
            if message.topic in direct:
                tp = message.tp
                if tp in settled:
                    settled[tp].append(message)
                else:
                    settled[tp] = [message]
            else:
                took(message.tp, message.offset)
                message.ack(consumer)
        for tp, landed in settled.items():
            consumer.settle(tp, landed)

    def _crash_undelivered(self, exc: BaseException) -> None:
        if self._crashed:
            return
        self._crashed = True
        # The broker refused an output or a state record after the producer's
        # retries: crash, so the worker restarts and replays the batch (its offsets
        # are not committed), rather than commit past a record that never landed.
        metrics.OUTPUT_ERRORS.inc()
        log.error("batch not delivered: %r", exc)
        glue.crash(self.app, exc)
        # Faust's shutdown can hang in the middle of a rebalance (a fenced zombie's
        # is); a crash must end the process so that it starts afresh. Exiting at any
        # point is safe: it is what kill -9 does, and the fault suite proves that.
        asyncio.get_running_loop().call_later(CRASH_EXIT_SECONDS, _exit_after_crash)

    def _declare_renewal(self, collector: Collector) -> None:
        @self.app.on_rebalance_complete.connect  # type: ignore[arg-type]
        async def _renew(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
            # The records are stopped for the rebalance: the full pass that frees what
            # was frozen and has since become cyclic garbage adds least here.
            began = time.perf_counter()
            collected = collector.renew_if_due()
            if collected is not None:
                log.info(
                    "garbage collected at the rebalance: %d objects in %.3f s",
                    collected,
                    time.perf_counter() - began,
                )

    # ---- the recharge timer --------------------------------------------------------

    def _declare_timer(self) -> None:
        @self.app.on_rebalance_complete.connect  # type: ignore[arg-type]
        async def _on_rebalanced(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.timer.rebalanced()

        @self.app.timer(  # type: ignore[untyped-decorator]
            interval=self.cfg.timer_interval_seconds, name="recharge-timer"
        )
        async def recharge_timer() -> None:
            try:
                await self.timer.turn()
            except Exception as exc:
                self._crash_undelivered(exc)
                raise

    def _committed_offset(self, tp: str) -> int | None:
        """The group's committed offset for `topic:partition`, as this worker knows it."""
        topic, _, partition = tp.rpartition(":")
        offset = glue.committed_offsets(self.app.consumer).get(TP(topic, int(partition)))
        return offset if isinstance(offset, int) else None

    def _owned_partitions(self) -> set[int]:
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # not yet assigned
            return set()
        return {tp.partition for tp in actives if tp.topic == self.names.calls}

    def readiness(self) -> tuple[bool, str]:
        """Ready = partitions assigned and every table recovered, not mid-rebalance."""
        app = self.app
        if app.rebalancing:
            return False, "rebalancing"
        recovery = glue.recovery_of(app)
        if app.in_recovery or recovery is None or not recovery.completed.is_set():
            return False, "recovering state"
        if not self._owned_partitions():
            return False, "no partitions assigned"
        return True, "ok"
