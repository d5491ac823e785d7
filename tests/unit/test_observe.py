"""processor.observability.observe against fakes of the Faust app, consumer and table."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import faust
import pytest
from faust.types import TP

from processor.config.settings import Settings
from processor.kafka import glue
from processor.kafka.routing import partition_for
from processor.kafka.topics import TopicNames
from processor.observability import metrics, observe

PARTITIONS = 4
CFG = Settings(_env_file=None, METER_TOPIC_PREFIX="t.")
NAMES = TopicNames.from_settings(CFG)


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def series(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of a gauge now exported, keyed by its sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in metrics.REGISTRY.collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def tenants_on(partition: int, n: int) -> list[str]:
    """`n` tenant ids that the processor routes to `partition`."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        tenant = f"tenant-{i}"
        if partition_for(tenant, PARTITIONS) == partition:
            found.append(tenant)
        i += 1
    return found


@dataclass
class Acct:
    balance: Decimal


@dataclass
class Wrapped:
    """The shape the stored value may take next: a wrapper holding the account."""

    account: Acct


class FakeConsumer:
    def __init__(self) -> None:
        self.assigned: set[TP] = set()
        self.highwaters: dict[TP, int | None] = {}
        # Faust's name for it, which the glue reads (glue.committed_offsets).
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.committed = self._committed_offset
        self.positions: dict[TP, int] = {}
        self.fail_assignment = False

    def assignment(self) -> set[TP]:
        if self.fail_assignment:
            raise RuntimeError("consumer not started")
        return set(self.assigned)

    def highwater(self, tp: TP) -> int | None:
        # aiokafka asserts the partition is assigned.
        assert tp in self.assigned, "Partition is not assigned"
        return self.highwaters.get(tp)

    async def position(self, tp: TP) -> int:
        return self.positions[tp]


class FakeAssignor:
    def __init__(self) -> None:
        self.actives: set[TP] = set()

    def assigned_actives(self) -> set[TP]:
        return set(self.actives)


@dataclass
class FakeApp:
    consumer: FakeConsumer = field(default_factory=FakeConsumer)
    assignor: FakeAssignor = field(default_factory=FakeAssignor)


@dataclass
class Card:
    currency: str = "USD"


@dataclass
class FakeMeter:
    app: Any = field(default_factory=FakeApp)
    accounts: Any = field(default_factory=dict)
    partitions: int = PARTITIONS
    names: TopicNames = NAMES
    cfg: Settings = CFG
    card: Card = field(default_factory=Card)
    ready: tuple[bool, str] | Exception = (True, "ok")

    def readiness(self) -> tuple[bool, str]:
        if isinstance(self.ready, Exception):
            raise self.ready
        return self.ready

    def own(self, *partitions: int) -> None:
        self.app.assignor.actives = {TP(NAMES.calls, p) for p in partitions}

    def limit(self, n: int) -> None:
        self.cfg = CFG.model_copy(update={"metrics_tenant_balances": n})


@pytest.fixture(autouse=True)
def clean_gauges() -> Iterator[None]:
    # The registry is process-wide; start and leave these label sets empty.
    for gauge in (metrics.CONSUMER_LAG, metrics.TENANT_BALANCE):
        gauge.clear()
    yield
    for gauge in (metrics.CONSUMER_LAG, metrics.TENANT_BALANCE):
        gauge.clear()


def observer(meter: FakeMeter, chunk: int = observe.CHUNK) -> observe.Observer:
    return observe.Observer(meter, balance_of=lambda v: v.balance, chunk=chunk)


# ---- settings ---------------------------------------------------------------------


def test_tenant_balance_export_is_off_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(_env_file=None).metrics_tenant_balances == 0
    monkeypatch.setenv("METER_METRICS_TENANT_BALANCES", "25")
    assert Settings(_env_file=None).metrics_tenant_balances == 25
    monkeypatch.setenv("METER_METRICS_TENANT_BALANCES", "-1")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Settings(_env_file=None)


# ---- wiring -----------------------------------------------------------------------


def test_the_real_meter_has_everything_the_observers_read() -> None:
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.worker.app import Broker, Meter

    meter = Meter(
        Settings(_env_file=None),
        load_rate_card(example_rate_card_path()),
        Broker("127.0.0.1:1"),
        partitions=PARTITIONS,
    )
    members = {n for n in vars(observe.MeterLike) if not n.startswith("_")}
    assert members == {"app", "accounts", "partitions", "names", "cfg", "card", "readiness"}
    for name in members:
        assert hasattr(meter, name), name
    assert isinstance(meter.card.currency, str)
    assert isinstance(meter.cfg.metrics_tenant_balances, int)
    assert meter.readiness()[0] is False  # not started: not ready, and it does not raise


async def test_install_counts_every_rebalance_and_registers_one_timer() -> None:
    app = faust.App("observe-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    meter = FakeMeter(app=app)
    tasks_before = len(glue.app_tasks(app))
    observe.install(meter)
    assert len(glue.app_tasks(app)) == tasks_before + 1
    assert value("meter_ready") == 0  # until the first round says otherwise

    before = value("meter_rebalances_total") or 0.0
    # What Faust sends at the start of each rebalance (the first join included).
    await app.on_partitions_revoked.send(set())
    await app.on_partitions_revoked.send({TP(NAMES.calls, 0)})
    assert value("meter_rebalances_total") == before + 2


async def test_the_timer_runs_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    app = faust.App("observe-timer", broker="kafka://127.0.0.1:1", autodiscover=False)
    meter = FakeMeter(app=app)
    rounds = asyncio.Event()
    real_tick = observe.Observer.tick

    async def tick(self: observe.Observer) -> None:
        await real_tick(self)
        rounds.set()

    monkeypatch.setattr(observe.Observer, "tick", tick)
    observe.install(meter, interval=0.01)
    assert value("meter_ready") == 0
    # The task Faust starts with the app: its timer loop calling the round.
    task: asyncio.Future[Any] = asyncio.ensure_future(glue.app_tasks(app)[-1]())
    try:
        await asyncio.wait_for(rounds.wait(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert value("meter_ready") == 1


# ---- readiness --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ready", "expected"),
    [((True, "ok"), 1.0), ((False, "rebalancing"), 0.0), (RuntimeError("no tables"), 0.0)],
)
async def test_ready_gauge_follows_readiness(ready: Any, expected: float) -> None:
    metrics.READY.set(1 - expected)
    meter = FakeMeter(ready=ready)
    await observer(meter).update_ready()
    assert value("meter_ready") == expected


# ---- consumer lag -----------------------------------------------------------------


async def test_lag_is_highwater_minus_committed_per_owned_input_partition() -> None:
    meter = FakeMeter()
    c = meter.app.consumer
    calls0, calls1 = TP(NAMES.calls, 0), TP(NAMES.calls, 1)
    commands0, reroute0 = TP(NAMES.commands, 0), TP(NAMES.reroute, 0)
    changelog = TP("credits-meter-accounts-changelog", 0)
    c.assigned = {calls0, calls1, commands0, reroute0, changelog}
    c.highwaters = {calls0: 120, calls1: 50, commands0: 7, reroute0: 0, changelog: 999}
    c.committed.update({calls0: 100, calls1: 50, commands0: 7, changelog: 3})
    c.positions = {reroute0: 0}

    await observer(meter).update_consumer_lag()

    assert series("meter_consumer_lag_records") == {
        (("partition", "0"), ("topic", "calls")): 20.0,
        (("partition", "1"), ("topic", "calls")): 0.0,
        (("partition", "0"), ("topic", "commands")): 0.0,
        (("partition", "0"), ("topic", "reroute")): 0.0,
    }


async def test_lag_before_the_first_commit_uses_the_fetch_position() -> None:
    meter = FakeMeter()
    c = meter.app.consumer
    tp = TP(NAMES.conferencing, 2)
    c.assigned = {tp}
    c.highwaters = {tp: 5000}
    c.positions = {tp: 1200}  # nothing committed yet: a fresh group replaying a backlog
    await observer(meter).update_consumer_lag()
    assert value("meter_consumer_lag_records", topic="conferencing", partition="2") == 3800


async def test_a_partition_never_fetched_reports_no_lag_rather_than_a_guess() -> None:
    meter = FakeMeter()
    c = meter.app.consumer
    tp = TP(NAMES.calls, 0)
    c.assigned = {tp}
    c.highwaters = {tp: None}
    await observer(meter).update_consumer_lag()
    assert series("meter_consumer_lag_records") == {}


async def test_lag_series_of_a_revoked_partition_disappear() -> None:
    meter = FakeMeter()
    c = meter.app.consumer
    kept, moved = TP(NAMES.calls, 0), TP(NAMES.calls, 3)
    c.assigned = {kept, moved}
    c.highwaters = {kept: 10, moved: 30}
    c.committed.update({kept: 5, moved: 1})
    obs = observer(meter)
    await obs.update_consumer_lag()
    assert value("meter_consumer_lag_records", topic="calls", partition="3") == 29

    c.assigned = {kept}  # a rebalance gave partition 3 to another worker
    await obs.update_consumer_lag()
    assert series("meter_consumer_lag_records") == {(("partition", "0"), ("topic", "calls")): 5.0}

    c.fail_assignment = True  # stopping: nothing can be read, nothing is claimed
    await obs.update_consumer_lag()
    assert series("meter_consumer_lag_records") == {}


async def test_lag_never_goes_negative_when_highwater_is_stale() -> None:
    meter = FakeMeter()
    c = meter.app.consumer
    tp = TP(NAMES.calls, 0)
    c.assigned = {tp}
    c.highwaters = {tp: 10}
    c.committed[tp] = 12
    await observer(meter).update_consumer_lag()
    assert value("meter_consumer_lag_records", topic="calls", partition="0") == 0


# ---- per-tenant balances ----------------------------------------------------------


def accounts(balances: dict[str, str]) -> dict[str, Acct]:
    return {t: Acct(Decimal(b)) for t, b in balances.items()}


async def test_no_tenant_series_unless_opted_in() -> None:
    meter = FakeMeter()
    meter.own(0, 1, 2, 3)
    meter.accounts = accounts({"acme": "-1.0000", "globex": "3.0000"})
    obs = observer(meter)
    await obs.update_tenant_balances()
    assert series("meter_tenant_balance") == {}

    meter.limit(5)
    await obs.update_tenant_balances()
    assert len(series("meter_tenant_balance")) == 2

    meter.limit(0)  # switched off again: what was exported goes away
    await obs.update_tenant_balances()
    assert series("meter_tenant_balance") == {}


async def test_only_the_lowest_owned_balances_are_exported_and_stale_ones_dropped() -> None:
    mine = tenants_on(1, 4)
    other = tenants_on(2, 1)
    meter = FakeMeter()
    meter.own(1)
    # Partition numbers of other topics say nothing about where tenants live.
    meter.app.assignor.actives.add(TP("credits-meter-dedupe-changelog", 2))
    meter.limit(2)
    meter.accounts = accounts(
        {mine[0]: "5.0000", mine[1]: "-2.5000", mine[2]: "0.0000", mine[3]: "9.0000"}
    )
    # Lowest of all, but on a partition this worker only holds as a standby.
    meter.accounts[other[0]] = Acct(Decimal("-100"))
    obs = observer(meter)
    await obs.update_tenant_balances()
    assert series("meter_tenant_balance") == {
        (("currency", "USD"), ("tenant", mine[1])): -2.5,
        (("currency", "USD"), ("tenant", mine[2])): 0.0,
    }

    meter.accounts[mine[1]] = Acct(Decimal("50"))  # recharged: no longer among the lowest
    await obs.update_tenant_balances()
    assert series("meter_tenant_balance") == {
        (("currency", "USD"), ("tenant", mine[2])): 0.0,
        (("currency", "USD"), ("tenant", mine[0])): 5.0,
    }


async def test_equal_balances_pick_the_smaller_tenant_ids() -> None:
    result = await observe.lowest_balances(
        [("c", Acct(Decimal(1))), ("a", Acct(Decimal(1))), ("b", Acct(Decimal(1)))],
        2,
        lambda _: True,
        lambda v: v.balance,
    )
    assert result == [(Decimal(1), "a"), (Decimal(1), "b")]


async def test_the_table_walk_yields_to_the_loop_and_matches_a_full_sort() -> None:
    items = [(f"t{i:04d}", Acct(Decimal((i * 7919) % 1000) - 500)) for i in range(1000)]
    ticks = 0
    stop = asyncio.Event()

    async def other_work() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    seen_ticks: list[int] = []

    def balance_of(v: Acct) -> Decimal:
        seen_ticks.append(ticks)
        return v.balance

    def keep(tenant: str) -> bool:
        return tenant[-1] != "7"

    bg = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    result = await observe.lowest_balances(items, 10, keep, balance_of, chunk=100)
    stop.set()
    await bg

    expected = sorted((a.balance, t) for t, a in items if t[-1] != "7")[:10]
    assert result == expected
    # The other task ran between chunks, not only before or after the whole walk.
    assert len(set(seen_ticks)) >= 9


async def test_only_tenants_that_could_rank_are_hashed_to_their_partition() -> None:
    # Ascending balances: after the first chunk nothing later can enter the lowest 5.
    items = [(f"t{i:04d}", Acct(Decimal(i))) for i in range(1000)]
    kept: list[str] = []

    def keep(tenant: str) -> bool:
        kept.append(tenant)
        return True

    result = await observe.lowest_balances(items, 5, keep, lambda v: v.balance, chunk=100)
    assert [t for _, t in result] == ["t0000", "t0001", "t0002", "t0003", "t0004"]
    assert len(kept) == 100


async def test_tenants_added_while_walking_the_in_memory_table_do_not_break_the_round() -> None:
    mine = tenants_on(0, 60)
    meter = FakeMeter()
    meter.own(0)
    meter.limit(3)
    meter.accounts = accounts({t: "1.0000" for t in mine[:40]})
    obs = observer(meter, chunk=5)

    async def agent_adds_tenants() -> None:
        for t in mine[40:]:
            meter.accounts[t] = Acct(Decimal("-1"))
            await asyncio.sleep(0)

    adder = asyncio.create_task(agent_adds_tenants())
    await obs.update_tenant_balances()  # a live dict view would raise RuntimeError here
    await adder
    assert len(series("meter_tenant_balance")) == 3


# ---- the stored value -------------------------------------------------------------


def test_balance_is_read_from_an_account_or_a_wrapper_around_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import processor.worker.codec

    monkeypatch.delattr(processor.worker.codec, "balance_of", raising=False)
    balance_of = observe.load_balance_of()
    assert balance_of(Acct(Decimal("1.5000"))) == Decimal("1.5000")
    assert balance_of(Wrapped(Acct(Decimal("-2")))) == Decimal("-2")


def test_the_codec_decides_how_to_read_a_balance_when_it_can(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import processor.worker.codec

    def codec_balance_of(v: Any) -> Decimal:
        return Decimal("42")

    monkeypatch.setattr(processor.worker.codec, "balance_of", codec_balance_of, raising=False)
    assert observe.load_balance_of() is codec_balance_of
    assert observe.Observer(FakeMeter()).balance_of is codec_balance_of


# ---- a round never fails -------------------------------------------------------------


async def test_a_failing_step_does_not_stop_the_others_or_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenTable:
        def items(self) -> Any:
            raise OSError("store closed")

    meter = FakeMeter(accounts=BrokenTable())
    meter.own(0)
    meter.limit(3)
    tp = TP(NAMES.calls, 0)
    meter.app.consumer.assigned = {tp}
    meter.app.consumer.highwaters = {tp: 4}
    meter.app.consumer.committed[tp] = 1
    metrics.READY.set(0)

    await observer(meter).tick()

    assert value("meter_ready") == 1
    assert value("meter_consumer_lag_records", topic="calls", partition="0") == 3
    assert "store closed" in caplog.text
