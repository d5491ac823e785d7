"""The floor's relay drains preloaded events, and its rate counts the work it was given.

`python -m bench.floor --half-drain N` times the phase at half this rate, so a relay that
skipped records, or whose clock left out its work, would set the phase's rate wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from bench import floor
from bench.workload import Workload
from tests.integration.conftest import KafkaEndpoint
from tests.integration.test_local_kafka import read_to_end

EVENTS = 3000
WORK_US = 100.0


async def test_a_relay_drains_every_preloaded_event_and_times_its_work(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    prefix = topic_name("floor") + "."
    work = Workload(200, seed=3, run_tag="drain")
    expected = [e.event_id for e in Workload(200, seed=3, run_tag="drain").usage(EVENTS)]

    drained = await floor.drain_rate(kafka.bootstrap, prefix, work, EVENTS, work_us=WORK_US)

    assert 0 < drained.events <= EVENTS
    assert drained.cpu_us_per_event >= WORK_US
    assert drained.events_per_s == drained.events / drained.seconds
    ledger = await read_to_end(
        kafka.bootstrap, floor.FloorTopics.under(prefix).ledger, isolation_level="read_committed"
    )
    assert sorted(orjson.loads(r.value)["cause_id"] for r in ledger) == sorted(expected)
