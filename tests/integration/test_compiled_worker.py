"""`meter worker` runs the compiled build `make setup` made, and rates as the source does.

The worker maps the build's mypyc extension (read from /proc) unless METER_COMPILED=off,
and either way its balances are the ones the interpreted core computes in this process.
The other integration tests run compiled workers too, whenever the build is current.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from processor.ops import compiled
from tests.integration.harness import Client, Deployment, eventually, running, signed_sum
from tests.integration.test_fuzz_worker import expected_balances
from tests.support.events import call, conference, funds
from tests.support.malformed import CALLS, COMMANDS, CONFERENCING

pytestmark = pytest.mark.integration

TENANTS = ("compiled-a", "compiled-b")


def _records() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for tenant in TENANTS:
        out.append((COMMANDS, funds(f"f-{tenant}", amount="25.00", tenant=tenant)))
        for i in range(20):
            out.append((CALLS, call(f"c-{tenant}-{i}", tenant=tenant, seconds=7 * i + 1)))
            out.append((CONFERENCING, conference(f"m-{tenant}-{i}", tenant=tenant, seconds=i + 1)))
    return out


def _mapped(pid: int) -> str:
    """The files process `pid` has mapped: its extension modules among them."""
    return Path(f"/proc/{pid}/maps").read_text()


def _current_build() -> Path:
    """The build `make setup` made, which the tests need current."""
    root = compiled.source_root()
    build_dir = compiled.default_build_dir(root)
    found = compiled.status(root, build_dir)
    assert found.usable, f"make setup builds it: {found.reason}"
    return build_dir


@pytest.mark.parametrize("mode", ["auto", "off"])
async def test_the_worker_runs_the_current_build_unless_told_not_to(
    kafka: Any, tmp_path: Path, mode: str
) -> None:
    build_dir = _current_build()
    d = Deployment(
        kafka.bootstrap, tmp_path / "compiled", partitions=2, env_extra={"METER_COMPILED": mode}
    )
    d.root.mkdir(parents=True)
    records = _records()
    async with running(d) as worker, Client(d) as client:
        assert worker.proc is not None
        maps = _mapped(worker.proc.pid)
        assert (f"{build_dir}/" in maps) == (mode == "auto")
        path = "compiled" if mode == "auto" else "interpreted"
        _, exposed = await worker.get("/metrics")
        assert f'meter_record_path_info{{path="{path}"}} 1.0' in exposed
        for topic, body in records:
            await client.send(topic, body)

        async def settled() -> tuple[list[Any], list[Any]] | str:
            entries = await client.read_all("credits.ledger")
            rejected = await client.read_all("credits.rejected")
            if len(entries) + len(rejected) < len(records):
                return f"not yet: {len(entries)} entries, {len(rejected)} rejected"
            return entries, rejected

        entries, rejected = await eventually(settled, 60, what="every record applied")
    assert rejected == []
    got = {tenant: signed_sum(entries, tenant) for tenant in TENANTS}
    assert got == expected_balances(records)


def test_the_build_refuses_a_write_to_a_value_field() -> None:
    # Interpreted, only mypy keeps the value classes' Final fields unchanged; compiled,
    # they are read-only attributes of native classes.
    build_dir = _current_build()
    script = (
        "import processor.core.stored as stored\n"
        "assert not stored.__file__.endswith('.py'), stored.__file__\n"
        "position = stored.Position('calls:0', 5)\n"
        "try:\n"
        "    position.offset = 6\n"
        "except AttributeError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {"PYTHONPATH": str(build_dir), "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("refused:"), done.stdout + done.stderr
