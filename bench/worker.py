"""One real `meter worker` subprocess, configured only through its environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from processor.dev.kafka_local import free_port

METER = str(Path(sys.executable).with_name("meter"))
# The sources whose records the drain counts (the timer's ticks are not input).
INPUT_TOPICS = ("calls", "conferencing", "commands")


class BenchWorker:
    def __init__(
        self, bootstrap: str, app_id: str, prefix: str, partitions: int, root: Path, index: int = 0
    ) -> None:
        self.port = free_port()
        self.log_path = root / f"worker-{index}.log"
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
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [METER, "worker"],
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
        """Input records the worker has handled, any outcome (None: not answering yet)."""
        try:
            async with http.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith("meter_records_total{") and any(
                f'topic="{t}"' in line for t in INPUT_TOPICS
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def stop(self, timeout: float = 20.0) -> None:
        # SIGTERM, then SIGKILL: a Faust worker can hang in shutdown.
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
