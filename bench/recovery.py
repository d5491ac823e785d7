"""Item 4 of `make bench`: how long a worker with N tenants in its state takes to be
ready after a restart, and what that state costs in memory.

The state is written straight into the accounts changelog (what N tenants' worth of
applied usage would have left there), so a million tenants take seconds to set up
rather than the drain of millions of events. Each value is a realistic account: a
balance, auto-recharge settings, offsets applied on three inputs, a write counter,
the lots its balance is held in (one or two recharges, expiring a year after them),
and two months of consumption (outbound calls for all, conferencing and toll-free
for some).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

import aiohttp

from bench import procstat
from bench.standalone import print_on_private_broker
from bench.worker import BenchWorker
from bench.workload import create_topics, produce_keyed
from processor.core.outputs import derive_id
from processor.core.state import Account, AutoRecharge, Lot
from processor.core.stored import StoredAccount
from processor.core.usage import MonthUsage, ServiceUsage
from processor.dev import simulator as sim
from processor.worker.codec import dump_stored


@dataclass(frozen=True)
class Start:
    seconds: float
    rss_mb: float


_NONE = ServiceUsage()


def _lots(tenant: str, i: int, balance: Decimal) -> tuple[Lot, ...]:
    """The balance held in the last recharge's lot, and for a third of the tenants
    partly in an older one (what auto-recharges of 25.00 leave)."""
    expires = datetime(2027, 11, 1, 10, 0, tzinfo=UTC) + timedelta(days=i % 28)
    if balance <= Decimal("0.0000"):
        return ()
    if i % 3 or balance <= Decimal("25.0000"):
        return (Lot(derive_id("ledger", tenant, "credits.commands", f"r{i}"), balance, expires),)
    older = balance - Decimal("25.0000")
    return (
        Lot(
            derive_id("ledger", tenant, "credits.commands", f"q{i}"),
            older,
            expires - timedelta(days=30),
        ),
        Lot(derive_id("ledger", tenant, "credits.commands", f"r{i}"), Decimal("25.0000"), expires),
    )


def _usage(i: int) -> tuple[MonthUsage, ...]:
    """This month and the last: outbound for all, conferencing dial-out for every
    fourth tenant, toll-free inbound for every seventh."""

    def month(n: int, scale: int) -> MonthUsage:
        calls = ServiceUsage(n, n * 90, Decimal(n * 3).scaleb(-2))
        return MonthUsage(
            202612 if scale == 1 else 202611,
            (
                calls,
                ServiceUsage(n // 3, n * 40, Decimal(n).scaleb(-2)) if i % 7 == 0 else _NONE,
                ServiceUsage(n // 2, n * 60, Decimal(n * 2).scaleb(-2)) if i % 4 == 0 else _NONE,
                _NONE,
            ),
        )

    return (month(5 + i % 40, 1), month(20 + i % 90, 2))


def account_value(i: int, prefix: str) -> StoredAccount:
    tenant = f"t{i:07d}"
    balance = Decimal(i % 5000) / 100 + Decimal("0.1234")
    account = Account(
        tenant_id=tenant,
        balance=balance,
        auto_recharge=AutoRecharge(
            enabled=True, recharge_amount=Decimal("25.00"), trigger_balance=Decimal("5.00")
        ),
        updated_at=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        entries=40 + i % 60,
        requests_issued=i % 3,
        lots=_lots(tenant, i, balance),
        usage=_usage(i),
    )
    # Inputs of an earlier deployment (topics that do not exist here): the inputs
    # this run creates are empty, and a worker refuses accounts that applied more of
    # an existing input than it holds (a re-created topic). 4 characters longer each.
    applied = {
        f"{prefix}old.{sim.USAGE_CALLS}:{i % 12}": 10_000 + i,
        f"{prefix}old.{sim.USAGE_CONFERENCING}:{i % 12}": 2_000 + i,
        f"{prefix}old.{sim.COMMANDS}:{i % 12}": 100 + i % 1000,
    }
    return StoredAccount(
        account, seq=45 + i % 60, generation=7, epoch=3, applied=MappingProxyType(applied)
    )


async def write_state(bootstrap: str, app_id: str, prefix: str, tenants: int, parts: int) -> None:
    changelog = f"{app_id}-accounts-changelog"

    def records() -> Iterator[tuple[str, bytes, bytes]]:
        for i in range(tenants):
            value = account_value(i, prefix)
            yield changelog, value.account.tenant_id.encode(), dump_stored(value)

    await produce_keyed(bootstrap, records(), parts)


async def time_to_ready(worker: BenchWorker, within: float) -> Start:
    began = time.perf_counter()
    worker.start()
    url = f"http://127.0.0.1:{worker.port}/ready"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            worker.check_alive()
            if time.perf_counter() - began > within:
                raise TimeoutError(f"worker not ready in {within}s:\n{worker.log_tail()}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    seconds = time.perf_counter() - began
    return Start(seconds, procstat.rss_mb(worker.pid))


async def measure(
    bootstrap: str, tag: str, tenants: int, parts: int, root: Path, within: float = 600.0
) -> dict[str, object]:
    """Ready times of an empty deployment and of one holding `tenants` accounts."""
    results: dict[str, Start] = {}
    for label, count in (("empty", 0), ("full", tenants)):
        app_id = f"bench-rec-{label}-{tag}"
        prefix = f"{app_id}."
        inputs = [prefix + t for t in (sim.USAGE_CALLS, sim.USAGE_CONFERENCING, sim.COMMANDS)]
        changelogs = [f"{app_id}-{table}-changelog" for table in ("accounts",)]
        await create_topics(bootstrap, [*inputs, *changelogs], parts, compact=frozenset(changelogs))
        t = time.perf_counter()
        if count:
            await write_state(bootstrap, app_id, prefix, count, parts)
        written = time.perf_counter() - t
        for attempt in ("first", "restart"):
            # A memory store keeps nothing on disk, so a restart with its data
            # directory and one without it rebuild from the changelog alike; the
            # second start (same data directory) shows that.
            w = BenchWorker(bootstrap, app_id, prefix, parts, root, index=len(results))
            try:
                results[f"{label}_{attempt}"] = await time_to_ready(w, within)
            finally:
                w.stop()
        if count:
            results["write"] = Start(written, 0.0)
    full, empty = results["full_first"], results["empty_first"]
    state_mb = max(0.0, full.rss_mb - empty.rss_mb)
    return {
        "tenants": tenants,
        "ready_seconds_first_start": round(full.seconds, 1),
        "ready_seconds_restart": round(results["full_restart"].seconds, 1),
        "ready_seconds_empty": round(empty.seconds, 1),
        "rss_mb_ready": round(full.rss_mb, 1),
        "rss_mb_empty": round(empty.rss_mb, 1),
        "state_bytes_per_tenant": round(state_mb * 1024 * 1024 / tenants) if tenants else 0,
        "state_write_seconds": round(results["write"].seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Item 4 alone, on a private broker: `python -m bench.recovery --tenants N`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--tenants", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=12)
    args = parser.parse_args(argv)

    return print_on_private_broker(
        "meter-recovery-",
        lambda broker, tag, root: measure(
            broker.bootstrap, tag, args.tenants, args.partitions, root
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
