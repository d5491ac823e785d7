"""Issue 20 parts 1 and 2 on the real broker: funds expire (an `expiry` ledger entry,
its alerts, the account view), exactly once through a `kill -9` of the worker, and the
account shows its consumption.

METER_FUNDS_EXPIRE_DAYS is a fraction of a day here, so a lot expires within seconds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from processor.core.outputs import derive_id
from processor.ops.reconcile import Report
from schemas.types import format_timestamp
from tests.integration.harness import Client, Deployment, InFlight, eventually, now_rfc3339
from tests.integration.test_faults import reconciled
from tests.integration.test_faults_more import Fleet, Supervisor, account_where
from tests.support import events

call = partial(events.call, dest="+14155550123")  # +1: 0.0200/min, 60 s increments
funds = events.funds

pytestmark = pytest.mark.integration


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """Every worker started, killed at teardown (test_faults_more's Fleet)."""
    f = Fleet(tmp_path)
    yield f
    f.close()


DAY_SECONDS = 86_400


def expiring_in(d: Deployment, expire_seconds: float, notice_seconds: float) -> None:
    d.env_extra.update(
        METER_FUNDS_EXPIRE_DAYS=repr(expire_seconds / DAY_SECONDS),
        METER_FUNDS_EXPIRING_NOTICE_DAYS=repr(notice_seconds / DAY_SECONDS),
    )


def check_clean(report: Report, expiries: int) -> None:
    assert report.discrepancies == 0, report.render()
    assert report.expiry_entries == expiries, report.render()
    assert report.ledger_entries - report.expiry_entries == report.distinct_applied


async def test_a_lot_expires_through_one_entry_with_its_alerts_and_view(
    fleet: Fleet, kafka: Any
) -> None:
    d = fleet.deployment(kafka.bootstrap)
    expiring_in(d, expire_seconds=25, notice_seconds=12)
    w = fleet.start(d, 0)
    await w.wait_ready()
    tenant = "exp-view"
    at = now_rfc3339()
    async with Client(d) as c:
        await c.send("credits.commands", funds("f-1", tenant=tenant, amount="10.00", at=at))
        # Two topics have no order between them: the call goes once the funds are in, so
        # the ledger reads credit, debit, expiry whatever the worker's speed.
        await account_where(w, tenant, lambda v: v["balance"] == "10.0000", "the funds applied")
        await c.send("usage.calls", call("u-1", tenant=tenant, seconds=61, at=at))  # 120 s: 0.0400
        view = await account_where(
            w, tenant, lambda v: v["balance"] == "9.9600", "the funds and the call applied"
        )
        # The lot's rest and its expiry: occurred_at + 25 s.
        expires = format_timestamp(
            datetime.fromisoformat(at.replace("Z", "+00:00")) + timedelta(seconds=25)
        )
        assert view["expiring"] == [{"amount": "9.9600", "expires_at": expires}]
        month = at[:7]
        current, previous = view["consumption"]
        assert current["month"] == month
        assert current["services"]["outbound"] == {
            "events": 1,
            "billed_seconds": 120,
            "amount": "0.0400",
        }
        assert previous["services"]["outbound"]["events"] == 0

        gone = await account_where(
            w, tenant, lambda v: v["expiring"] == [], "the lot expired (within ~25 s)"
        )
        assert gone["balance"] == "0.0000" and gone["status"] == "exhausted", gone
        # Consumption is not touched by an expiry.
        assert gone["consumption"] == view["consumption"]

        ledger = [e for e in await c.read_all("credits.ledger") if e["tenant_id"] == tenant]
        credit, debit, expiry = ledger
        assert (credit["kind"], debit["kind"], expiry["kind"]) == ("credit", "debit", "expiry")
        assert expiry["amount"] == "9.9600" and expiry["balance_after"] == "0.0000", expiry
        assert expiry["cause_id"] == credit["entry_id"], expiry
        assert expiry["cause_topic"] == d.topic("credits.ledger"), expiry
        assert expiry["entry_id"] == derive_id("expiry", tenant, credit["entry_id"])
        assert expiry["occurred_at"] == expires and "rate_prefix" not in expiry

        alerts = [a for a in await c.read_all("credits.alerts") if a["tenant_id"] == tenant]
        kinds = [a["alert"] for a in alerts]
        assert kinds.count("funds_expiring") == 1, alerts
        assert kinds.count("funds_expired") == 1, alerts
        notice = next(a for a in alerts if a["alert"] == "funds_expiring")
        # At most 12 s (the notice period) before the expiry, with the lot's rest then.
        assert notice["expires_at"] == expires and notice["amount"] == "9.9600", notice
        expired = next(a for a in alerts if a["alert"] == "funds_expired")
        assert expired["entry_id"] == expiry["entry_id"] and expired["amount"] == "9.9600"
        # The usual alerts after a balance change: restored by the funds, exhausted again.
        assert kinds.count("exhausted") == 1 and kinds.index("exhausted") > kinds.index(
            "funds_expiring"
        ), alerts
    report = await reconciled(d, lambda: w.url)
    check_clean(report, expiries=1)


async def test_expiry_through_a_kill_9_happens_exactly_once(fleet: Fleet, kafka: Any) -> None:
    d = fleet.deployment(kafka.bootstrap)
    expiring_in(d, expire_seconds=30, notice_seconds=10)
    sup = Supervisor(fleet, d, 0)
    await sup.worker.wait_ready()
    sup.watch()
    tenants = [f"exp-kill-{i:02d}" for i in range(24)]
    began = time.monotonic()
    try:
        async with Client(d) as c:
            now = datetime.now(UTC).replace(microsecond=0)
            # Event times a second apart: the lots expire over ~24 s, around the kill.
            for i, tenant in enumerate(tenants):
                at = format_timestamp(now - timedelta(seconds=len(tenants) - i))
                await c.send(
                    "credits.commands", funds(f"f-{tenant}", tenant=tenant, amount="5.00", at=at)
                )
                # A second credit the same UTC day merges into the same lot.
                await c.send(
                    "credits.commands", funds(f"g-{tenant}", tenant=tenant, amount="1.50", at=at)
                )

            async def first_expiry() -> list[dict[str, Any]]:
                ledger = await c.read_all("credits.ledger")
                return [e for e in ledger if e["kind"] == "expiry"]

            seen = await eventually(first_expiry, 90, interval=0.1, what="a first expiry")
            sup.worker.kill()  # kill -9 while the other lots are expiring
            killed_at = time.monotonic() - began
            # Every lot was handed over before; the kill lands after the first expiry
            # was committed and before the last (the worker is dead: no more).
            killed = InFlight(
                "kill -9 among the expiries",
                done=len(await first_expiry()),
                sent=len(tenants),
                total=len(tenants),
                more_to_come=False,
            ).check()
            print(f"at the kill: {killed}")
            print(f"killed after {len(seen)} expiry entries, {killed_at:.1f}s in")

            async def all_expired() -> str | bool:
                ledger = await c.read_all("credits.ledger")
                done = {e["tenant_id"] for e in ledger if e["kind"] == "expiry"}
                return len(done) == len(tenants) or f"not yet: {len(done)}"

            await eventually(all_expired, 180, interval=0.5, what="every lot expired")
            await sup.worker.wait_ready(120)
            for tenant in tenants:
                view = await account_where(
                    sup.worker, tenant, lambda v: v["expiring"] == [], "no lots left"
                )
                assert view["balance"] == "0.0000", view

            records = await c.read_records(d.topic("credits.ledger"))
            ledger = [json.loads(r.value) for r in records if r.value]
            expiries = [e for e in ledger if e["kind"] == "expiry"]
            # read_committed: each expiry entry once, one per tenant, the whole lot.
            assert Counter(e["tenant_id"] for e in expiries) == dict.fromkeys(tenants, 1)
            assert len({e["entry_id"] for e in expiries}) == len(tenants)
            assert {e["amount"] for e in expiries} == {"6.5000"}
            credits = {e["entry_id"]: e for e in ledger if e["kind"] == "credit"}
            for e in expiries:
                assert credits[e["cause_id"]]["tenant_id"] == e["tenant_id"], e
            alerts = await c.read_all("credits.alerts")
            expired = [a for a in alerts if a["alert"] == "funds_expired"]
            assert Counter(a["tenant_id"] for a in expired) == dict.fromkeys(tenants, 1)
            assert all(Decimal(a["amount"]) == Decimal("6.5") for a in expired)
        assert sup.restarts, "the supervisor restarted the worker"
        report = await reconciled(d, lambda: sup.worker.url)
        check_clean(report, expiries=len(tenants))
    finally:
        await sup.close()
    print(
        f"FIGURES expiry through kill -9: {len(tenants)} lots, killed {killed_at:.1f}s in "
        f"after {len(seen)} expiries, restarts {sup.restarts}, "
        f"wall {time.monotonic() - began:.1f}s"
    )
