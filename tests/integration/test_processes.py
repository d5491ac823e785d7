"""`meter worker --processes 2` on the real broker: one supervisor, two workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processor.dev.kafka_local import free_port_run
from tests.integration.harness import METER, Client, Deployment, eventually
from tests.integration.test_pipeline import expected_balances, scenario

pytestmark = pytest.mark.integration

PROCESSES = 2
LAG_LINE = re.compile(r'^meter_consumer_lag_records\{[^}]*partition="(\d+)"')


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class Supervised:
    """`meter worker --processes N` as a subprocess, and its children's HTTP ports."""

    def __init__(self, d: Deployment, count: int) -> None:
        self.count = count
        self.base = free_port_run(count)
        self.log_path = d.root / "supervisor.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [METER, "worker", "--processes", str(count)],
                env=d.env(0, self.base),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.base + index}"

    def log_tail(self, lines: int = 120) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def get(self, index: int, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url(index) + path) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def all_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited with {self.proc.returncode}")
        for i in range(self.count):
            try:
                status, _ = await self.get(i, "/ready")
            except aiohttp.ClientError:
                return False
            if status != 200:
                return False
        return True

    async def owned(self, index: int) -> set[int]:
        """Input partitions child `index` reports lag for: the ones it owns."""
        _, text = await self.get(index, "/metrics")
        return {int(m.group(1)) for line in text.splitlines() if (m := LAG_LINE.match(line))}

    def stop(self) -> None:
        """After a failure: SIGKILL its process group, the children included."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


async def test_two_processes_split_the_partitions_survive_a_kill_and_stop_on_sigterm(
    kafka: Any, tmp_path: Path
) -> None:
    d = Deployment(kafka.bootstrap, tmp_path / "d", partitions=4)
    d.root.mkdir(parents=True)
    sup = Supervised(d, PROCESSES)
    try:
        await eventually(sup.all_ready, timeout=120, what="both children ready")
        first_children = children(sup.proc.pid)
        assert len(first_children) == PROCESSES

        records = scenario()
        expected = expected_balances(records)
        async with Client(d) as c:
            for topic, body in records:
                await c.send(topic, body)

        async def balances_exact(index: int) -> bool | str:
            wrong = {}
            for tenant, balance in expected.items():
                status, body = await sup.get(index, f"/tenants/{tenant}/account")
                got = body.get("balance") if status == 200 else status
                if got != balance:
                    wrong[tenant] = (balance, got)
            return not wrong or f"not yet: {wrong}"

        # Either child answers for every tenant, whichever owns it.
        for i in range(PROCESSES):
            await eventually(
                partial(balances_exact, i), timeout=120, what=f"exact balances from child {i}"
            )

        async def split() -> bool | str:
            owned = [await sup.owned(i) for i in range(PROCESSES)]
            whole = set().union(*owned) == set(range(d.partitions))
            disjoint = not (owned[0] & owned[1])
            return (whole and disjoint and all(owned)) or f"not yet: {owned}"

        await eventually(split, timeout=60, what="the partitions split between the children")

        # kill -9 one child: the supervisor starts it again, same port, and it is ready.
        victim = first_children[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(
            lambda: _async(victim not in children(sup.proc.pid)), what="the victim gone"
        )
        await eventually(
            lambda: _async(len(children(sup.proc.pid)) == PROCESSES), what="a new child"
        )
        await eventually(sup.all_ready, timeout=120, what="both children ready after the kill")
        for i in range(PROCESSES):
            await eventually(partial(balances_exact, i), timeout=60, what="balances kept")
        assert "exited with -9; restarting it" in sup.log_path.read_text(errors="replace")

        # SIGTERM to the supervisor alone: it forwards it, and all end cleanly.
        last_children = children(sup.proc.pid)
        os.kill(sup.proc.pid, signal.SIGTERM)
        assert sup.proc.wait(90) == 0, sup.log_tail()
        assert not any(alive(pid) for pid in last_children)
    finally:
        sup.stop()
        print(f"--- supervisor log ---\n{sup.log_tail()}")


async def _async(value: bool) -> bool:
    return value
