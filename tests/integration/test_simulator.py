"""The simulated telephony against the real broker: no calls for an exhausted tenant.

The contract publishes `exhausted` and `restored` on `credits.alerts` so telephony can
block credit-funded calls; the simulator's gate reads them from the start of the topic
before its first call and follows them while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka.admin import NewTopic

from processor.dev.simulator import (
    ALERTS,
    SIMULATOR_TOPICS,
    USAGE_CALLS,
    USAGE_CONFERENCING,
    Simulator,
    SimulatorConfig,
)
from tests.integration.conftest import KafkaEndpoint
from tests.integration.harness import eventually
from tests.integration.test_local_kafka import create_topics, producer, read_to_end


def _status(tenant: str, alert: str, seq: int) -> bytes:
    return orjson.dumps(
        {
            "type": "balance_alert",
            "alert_id": f"alert-{uuid.uuid4().hex}",
            "tenant_id": tenant,
            "alert": alert,
            "balance": "0.0000",
            "currency": "USD",
            "occurred_at": "2026-12-06T00:00:00Z",
            "status_seq": seq,
        }
    )


async def _calls(bootstrap: str, prefix: str) -> list[dict[str, Any]]:
    records = [
        record
        for topic in (USAGE_CALLS, USAGE_CONFERENCING)
        for record in await read_to_end(bootstrap, prefix + topic)
    ]
    return [orjson.loads(r.value) for r in records if r.value is not None]


def _occurred(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


async def test_telephony_places_no_call_while_a_tenant_is_exhausted(
    kafka: KafkaEndpoint, topic_name: Callable[[str], str]
) -> None:
    prefix = topic_name("sim") + "."
    await create_topics(
        kafka.bootstrap,
        *(
            NewTopic(prefix + t, num_partitions=3, replication_factor=1)
            for t in (*SIMULATOR_TOPICS, ALERTS)
        ),
    )
    simulator = Simulator(
        SimulatorConfig(
            bootstrap=kafka.bootstrap,
            topic_prefix=prefix,
            tenants=3,
            rate_per_second=300.0,
            duplicate_ratio=0.0,
            garbage_ratio=0.0,
            miskey_ratio=0.0,
            admin_actions_per_minute=0.0,
            seed=11,
            setup=False,
            topic_wait_seconds=30.0,
        )
    )
    gate = simulator.gate
    assert gate is not None
    exhausted, restored, other = (t.tenant_id for t in simulator.tenants)
    async with producer(kafka.bootstrap) as prod:
        # Published before the simulator starts: its first call must already know.
        for tenant, alert, seq in [
            (exhausted, "exhausted", 1),
            (restored, "exhausted", 1),
            (restored, "restored", 2),
        ]:
            await prod.send_and_wait(prefix + ALERTS, _status(tenant, alert, seq), tenant.encode())
        running = asyncio.create_task(simulator.run())
        try:

            async def blocked_some() -> bool:
                assert not running.done(), running
                # Two seconds of calls: a gate that let the exhausted tenant through
                # would have placed its calls long before it was restored.
                return simulator.stats.calls_blocked >= 30 and simulator.stats.usage_sent >= 600

            await eventually(blocked_some, timeout=60, what="calls blocked and placed")

            # Exhausted while the simulator runs: calls stop once the gate has read it.
            await prod.send_and_wait(
                prefix + ALERTS, _status(other, "exhausted", 1), other.encode()
            )

            async def other_closed() -> bool:
                return not gate.allows(other)

            await eventually(other_closed, timeout=30, what="the gate to read the alert")
            closed_at = datetime.now(UTC)
            blocked_then = simulator.stats.calls_blocked
            # Restored while it runs: calls resume.
            # Less half a second: a call's occurred_at is when its batch of ticks began.
            restored_at = datetime.now(UTC) - timedelta(seconds=0.5)
            await prod.send_and_wait(
                prefix + ALERTS, _status(exhausted, "restored", 2), exhausted.encode()
            )

            async def resumed() -> bool:
                calls = await _calls(kafka.bootstrap, prefix)
                return any(c["tenant_id"] == exhausted for c in calls)

            await eventually(resumed, timeout=60, what="calls for the restored tenant")

            async def blocked_more() -> bool:
                return simulator.stats.calls_blocked >= blocked_then + 30

            await eventually(blocked_more, timeout=60, what="more calls blocked")
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    calls = await _calls(kafka.bootstrap, prefix)
    by_tenant: dict[str, list[datetime]] = {}
    for call in calls:
        by_tenant.setdefault(call["tenant_id"], []).append(_occurred(call))
    # Exhausted from before the start: nothing until its restored alert was sent.
    assert by_tenant[exhausted]
    assert min(by_tenant[exhausted]) >= restored_at
    # Exhausted, then restored, before the start: called all along.
    assert len(by_tenant[restored]) > 10
    # Exhausted during the run: called before, never after the gate had read it.
    assert by_tenant[other]
    assert max(by_tenant[other]) <= closed_at
    assert simulator.stats.usage_sent == len(calls)
    assert simulator.stats.send_errors == 0
