"""One real `meter worker` subprocess, configured only through its environment.

With `processes` > 1 it is `meter worker --processes N`: a supervisor whose children
serve METER_WEB_PORT + i; their records are summed, and their CPU and memory are the
supervisor's process tree's (bench/procstat.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from processor.dev.kafka_local import free_port, free_port_run
from processor.ops.compiled import pythonpath_first

METER = str(Path(sys.executable).with_name("meter"))
# The checkout this bench is in. `meter` comes from the virtualenv, whose editable
# install imports `processor` from the checkout it was installed from: a bench run from
# another worktree would drive that checkout's worker, not its own
# (docs/performance.md, "Comparing two codes: the worker must run the worktree's").
CHECKOUT = Path(__file__).resolve().parents[1]
# The sources whose records the drain counts (the timer's ticks are not input).
INPUT_TOPICS = ("calls", "conferencing", "commands")


class BenchWorker:
    def __init__(
        self,
        bootstrap: str,
        app_id: str,
        prefix: str,
        partitions: int,
        root: Path,
        index: int = 0,
        processes: int = 1,
    ) -> None:
        self.processes = processes
        self.port = free_port() if processes == 1 else free_port_run(processes)
        self.log_path = root / f"worker-{index}.log"
        # meter_transactions_total at the last /metrics poll (`records_done`), summed.
        self.transactions = 0.0
        # Each process's count at the last poll (their partitions' shares of the work).
        self.each: list[int] = []
        self._transactions = 0.0
        self.env = dict(os.environ)
        self.env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            METER_APP_ID=app_id,
            METER_TOPIC_PREFIX=prefix,
            METER_PARTITIONS=str(partitions),
            METER_DATA_DIR=str(root / f"worker-{index}"),
            METER_WEB_PORT=str(self.port),
            METER_WEB_HOST="127.0.0.1",
            METER_LOG_LEVEL="warning",
            PYTHONPATH=worker_pythonpath(os.environ.get("PYTHONPATH")),
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            command = [METER, "worker"]
            if self.processes > 1:
                command += ["--processes", str(self.processes)]
            self.proc = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")

    async def records_done(self, http: aiohttp.ClientSession) -> int | None:
        """Input records the worker has handled, any outcome (None: not answering yet).

        With several processes, their sum once every one answers; `all_handling` says
        whether each has handled a record yet (so the group's first rebalance is over)."""
        each = []
        transactions = 0.0
        for port in range(self.port, self.port + self.processes):
            done = await self._records_done(http, port)
            if done is None:
                return None
            each.append(done)
            transactions += self._transactions
        self.transactions = transactions
        self.each = each
        return sum(each)

    @property
    def all_handling(self) -> bool:
        """Whether every process had handled a record at the last poll."""
        return bool(self.each) and all(self.each)

    async def _records_done(self, http: aiohttp.ClientSession, port: int) -> int | None:
        try:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        total = 0.0
        self._transactions = 0.0
        for line in text.splitlines():
            if line.startswith("meter_transactions_total "):
                self._transactions = float(line.rsplit(" ", 1)[1])
            if line.startswith("meter_records_total{") and any(
                f'topic="{t}"' in line for t in INPUT_TOPICS
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def stop(self, timeout: float = 20.0) -> None:
        # SIGTERM, then SIGKILL: a Faust worker can hang in shutdown. The group holds a
        # supervisor's children too.
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def worker_pythonpath(inherited: str | None) -> str:
    """The worker's PYTHONPATH: this bench's checkout first, so its `processor` (and the
    compiled build beside it) is the one that runs."""
    return pythonpath_first(CHECKOUT, inherited)
