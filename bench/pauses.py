"""The garbage collector's pauses in a worker holding many tenants:
`python -m bench.pauses --tenants 1000000 --events 600000`.

The state of `--tenants` accounts is written into the changelog as `bench.recovery`
writes it, and `--events` usage events spread evenly over those tenants are preloaded;
then one worker starts, recovers them and drains the events. Each tenant an event
reaches is decoded (processor/worker/codec.py, `Undecoded`), so the worker's heap grows
by millions of objects over the drain: the case in which Python's collector walks the
most. Reported: the drain; the worker's memory, and what each tenant reached added to
it; and every collector pass the worker observed (`meter_gc_pause_seconds`), by
generation: how many, their total, and how many held the loop for longer than 50 ms,
100 ms and 1 s. The recovery's renewal is one of the full passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench import measures, procstat, recovery
from bench.standalone import print_on_private_broker
from bench.worker import BenchWorker
from bench.workload import Event, create_topics, preload
from processor.dev import simulator as sim

PAUSE_METRIC = "meter_gc_pause_seconds"
OVER_SECONDS = (0.05, 0.1, 1.0)


def spread_usage(
    tenants: int, events: int, seed: int, tag: str, reached: set[str] | None = None
) -> Iterator[Event]:
    """`events` outbound calls, each for a tenant drawn evenly from `tenants`
    (`recovery.account_value`'s ids), so that most tenants are reached; their ids are
    added to `reached`."""
    rng = random.Random(seed)
    profile = sim.generate_tenants(1, rng)[0]
    now = datetime.now(UTC)
    for k in range(events):
        tenant = dataclasses.replace(profile, tenant_id=f"t{rng.randrange(tenants):07d}")
        if reached is not None:
            reached.add(tenant.tenant_id)
        event_id = f"ev-{tag}-{k}"
        event = sim.make_call_usage(tenant, rng, now, event_id)
        yield Event(
            sim.USAGE_CALLS,
            tenant.tenant_id.encode(),
            sim.encode(event),
            event_id,
            event["duration_seconds"] > 0,
        )


def pauses_from(exposition: str) -> dict[str, dict[str, float]]:
    """Per generation: passes, their total seconds, and how many lasted longer than
    each of OVER_SECONDS (from the histogram's buckets, whose bounds include them)."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != PAUSE_METRIC:
            continue
        for sample in family.samples:
            generation = sample.labels["generation"]
            row = out.setdefault(generation, {})
            if sample.name.endswith("_count"):
                row["passes"] = sample.value
            elif sample.name.endswith("_sum"):
                row["seconds"] = round(sample.value, 3)
            elif sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                row[f"le_{bound:g}"] = sample.value
    for row in out.values():
        for over in OVER_SECONDS:
            row[f"over_{over:g}_s"] = row["passes"] - row.pop(f"le_{over:g}")
        for key in [k for k in row if k.startswith("le_")]:
            del row[key]
    return out


async def measure(
    bootstrap: str, tag: str, tenants: int, events: int, parts: int, root: Path
) -> dict[str, Any]:
    app_id = f"bench-pauses-{tag}"
    prefix = f"{app_id}."
    inputs = [prefix + t for t in (sim.USAGE_CALLS, sim.USAGE_CONFERENCING, sim.COMMANDS)]
    changelog = f"{app_id}-accounts-changelog"
    await create_topics(bootstrap, [*inputs, changelog], parts, compact=frozenset([changelog]))
    await recovery.write_state(bootstrap, app_id, prefix, tenants, parts)
    reached: set[str] = set()
    await preload(bootstrap, prefix, spread_usage(tenants, events, 19, tag, reached), parts)
    worker = BenchWorker(bootstrap, app_id, prefix, parts, root)
    at_start: list[float] = []
    try:
        drain = await measures.drain(
            worker, events, within=1800, on_start=lambda pid: at_start.append(procstat.rss_mb(pid))
        )
        rss_end = procstat.rss_mb(worker.pid)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(f"http://127.0.0.1:{worker.port}/metrics") as resp,
        ):
            exposition = await resp.text()
    finally:
        worker.stop()
    return {
        "tenants": tenants,
        "events": events,
        "drain_events_per_s": round(drain.events_per_s),
        "cpu_seconds_per_1000": round(drain.cpu_seconds_per_1000, 4),
        "tenants_reached": len(reached),
        "rss_mb_at_start": round(at_start[0], 1),
        "rss_mb_end": round(rss_end, 1),
        # What a tenant's account costs once decoded, over what it cost recovered.
        "bytes_more_per_tenant_reached": round((rss_end - at_start[0]) * 2**20 / len(reached)),
        "peak_rss_mb": round(drain.peak_rss_mb, 1),
        "pauses_by_generation": pauses_from(exposition),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pauses", description=__doc__)
    parser.add_argument("--tenants", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--partitions", type=int, default=12)
    args = parser.parse_args(argv)
    return print_on_private_broker(
        "meter-pauses-",
        lambda broker, tag, root: measure(
            broker.bootstrap, tag, args.tenants, args.events, args.partitions, root
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
