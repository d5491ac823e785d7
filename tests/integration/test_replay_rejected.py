"""`meter replay-rejected` end to end: a rate card gains a prefix, the usage it could
not rate is replayed and applied exactly once, however often the replay runs.

A worker runs with a card that has no +44 prefix: UK usage is rejected (`no_rate`),
one record so large its rejection keeps only a prefix. The worker restarts with a
card that has +44; `meter replay-rejected` runs (as an operator runs it) twice. Each
UK usage event is then in the balance and the ledger once; the invalid JSON record is
not replayed; the EUR command, still in the wrong currency, is rejected again.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from processor.ops.reconcile import read_topic
from tests.integration.harness import (
    METER,
    Client,
    Deployment,
    Worker,
    eventually,
    now_rfc3339,
    signed_sum,
)
from tests.support import events

pytestmark = pytest.mark.integration

NOW = now_rfc3339()  # event time within the dedupe window
call = partial(events.call, at=NOW)
conference = partial(events.conference, at=NOW)
funds = partial(events.funds, at=NOW)
UK = "+442071234567"
US = "+14155550123"
CARD = """\
currency: USD
version: "{version}"
rounding: {{decimals: 4, mode: half_up}}
tables:
  outbound:
    - {{prefix: "+1", per_minute: "0.0200", increment_seconds: 60}}
{uk_outbound}
  toll_free_inbound:
    - {{prefix: "+1800", per_minute: "0.0190", increment_seconds: 60}}
  conferencing_dial_out:
    - {{prefix: "+1", per_minute: "0.0150", increment_seconds: 60}}
{uk_dial_out}
"""


def write_card(path: Path, with_uk: bool) -> Path:
    path.write_text(
        CARD.format(
            version="with-uk" if with_uk else "no-uk",
            uk_outbound='    - {prefix: "+44", per_minute: "0.0350", increment_seconds: 1, '
            "minimum_seconds: 30}"
            if with_uk
            else "",
            uk_dial_out='    - {prefix: "+44", per_minute: "0.0300", increment_seconds: 60}'
            if with_uk
            else "",
        )
    )
    return path


@pytest.fixture
async def deployment(kafka: Any, tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(kafka.bootstrap, tmp_path / "replay", partitions=2)
    d.root.mkdir(parents=True)
    workers: list[Worker] = []
    d.workers = workers
    yield d
    for w in workers:
        w.stop()
        print(f"--- worker {w.index} ---\n{w.log_tail(60)}")  # shown when the test failed


async def replay_rejected(d: Deployment, *args: str) -> tuple[int, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=d.bootstrap, METER_TOPIC_PREFIX=d.prefix, METER_APP_ID=d.app_id
    )
    proc = await asyncio.create_subprocess_exec(
        METER,
        "replay-rejected",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    print(out.decode(), err.decode()[-2000:])
    return proc.returncode, out.decode()


async def balance(worker: Worker) -> str | None:
    status, body = await worker.get("/tenants/acme/account")
    return body["balance"] if status == 200 else None


async def test_usage_rejected_for_no_rate_is_applied_once_after_the_card_is_fixed(
    deployment: Deployment, tmp_path: Path
) -> None:
    d = deployment
    d.env_extra["METER_RATE_CARD"] = str(write_card(tmp_path / "no-uk.yaml", with_uk=False))
    first = Worker(d, 0).start()
    d.workers.append(first)
    await first.wait_ready()

    big = call(
        "e-big", seconds=90, dest=UK, note="x" * 300_000
    )  # rejected copy keeps 256 KiB of it
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", amount="10.00"))
        await c.send("usage.calls", call("e-uk", seconds=60, dest=UK))
        await c.send("usage.conferencing", conference("cf-uk", seconds=120, number=UK))
        await c.send("usage.calls", big)
        await c.send("usage.calls", b'{"event_id": "broken", "tenant_id": "acme"', key="acme")
        await c.send("credits.commands", funds("c-eur", amount="5.00", currency="EUR"))
        await c.send("usage.calls", call("e-us", seconds=60, dest=US))

        async def five_rejected() -> list[dict[str, Any]] | None:
            rows = await c.read_all("credits.rejected")
            return rows if len(rows) >= 5 else None

        rejected = await eventually(five_rejected, what="five rejections")
        assert Counter(r["reason"] for r in rejected) == {
            "no_rate": 3,
            "invalid_json": 1,
            "currency_mismatch": 1,
        }
        assert [r.get("payload_truncated") for r in rejected if "e-big" in r["payload"]] == [True]
        await eventually(lambda: _is(first, "9.9800"), what="funds and the US call applied")

        # The card gains +44; the worker restarts with it.
        first.stop()
        d.env_extra["METER_RATE_CARD"] = str(write_card(tmp_path / "with-uk.yaml", with_uk=True))
        second = Worker(d, 0).start()
        d.workers.append(second)
        await second.wait_ready()

        calls_before = len(await read_topic(d.bootstrap, d.topic("usage.calls")))
        code, out = await replay_rejected(d, "--dry-run")
        assert code == 0
        assert out.count("would replay ") == 4
        assert "would replay: 4 (currency_mismatch 1, no_rate 3)" in out
        assert "originals read back from their source topic: 1" in out
        assert "reason invalid_json not selected: 1" in out
        assert len(await read_topic(d.bootstrap, d.topic("usage.calls"))) == calls_before

        for _ in range(2):
            code, out = await replay_rejected(d)
            assert code == 0, out
            assert "replayed: 4 (currency_mismatch 1, no_rate 3)" in out
            assert "problems: 0" in out

        # Records behind the replays on each topic's acme partition: once these are
        # applied, every replay before them has been processed.
        await c.send("usage.calls", call("s-call", seconds=60, dest=US))
        await c.send("usage.conferencing", conference("s-conf", seconds=60, number=US))
        await c.send("credits.commands", funds("s-funds", amount="1.00"))

        async def sentinels_applied() -> list[dict[str, Any]] | None:
            ledger = await c.read_all("credits.ledger")
            causes = {e["cause_id"] for e in ledger}
            return ledger if {"s-call", "s-conf", "s-funds"} <= causes else None

        ledger = await eventually(sentinels_applied, timeout=90, what="the sentinels applied")

        # 10.00 - 0.02 (e-us) - 0.0350 (e-uk, 60 s) - 0.0600 (cf-uk, 2 min at 0.03)
        # - 0.0525 (e-big, 90 s at 0.035) - 0.02 (s-call) - 0.015 (s-conf) + 1.00
        expected = Decimal("10.7975")
        await eventually(lambda: _is(second, str(expected)), what=f"acme at {expected}")
        by_cause = Counter(e["cause_id"] for e in ledger)
        assert by_cause == {
            c: 1 for c in ("c1", "e-us", "e-uk", "cf-uk", "e-big", "s-call", "s-conf", "s-funds")
        }
        assert len({e["entry_id"] for e in ledger}) == len(ledger)
        assert signed_sum(ledger, "acme") == expected

        # The invalid JSON record stayed where it was; the EUR command was sent twice
        # more and rejected twice more; nothing else was rejected again.
        async def seven_rejected() -> list[dict[str, Any]] | None:
            rows = await c.read_all("credits.rejected")
            return rows if len(rows) >= 7 else None

        rejected = await eventually(seven_rejected, what="the EUR command rejected again")
        assert Counter(r["reason"] for r in rejected) == {
            "no_rate": 3,
            "invalid_json": 1,
            "currency_mismatch": 3,
        }

    # The full 300 KB original went back each time, never the rejected copy's prefix.
    calls = await read_topic(d.bootstrap, d.topic("usage.calls"))
    originals = [r.value for r in calls if r.value and b'"e-big"' in r.value]
    assert originals == [json.dumps(big).encode()] * 3
    assert len(calls) == calls_before + 2 * 2 + 1  # e-uk and e-big twice, and s-call


async def _is(worker: Worker, want: str) -> bool:
    return await balance(worker) == want
