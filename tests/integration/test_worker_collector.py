"""A real `meter worker` runs the collector policy of processor/worker/collector.py: a
renewal when its partitions' recovery completes, and every pass's pause in
`meter_gc_pause_seconds`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Deployment, running

pytestmark = pytest.mark.integration


def _passes(exposed: str, generation: int) -> float:
    found = re.search(
        rf'^meter_gc_pause_seconds_count{{generation="{generation}"}} (\S+)$', exposed, re.M
    )
    assert found, f"no pass count for generation {generation}"
    return float(found.group(1))


async def test_the_worker_renews_at_its_first_recovery_and_times_every_pass(
    kafka: Any, tmp_path: Path
) -> None:
    d = Deployment(kafka.bootstrap, tmp_path / "collector", partitions=2)
    d.root.mkdir(parents=True)
    async with running(d) as worker:
        assert "garbage collected at the rebalance" in worker.log_tail(400)
        _, exposed = await worker.get("/metrics")
        assert _passes(exposed, 2) >= 1, "the renewal is a full pass"
        assert _passes(exposed, 0) >= 0 and _passes(exposed, 1) >= 0
