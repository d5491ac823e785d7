"""Scenario 5 of issue 3: a worker frozen past its session timeout, then resumed.

NOT COLLECTED (the file name does not start with test_): it still fails, so it stays
out of `make test` until it passes. Run it by path:

    .venv/bin/python -m pytest tests/integration/faults_open_zombie.py -s

State on 2026-11-25 (afternoon), after the fixes it drove (zombie writes fenced by
(epoch, generation, seq), acks counted only in the generation a record was fetched in,
active recovery always from the changelog's start): 1 pass in 4 runs. The failures
show a live balance built on the zombie's late write: a write stamped with the
zombie's old generation (say (1, 1, 3)) sits in the changelog after its successor's
newer branch ((2, 2, 7)), and a later owner's writes (generation 4) start from the
zombie's value, not the successor's, although its recovery read that partition from
offset -1 (its log says so) and the store keeps the highest (epoch, generation, seq).
The ledger is right in every run; the live balance is not. Not yet understood.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from tests.integration.test_faults import one_request_per_tenant, produce, reconciled, traffic
from tests.integration.test_faults_more import (
    Fleet,
    answers_everywhere,
    burst,
    changelog_audit,
    check_report,
    explained,
    fleet,
    freeze,
    load_figures,
    records_handled,
    report_figures,
    resume,
    settled,
    tenants_of,
    timed_ready,
)

__all__ = ["fleet"]  # the fixture, imported so pytest finds it here


async def test_frozen_worker_resumed_after_it_was_replaced_changes_nothing_twice(
    fleet: Fleet, kafka: Any
) -> None:
    began = time.monotonic()
    d = fleet.deployment(kafka.bootstrap)
    w0, w1 = fleet.start(d, 0), fleet.start(d, 1)
    await asyncio.gather(w0.wait_ready(), w1.wait_ready())
    # Ready again once the group is stable: the load must not race the first
    # rebalance (that race is its own test, below).
    await settled(d.bootstrap, d.app_id, members=2)
    await asyncio.gather(w0.wait_ready(), w1.wait_ready())
    records = traffic(events=7000, seed=51)
    bursts, steady = [records[:1500], records[1500:3000]], records[3000:]
    load = asyncio.create_task(produce(d, steady, per_second=140))
    rng = random.Random(5)
    takeovers: list[float] = []
    awake: list[float] = []
    rejoins: list[float] = []
    for chunk in bursts:
        # A burst, faster than the workers keep up with, so that the worker is frozen
        # with records fetched but not yet processed.
        await burst(d, chunk)
        await asyncio.sleep(rng.uniform(0.3, 1.5))  # a random moment to freeze
        before = await records_handled(w0)
        freeze(w0)
        frozen = time.monotonic()
        # Past the session timeout (6 s): the group drops w0, w1 takes every partition.
        await settled(d.bootstrap, d.app_id, members=1, timeout=60)
        await w1.wait_ready()
        takeovers.append(round(time.monotonic() - frozen, 1))
        await asyncio.sleep(2.0)  # w1 works alone for a while; the zombie's buffers go stale
        resume(w0)  # the zombie wakes with its fetched records and its old state
        resumed = time.monotonic()
        await asyncio.sleep(1.0)  # what it does in its first second awake is the point
        awake.append(await records_handled(w0) - before)
        await settled(d.bootstrap, d.app_id, members=2)
        await asyncio.gather(w0.wait_ready(), w1.wait_ready())
        rejoins.append(round(time.monotonic() - resumed, 1))
    steady_through = not load.done()  # the steady load outlasted both freezes
    await load
    tenants = tenants_of(records)
    await answers_everywhere([w0, w1], tenants)
    try:
        report = await reconciled(d, lambda: w1.url)
    except AssertionError as exc:
        raise await explained(d, exc) from None
    print(report.render())
    check_report(report)
    await one_request_per_tenant(d)

    # The changelogs now hold the zombie's late writes too: state rebuilt from them
    # alone, on a new machine, must still give every balance exactly once.
    w0.kill()
    w1.kill()
    fresh = fleet.start(d, 2)
    rebuild = await timed_ready(fresh)
    await answers_everywhere([fresh], tenants)
    try:
        rebuilt = await reconciled(d, lambda: fresh.url)
    except AssertionError as exc:
        raise await explained(d, exc) from None
    print(rebuilt.render())
    check_report(rebuilt)
    writes, late, conflicting = await changelog_audit(d)
    print(
        f"FIGURES scenario 5: {load_figures(records)}, freeze cycles: {len(bursts)}, "
        f"frozen to takeover: {takeovers}s, records the zombie handled in its first "
        f"second awake: {awake}, resume to rejoined: {rejoins}s, steady load running "
        f"throughout: {steady_through}, "
        f"{report_figures(report)}; rebuilt from the "
        f"changelogs on a fresh worker (ready in {rebuild}s): {report_figures(rebuilt)}, "
        f"account changelog: {writes} writes, {late} late (older than one before), "
        f"{conflicting} with the newest order but other contents, "
        f"wall: {time.monotonic() - began:.1f}s"
    )
    print(f"zombie log after resume:\n{w0.log_tail(25)}")
