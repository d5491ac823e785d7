"""A real Prometheus server (Debian's binary) scrapes a real worker during a scenario.

The server runs on a free loopback port with its own config and storage under
tmp_path, scrapes every second, and loads the project's alert rules; the test asks
its HTTP API for the series and values the scenario must have produced. The packaged
system service, if any, is never used.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from processor.dev.kafka_local import free_port
from tests.integration.harness import Client, Deployment, Worker, eventually, now_rfc3339
from tests.support import events

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "credits-meter.rules.yml"
NOW = now_rfc3339()  # event time within the dedupe window
call = partial(events.call, at=NOW)
funds = partial(events.funds, at=NOW)


class Prometheus:
    """One `prometheus` process with a config of our own, stopped by `stop()`."""

    def __init__(self, root: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(
                "prometheus not found on PATH: install Debian's `prometheus` package "
                "(apt-get install prometheus), as .ci/run does",
                pytrace=False,
            )
        self.binary = binary
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "prometheus.log"
        self.config = root / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "credits-meter",
                            "scrape_timeout": "1s",
                            "static_configs": [{"targets": targets}],
                        }
                    ],
                }
            )
        )
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        self.port = free_port()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def start(self, timeout: float = 60.0) -> Prometheus:
        # free_port() is racy: if another process takes the port first, the server
        # exits at once, and a fresh port is tried.
        for _ in range(3):
            self._spawn()
            try:
                await eventually(self._ready, timeout, what="prometheus ready")
                return self
            except _Exited:
                continue
        raise AssertionError(f"prometheus would not start:\n{self.log_tail()}")

    async def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise _Exited
        try:
            async with aiohttp.ClientSession() as http, http.get(self.url + "/-/ready") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    async def api(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/api/v1/{path}", params=params) as resp,
        ):
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of an instant query, None while it returns nothing."""
        result = await self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    async def wait_value(
        self, expr: str, expected: float, timeout: float = 30.0, tolerance: float = 1e-9
    ) -> None:
        async def matches() -> bool | str:
            got = await self.value(expr)
            if got is not None and abs(got - expected) <= tolerance:
                return True
            return f"not yet: {expr} = {got}, want {expected}"

        await eventually(matches, timeout, what=expr)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class _Exited(Exception):
    pass


@pytest.fixture
async def stack(kafka: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a worker and a Prometheus scraping it; stop both afterwards."""
    started: list[Worker | Prometheus] = []

    async def make(**env: str) -> tuple[Deployment, Worker, Prometheus]:
        d = Deployment(
            kafka.bootstrap,
            tmp_path / f"d-{random.randrange(10**6)}",
            partitions=2,
            env_extra=dict(env),
        )
        d.root.mkdir(parents=True)
        worker = Worker(d, 0).start()
        started.append(worker)
        await worker.wait_ready()
        prom = Prometheus(d.root / "prometheus", [f"127.0.0.1:{worker.port}"])
        started.append(prom)
        await prom.start()
        return d, worker, prom

    yield make
    for thing in reversed(started):
        thing.stop()
        # Shown by pytest only when the test failed.
        name = type(thing).__name__.lower()
        print(f"--- {name} log ---\n{thing.log_tail()}")


async def test_prometheus_scrapes_the_scenario_and_loads_the_rules(
    stack: Callable[..., Any],
) -> None:
    d, worker, prom = await stack()
    target = f'job="credits-meter", instance="127.0.0.1:{worker.port}"'
    await prom.wait_value(f"up{{{target}}}", 1)

    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant="acme", amount="10.00"))
        for i in range(3):
            await c.send("usage.calls", call(f"e{i}", tenant="acme"))
        await c.send("usage.calls", call("e0", tenant="acme"))  # a re-sent duplicate
        await c.send("usage.calls", b'{"event_id": "broken', key="acme")
        await c.send("usage.calls", {**call("bad", tenant="acme"), "duration_seconds": -5})

    async def settled() -> bool | str:
        status, body = await worker.get("/tenants/acme/account")
        return (status == 200 and body["balance"] == "9.6040") or f"not yet: {status} {body}"

    await eventually(settled, what="acme at 10.0000 - 3 x 0.1320")

    # Processed is not yet scraped: each value is polled until the scrape shows it.
    records = f'meter_records_total{{{target}, topic="%s", outcome="%s"}}'
    await prom.wait_value(f'sum(meter_records_total{{{target}, outcome="applied"}})', 4)
    await prom.wait_value(records % ("calls", "applied"), 3)
    await prom.wait_value(records % ("commands", "applied"), 1)
    await prom.wait_value(records % ("calls", "duplicate"), 1)
    await prom.wait_value(f'meter_rejected_total{{{target}, reason="invalid_json"}}', 1)
    await prom.wait_value(f'meter_rejected_total{{{target}, reason="invalid_event"}}', 1)
    await prom.wait_value(
        f'meter_money_total{{{target}, currency="USD", direction="debit"}}', 0.396, tolerance=1e-9
    )
    await prom.wait_value(
        f'meter_money_total{{{target}, currency="USD", direction="credit"}}', 10, tolerance=1e-9
    )
    await prom.wait_value(f"meter_tenants{{{target}}}", 1)
    # Histograms arrive as buckets; the dashboard's quantile query answers.
    applied_count = await prom.value(f"sum(meter_processing_seconds_count{{{target}}})")
    assert applied_count is not None and applied_count >= 4
    p99 = await prom.value(
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(meter_processing_seconds_bucket{{{target}}}[1m])))"
    )
    assert p99 is not None and 0 < p99 <= 0.5

    # The project's rules load into a real server, evaluate without error, and with
    # a healthy worker and usage flowing none stays active. Polled: a rule evaluated
    # just before the usage was scraped is still pending on NoUsage until the next
    # round. This scenario runs a worker alone: the rules that no notifier or ledger
    # sink is there at all must be the ones that go off (checked below).
    expected = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    missing = {"CreditsMeterAllNotifiersDown", "CreditsMeterAllLedgerSinksDown"}
    quiet = expected - missing

    async def rules_quiet() -> dict[str, str] | str:
        groups = (await prom.api("rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        active = [
            (r["name"], r["state"])
            for r in rules
            if r["name"] in quiet and r["state"] != "inactive"
        ]
        if not rules or bad or active:
            return f"not yet: {bad or active or 'no rules'}"
        return {r["name"]: r["state"] for r in rules}

    states = await eventually(rules_quiet, 30, what="alert rules evaluated and quiet")
    assert set(states) == expected
    assert {name for name in missing if states[name] != "inactive"} == missing

    # A worker that goes away: up drops to 0 and WorkerDown starts its `for` period.
    worker.stop()
    await prom.wait_value(f"up{{{target}}}", 0)

    async def worker_down_pending() -> list[dict[str, Any]] | None:
        alerts = (await prom.api("alerts"))["alerts"]
        found = [
            a
            for a in alerts
            if a["labels"]["alertname"] == "CreditsMeterWorkerDown"
            and a["labels"]["instance"] == f"127.0.0.1:{worker.port}"
        ]
        return found or None

    [alert] = await eventually(worker_down_pending, 30, what="WorkerDown pending")
    assert alert["state"] == "pending" and alert["labels"]["severity"] == "warning"


async def test_worker_observers_reach_prometheus(stack: Callable[..., Any]) -> None:
    d, worker, prom = await stack(METER_METRICS_TENANT_BALANCES="5")
    target = f'job="credits-meter", instance="127.0.0.1:{worker.port}"'
    await prom.wait_value(f"meter_ready{{{target}}}", 1)
    # The first join of the group is a rebalance too.
    rebalances = await prom.value(f"meter_rebalances_total{{{target}}}")
    assert rebalances is not None and rebalances >= 1

    started = time.monotonic()
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant="acme", amount="1.00"))
        await c.send("credits.commands", funds("c2", tenant="globex", amount="5.00"))
        await c.send("usage.calls", call("e1", tenant="acme"))
    await prom.wait_value(f'meter_tenant_balance{{{target}, tenant="acme", currency="USD"}}', 0.868)
    await prom.wait_value(f'meter_tenant_balance{{{target}, tenant="globex", currency="USD"}}', 5)
    # Every owned input partition reports its lag, and everything sent was processed
    # (Faust commits within a few seconds).
    await prom.wait_value(f'count(meter_consumer_lag_records{{{target}, topic="calls"}})', 2)
    await prom.wait_value(f"sum(meter_consumer_lag_records{{{target}}})", 0, timeout=60)
    assert time.monotonic() - started < 90
