"""The Faust app: topics, tables, thin agents around the `Pipeline`, the timer, HTTP.

Everything about money lives in `processor.core`; this module only wires Kafka to it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from faust.types import TP, Message, StreamT
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from processor.config.settings import Settings
from processor.core import account as acc
from processor.core.engine import DedupeWindow, dedupe_tenant
from processor.core.rating import RateCard
from processor.http import admin, auth, command_status
from processor.http.problems import PROBLEM_JSON, as_is, install_fallback, problem_body
from processor.http.views import account_view, authorize_problem, authorize_view, tenant_id_problem
from processor.kafka import options as kafka_options
from processor.kafka.changelog import ChangelogReader
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.observability import metrics, observe
from processor.worker import consumer as consumer_
from processor.worker import store
from processor.worker.codec import dump_mark, dump_stored
from processor.worker.faust_app import faust_app, record_of, register_codecs
from processor.worker.flusher import Deliveries
from processor.worker.intake import minimal_rejection
from processor.worker.pipeline import Pipeline
from processor.worker.publisher import TransactionalPublisher
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


FORWARDED_HEADER = "X-Meter-Forwarded-By"
# A read forwarded to the tenant's owner gets this long, all in (connect, send,
# answer); past it the client hears 503 and when to retry, rather than wait on a
# worker that is stuck or gone (the session's default is minutes).
FORWARD_TIMEOUT_SECONDS = 2.0
# Every 503 of the read API says when to try again: a reassignment or an owner's
# restart takes seconds.
RETRY_AFTER_SECONDS = 2
# A bulk changelog read that has not reached the end by then fails the rebalance (and
# the worker restarts) rather than serve a partial state; ~50,000 values/s here.
RECOVERY_READ_SECONDS = 600.0


# A round's transaction must commit within this (rounds take milliseconds).
TRANSACTION_TIMEOUT_MS = 10_000
# How long a crashed worker may take to stop before it exits anyway.
CRASH_EXIT_SECONDS = 20.0


def _exit_after_crash() -> None:
    log.error("crashed worker still running after %.0fs: exiting", CRASH_EXIT_SECONDS)
    logging.shutdown()
    os._exit(1)


def _error(status: int, code: str, detail: str, tenant_id: str | None) -> bytes:
    # RFC 9457 problem details (processor/http/problems.py), with the promised fields.
    return problem_body(status, code, detail, tenant_id=tenant_id)


def _content_type(status: int) -> str:
    # An error is problem details, here or forwarded from the owner (the same code).
    return PROBLEM_JSON if status >= 400 else "application/json"


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
    ) -> None:
        """`publisher`: where the rounds go instead of Kafka transactions, and `clock`:
        the time records are applied at (both for tests)."""
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
        policy = acc.RechargePolicy(
            timeout=timedelta(seconds=cfg.recharge_timeout_seconds),
            retry_after=timedelta(seconds=cfg.recharge_retry_after_seconds),
            max_attempts=cfg.recharge_max_attempts,
        )
        # Recovery keeps the account value with the highest write counter, and reads
        # the changelogs in bulk (processor/worker/store.py).
        table_store = store.register() if cfg.store == "memory://" else cfg.store
        self.accounts = self.app.Table("accounts", partitions=partitions, store=table_store)
        self.seen = self.app.Table("dedupe", partitions=partitions, store=table_store)
        # Faust picks a table's changelog codecs from its key and value types ("json"
        # for anything but a faust.Record): sends pass the table's attributes, recovery
        # decodes with its changelog topic, which the table built in its constructor.
        # Both must name our codecs, so set the attributes and build the topic again.
        self.tally = AccountTally()
        tables: tuple[tuple[Any, str], ...] = (
            (self.accounts, "meter-account"),
            (self.seen, "meter-mark"),
        )
        for table, value_codec in tables:
            table.key_serializer = "meter-str"
            table.value_serializer = value_codec
            table.changelog_topic = table._new_changelog_topic()
        # Each round's records go out in one Kafka transaction per partition number
        # (processor/worker/publisher.py); the stores start a partition's producer, fencing
        # its earlier owner, before they read its changelog.
        client_options = kafka_options.kafka_client_options(cfg)
        self.publisher = TransactionalPublisher(
            cfg.app_id,
            lambda transactional_id: AIOKafkaProducer(
                bootstrap_servers=broker.bootstrap,
                transactional_id=transactional_id,
                # Kafka Streams' default under exactly-once: a worker killed with a
                # transaction open holds read_committed consumers back this long at most
                # (its successor's producer aborts it at once).
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                **client_options,
            ),
            # A lone output the broker refuses as too large becomes a minimal rejection.
            fallback=functools.partial(minimal_rejection, self.names, clock),
        )
        for table in (self.accounts, self.seen):
            if isinstance(table.data, store.SeqMemoryStore):
                table.data.attach(
                    reader=ChangelogReader(
                        broker.bootstrap,
                        kafka_options.kafka_client_options(cfg),
                        within=RECOVERY_READ_SECONDS,
                    ),
                    fence=self.publisher.assign,
                    tally=self.tally if table is self.accounts else None,
                    unit=card.unit if table is self.accounts else None,
                )

        @self.app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def _stop_producers(sender: Any, **kwargs: Any) -> None:
            await self.publisher.stop()

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
            self.seen.data,
            self.names,
            partitions,
            publisher or self.publisher,
            expiry=acc.ExpiryPolicy(
                expire_after=timedelta(days=cfg.funds_expire_days)
                if cfg.funds_expire_days
                else None,
                notice=timedelta(days=cfg.funds_expiring_notice_days),
            ),
            changelogs=(
                Changelog(self.accounts.changelog_topic.get_topic_name(), dump_stored, str),
                Changelog(self.seen.changelog_topic.get_topic_name(), dump_mark, dedupe_tenant),
            ),
            batch_max=cfg.batch_max,
            # `limits`: each topic's max.message.bytes (topics.max_message_bytes).
            limits=Limits(self.app.conf.producer_max_request_size, dict(limits or {})),
            deliveries=Deliveries(self._committed_offset),
            landed=self._landed,
            clock=clock,
        )
        self.timer = RechargeTimer(
            self.pipeline, self.tally, self.seen.data, self._owned_partitions
        )
        self._crashed = False
        self.forward_timeout = FORWARD_TIMEOUT_SECONDS
        # Who may call which endpoint (processor/http/auth.py; METER_AUTH).
        self.access = auth.access_from(cfg)
        self._declare_agents()
        self._declare_timer()
        self._declare_web()
        observe.install(self)
        admin.install(self)
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
                flusher.hold(event.message)
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

    def stage(self, messages: list[Message]) -> None:
        """Take a fetch's input records (`consumer.Sink`); each is acked once landed.

        The worker's fetch loop hands these over without Faust's streams (see
        `GuardedConsumer._drain_messages`). They are staged on the next turn of the
        loop, not in the fetch loop itself, so that the next fetch is asked for first
        (aiokafka asks the broker for more only once the last fetch's records are
        taken): staged in the loop, a record arriving meanwhile waited for the whole
        fetch's staging before it was even fetched.
        """
        if not messages:
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
            self.app._crash(exc)
        finally:
            if staged is not None and not staged.done():
                staged.set_result(None)

    def _stage_each(self, messages: list[Message]) -> None:
        app = self.app
        consumer = app.consumer
        flowing = app.flow_control.is_active()
        generation = app.consumer_generation_id
        sources = self._direct_sources
        intake, flusher = self.pipeline.intake, self.pipeline.flusher
        for message in messages:
            if not flowing or message.generation_id != generation:
                message.ack(consumer)
                continue
            # Tracked, the record keeps a rebalance waiting until its ack (`_landed`).
            consumer.track_message(message)
            intake.stage(sources[message.topic], record_of(message))
            flusher.hold(message)

    def full(self) -> bool:
        return len(self._fetched) >= self.cfg.batch_max or self.pipeline.flusher.full()

    async def room(self) -> None:
        if self._fetched:
            if self._all_staged is None:
                self._all_staged = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._all_staged)
        await self.pipeline.flusher.room()

    def _landed(self, messages: list[Message], failure: Exception | None) -> None:
        """The last ack of records whose flush has landed (and only then)."""
        consumer = self.app.consumer
        if failure is not None:
            # Untracked but not taken: the guard refuses these acks (nothing is
            # committed past them), and a rebalance or the shutdown the crash starts
            # no longer waits for records that will never land here.
            for message in messages:
                message.ack(consumer)
            self._crash_undelivered(failure)
            return
        took = self.taken.took
        for message in messages:
            took(message.tp, message.offset)
            message.ack(consumer)

    def _crash_undelivered(self, exc: BaseException) -> None:
        if self._crashed:
            return
        self._crashed = True
        # The broker refused an output or a state record after the producer's
        # retries: crash, so the worker restarts and replays the batch (its offsets
        # are not committed), rather than commit past a record that never landed.
        metrics.OUTPUT_ERRORS.inc()
        log.error("batch not delivered: %r", exc)
        self.app._crash(exc)
        # Faust's shutdown can hang in the middle of a rebalance (a fenced zombie's
        # is); a crash must end the process so that it starts afresh. Exiting at any
        # point is safe: it is what kill -9 does, and the fault suite proves that.
        asyncio.get_running_loop().call_later(CRASH_EXIT_SECONDS, _exit_after_crash)

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
        committed: Any = getattr(self.app.consumer, "_committed_offset", {})
        offset = committed.get(TP(topic, int(partition)))
        return offset if isinstance(offset, int) else None

    def _owned_partitions(self) -> set[int]:
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # not yet assigned
            return set()
        return {tp.partition for tp in actives if tp.topic == self.names.calls}

    # ---- HTTP ---------------------------------------------------------------------

    def _declare_web(self) -> None:
        app = self.app
        meter = self
        # What aiohttp and Faust answer on their own (unknown path, method not
        # served, an exception) leaves as problem details too.
        install_fallback(app.web)
        # METER_AUTH=jwt: every endpoint but the open ones needs a token allowing it.
        cast(Any, app.web).web_app.middlewares.append(auth.middleware(meter.access))

        @app.page("/tenants/{tenant_id}/account")
        class AccountPage(View):
            async def get(self, request: Request, tenant_id: str) -> Response:
                status, body, headers = await meter.account_response(
                    tenant_id,
                    forwarded=FORWARDED_HEADER in request.headers,
                    authorization=request.headers.get("Authorization"),
                )
                return self.bytes(
                    body, content_type=_content_type(status), status=status, headers=headers
                )

        @app.page("/tenants/{tenant_id}/authorize")
        class AuthorizePage(View):
            async def get(self, request: Request, tenant_id: str) -> Response:
                query = cast(web.Request, request).query
                status, body, headers = await meter.authorize_response(
                    tenant_id,
                    query.get("service"),
                    query.get("number"),
                    forwarded=FORWARDED_HEADER in request.headers,
                    authorization=request.headers.get("Authorization"),
                )
                return self.bytes(
                    body, content_type=_content_type(status), status=status, headers=headers
                )

        @app.page("/auth/whoami")
        class WhoAmIPage(View):
            async def get(self, request: Request) -> Response:
                # Checked by auth.middleware under METER_AUTH=jwt; else the static token.
                principal = auth.principal_of(request)
                if principal is None:
                    try:
                        principal = meter.access.principal(request.headers)
                    except auth.AuthError as refused:
                        return cast(Response, refused.answer(None))
                return self.bytes(auth.whoami_body(principal), content_type="application/json")

        @app.page("/metrics")
        class MetricsPage(View):
            async def get(self, request: Request) -> Response:
                # aiohttp refuses a charset inside content_type, so the exposition
                # format's own content type goes in without it.
                return self.bytes(
                    generate_latest(metrics.REGISTRY),
                    content_type="text/plain; version=0.0.4",
                )

        @app.page("/health")
        class HealthPage(View):
            async def get(self, request: Request) -> Response:
                return self.bytes(b'{"status":"ok"}', content_type="application/json")

        @app.page("/ready")
        class ReadyPage(View):
            async def get(self, request: Request) -> Response:
                ready, detail = meter.readiness()
                # A probe's answer, not an error: the contract's body, and like every
                # 503 a Retry-After.
                response = self.bytes(
                    orjson.dumps({"ready": ready, "detail": detail}),
                    content_type="application/json",
                    status=200 if ready else 503,
                    headers=None if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
                as_is(cast(web.Response, response))
                return response

        self.pages = (
            AccountPage,
            AuthorizePage,
            WhoAmIPage,
            MetricsPage,
            HealthPage,
            ReadyPage,
        )

    # ---- the account read API, answered from any worker -------------------------------

    def owner_url(self, tenant_id: str) -> str | None:
        """The HTTP address of the worker whose active partitions hold this tenant."""
        partition = partition_for(tenant_id, self.partitions)
        changelog = self.accounts.changelog_topic.get_topic_name()
        for url, topics in self.app.router.table_metadata(self.accounts.name).items():
            if partition in topics.get(changelog, ()):
                return str(url)
        return None

    async def account_response(
        self, tenant_id: str, forwarded: bool, authorization: str | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """GET /tenants/{tenant_id}/account: the owner's answer (`_owner_answer`)."""

        def local(stored: Any) -> tuple[int, bytes, dict[str, str]]:
            if stored is None:
                return 404, _error(404, "not_found", "no event for this tenant yet", tenant_id), {}
            return (
                200,
                orjson.dumps(
                    account_view(stored.account, self.card.currency, self.pipeline.intake.clock())
                ),
                {},
            )

        return await self._owner_answer(tenant_id, forwarded, "account", local, authorization)

    async def authorize_response(
        self,
        tenant_id: str,
        service: str | None,
        number: str | None,
        forwarded: bool,
        authorization: str | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """GET /tenants/{tenant_id}/authorize?service=&number=: may this call start, and
        for how long at most (processor/http/views.py), from the owner like the account."""
        problem = tenant_id_problem(tenant_id)
        if problem is None:
            bad = authorize_problem(service, number)
            if bad is not None:
                return 400, _error(400, bad[0], bad[1], tenant_id), {}
            assert service is not None and number is not None

        def local(stored: Any) -> tuple[int, bytes, dict[str, str]]:
            assert service is not None and number is not None
            account = None if stored is None else stored.account
            view = authorize_view(tenant_id, account, self.card, service, number)
            return 200, orjson.dumps(view), {}

        query = urlencode({"service": service or "", "number": number or ""})
        return await self._owner_answer(
            tenant_id, forwarded, f"authorize?{query}", local, authorization
        )

    async def _owner_answer(
        self,
        tenant_id: str,
        forwarded: bool,
        page: str,
        local: Callable[[Any], tuple[int, bytes, dict[str, str]]],
        authorization: str | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """Answer here if this worker owns the tenant, else ask the owner for
        `/tenants/{tenant_id}/{page}`; `local` answers from the stored account (None:
        never seen).

        The id is validated first: one that breaks the contract's pattern is a 400 and
        is never hashed, cached or forwarded. Faust's own table_route asks the producer
        for the changelog's partitions, which it only knows after writing to them, so
        it fails on a fresh worker; the owner is found here from the assignment
        instead. A worker that is not (or not yet) the owner answers 503 rather than a
        wrong 404; every 503 carries Retry-After. The caller's Authorization goes
        along: under METER_AUTH=jwt the owner checks the token again, so the hop's
        header (X-Meter-Forwarded-By, which anyone can send) grants nothing.
        """
        problem = tenant_id_problem(tenant_id)
        if problem is not None:
            return 400, _error(400, "invalid_tenant_id", problem, None), {}
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        owner = self.owner_url(tenant_id)
        me = str(self.app.conf.canonical_url)
        if owner is not None and owner != me and not forwarded:
            url = f"{owner.rstrip('/')}/tenants/{quote(tenant_id, safe='')}/{page}"
            try:
                forward = {FORWARDED_HEADER: me}
                if authorization is not None:
                    forward["Authorization"] = authorization
                async with self.app.http_client.get(
                    url,
                    headers=forward,
                    timeout=aiohttp.ClientTimeout(total=self.forward_timeout),
                ) as resp:
                    status, body = resp.status, await resp.read()
            except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
                detail = f"{owner} did not answer within {self.forward_timeout:g}s"
                return 503, _error(503, "owner_unreachable", detail, tenant_id), retry
            except aiohttp.ClientError as exc:
                return 503, _error(503, "owner_unreachable", f"{owner}: {exc!r}", tenant_id), retry
            return status, body, retry if status == 503 else {}
        partition = partition_for(tenant_id, self.partitions)
        if owner != me or partition not in self._owned_partitions() or not self.readiness()[0]:
            return (
                503,
                _error(
                    503,
                    "unavailable",
                    "the tenant's partition is being reassigned; retry",
                    tenant_id,
                ),
                retry,
            )
        return local(self.accounts.get(tenant_id))

    def readiness(self) -> tuple[bool, str]:
        """Ready = partitions assigned and every table recovered, not mid-rebalance."""
        app = self.app
        if app.rebalancing:
            return False, "rebalancing"
        recovery: Any = getattr(app.tables, "recovery", None)
        if app.in_recovery or recovery is None or not recovery.completed.is_set():
            return False, "recovering state"
        if not self._owned_partitions():
            return False, "no partitions assigned"
        return True, "ok"
