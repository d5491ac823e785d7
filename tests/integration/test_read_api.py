"""The read API on a real `meter worker`: hostile tenant ids cost nothing, Faust's pages are off.

Issue 16 saw `GET /tenants/<7,000 characters>/account`, 1,500 times with distinct ids,
grow a worker's RSS by 19 MB (an LRU of partition hashes keyed by the raw id), and
`/router/` and `/table/dedupe/` answer anyone with the cluster's layout and table data.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import Client, Deployment, Worker, eventually, now_rfc3339, running

pytestmark = pytest.mark.integration

LONG_IDS = 1_500
ID_LENGTH = 7_000
# Without the fix the worker grew ~13 KB per id: ~19 MB for 1,500 ids.
RSS_GROWTH_BOUND_KB = 5 * 1024


@pytest.fixture
async def worker(kafka: Any, tmp_path: Path) -> AsyncIterator[Worker]:
    d = Deployment(kafka.bootstrap, tmp_path, partitions=2)
    async with running(d, log_lines=60) as w:
        yield w


def rss_kb(w: Worker) -> int:
    assert w.proc is not None
    for line in Path(f"/proc/{w.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def get_many(w: Worker, paths: list[str], parallel: int = 8) -> list[tuple[int, bytes]]:
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(paths)
    todo = iter(enumerate(paths))

    async def run(http: aiohttp.ClientSession) -> None:
        for i, path in todo:
            async with http.get(w.url + path) as resp:
                answers[i] = (resp.status, await resp.read())

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(run(http) for _ in range(parallel)))
    return answers


def long_ids(tag: str, count: int) -> list[str]:
    return [f"{tag}{i:06d}".ljust(ID_LENGTH, "x") for i in range(count)]


async def test_long_tenant_ids_are_400_and_do_not_grow_the_worker(worker: Worker) -> None:
    # A tenant that exists, so the worker is seen answering 200 before and after.
    async with Client(worker.deployment) as c:
        await c.send(
            "credits.commands",
            {
                "type": "funds_added",
                "command_id": "c-1",
                "tenant_id": "acme",
                "occurred_at": now_rfc3339(),
                "amount": "5.00",
                "currency": "USD",
                "source": "manual",
            },
        )

    async def funded() -> bool:
        return (await worker.get("/tenants/acme/account"))[0] == 200

    await eventually(funded, timeout=30, what="acme funded")

    # Warm up the HTTP server's own buffers with ids of the same shape, then measure.
    await get_many(worker, [f"/tenants/{t}/account" for t in long_ids("w", 200)])
    before = rss_kb(worker)
    answers = await get_many(worker, [f"/tenants/{t}/account" for t in long_ids("m", LONG_IDS)])
    after = rss_kb(worker)
    grew = after - before
    print(f"RSS before {before} kB, after {after} kB, grew {grew} kB for {LONG_IDS} ids")
    assert {status for status, _ in answers} == {400}
    for _, raw in answers:
        body = json.loads(raw)
        assert body["error"] == "invalid_tenant_id" and body["tenant_id"] is None
        assert "1 to 64 characters" in body["detail"]
    assert grew < RSS_GROWTH_BOUND_KB, f"RSS grew {grew} kB for {LONG_IDS} long ids"
    assert (await worker.get("/tenants/acme/account"))[0] == 200


@pytest.mark.parametrize("path", ["/router/", "/table/dedupe/", "/table/accounts/x/", "/graph/"])
async def test_faust_pages_are_not_served(worker: Worker, path: str) -> None:
    status, _ = await worker.get(path)
    assert status == 404


async def test_our_pages_are_served(worker: Worker) -> None:
    async with aiohttp.ClientSession() as http, http.get(worker.url + "/metrics") as resp:
        assert resp.status == 200
        text = (await resp.read()).decode()
    assert "meter_records_total" in text
    assert 'meter_event_loop_info{loop="uvloop"} 1.0' in text.splitlines()
    assert (await worker.get("/health"))[0] == 200
    assert (await worker.get("/ready"))[0] == 200
    status, body = await worker.get("/tenants/has%20space/account")
    assert status == 400 and body["error"] == "invalid_tenant_id"


async def test_any_worker_answers_for_any_tenant_through_the_owner(
    kafka: Any, tmp_path: Path
) -> None:
    """The forward to the owner (with its timeout) still works between real workers."""
    d = Deployment(kafka.bootstrap, tmp_path, partitions=2)
    workers = [Worker(d, 0).start(), Worker(d, 1).start()]
    try:
        for w in workers:
            await w.wait_ready()
        tenants = [f"t{i}" for i in range(8)]  # both partitions of 2
        async with Client(d) as c:
            for tenant in tenants:
                await c.send(
                    "credits.commands",
                    {
                        "type": "funds_added",
                        "command_id": f"c-{tenant}",
                        "tenant_id": tenant,
                        "occurred_at": now_rfc3339(),
                        "amount": "5.00",
                        "currency": "USD",
                        "source": "manual",
                    },
                )

        async def everywhere() -> bool:
            for tenant in tenants:
                answers = [await w.get(f"/tenants/{tenant}/account") for w in workers]
                if any(status != 200 for status, _ in answers) or answers[0] != answers[1]:
                    return False
            return True

        await eventually(everywhere, timeout=60, what="both workers answer for every tenant")
    finally:
        for w in workers:
            w.stop()
