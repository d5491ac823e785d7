"""`meter worker --processes N`: one supervisor, N worker processes on one host.

A worker runs its agents on one event loop, so it uses one core. With N > 1 the
command starts N child `meter worker` processes of the same deployment (the same
METER_APP_ID, so one consumer group: Kafka splits the partitions between them), each
with its own web port (METER_WEB_PORT + i) and its own state directory
(METER_DATA_DIR/process-i: Faust's data dir must not be shared). The supervisor:

- forwards SIGTERM and SIGINT to every child and exits 0 when all stopped cleanly;
- restarts a child that exits unasked (Faust exits 1 on a crash, the worker's crash
  policy exits on purpose, or it was killed): that is what Kubernetes would do with a
  single-process worker. Back-off doubles while a child keeps crashing early;
- stops everything with exit 2 when a child exits 2: that is a startup refusal (bad
  configuration, a rate card in another currency...), which a restart would repeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final, Protocol

from processor.ops.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE

__all__ = [
    "MAX_PROCESSES",
    "Child",
    "Supervisor",
    "child_data_dir",
    "child_env",
    "run_processes",
]

log = logging.getLogger(__name__)

# A bound against a typo (`--processes 1000`), not a tuning: a host has a few dozen
# cores at most, and each child holds its partitions' accounts and marks in memory.
MAX_PROCESSES: Final = 64
# The first restart waits this long; each early crash in a row doubles it, up to the cap.
FIRST_BACKOFF_SECONDS: Final = 1.0
MAX_BACKOFF_SECONDS: Final = 30.0
# A child that ran this long before crashing starts over at the first back-off.
STABLE_SECONDS: Final = 60.0
# After forwarding a stop signal: how long the children get before SIGKILL (a Faust
# worker can hang in shutdown; Kubernetes' default grace period is 30 s).
STOP_GRACE_SECONDS: Final = 30.0
POLL_SECONDS: Final = 0.2


class Child(Protocol):
    """What the supervisor needs of a child process (`subprocess.Popen` has it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


@dataclass
class _Slot:
    index: int
    child: Child
    started: float
    backoff: float = FIRST_BACKOFF_SECONDS
    restart_at: float | None = None  # set while the child is down and waiting
    exit_code: int | None = None  # set once the child has stopped for good


class Supervisor:
    """Keeps `count` children running until told to stop.

    `spawn(i)` starts child i; it, `clock` and `sleep` are injected so the policy can
    be tested with fake children and fake time.
    """

    def __init__(
        self,
        count: int,
        spawn: Callable[[int], Child],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._count = count
        self._spawn = spawn
        self._clock = clock
        self._sleep = sleep
        self._slots: list[_Slot] = []
        self._stop_signal: int | None = None
        self._stopping = False  # a stop signal went to the children
        self._stop_deadline: float | None = None
        self._refused = False

    def request_stop(self, sig: int, frame: FrameType | None = None) -> None:
        """The signal handler: remember the signal; `run`'s loop forwards it."""
        if self._stop_signal is None:
            self._stop_signal = sig

    @property
    def pids(self) -> list[int]:
        """The children's process ids now (a waiting slot keeps its last one)."""
        return [slot.child.pid for slot in self._slots]

    def run(self) -> int:
        """Start the children and supervise them; the exit code of the whole."""
        self.start()
        while not self.step():
            self._sleep(POLL_SECONDS)
        return self.exit_code()

    def start(self) -> None:
        """Spawn every child."""
        now = self._clock()
        self._slots = [_Slot(i, self._spawn(i), now) for i in range(self._count)]
        log.info("started %d worker processes: pids %s", self._count, self.pids)

    def step(self) -> bool:
        """One round of the policy; True once every child has stopped for good."""
        now = self._clock()
        if self._stop_signal is not None and not self._stopping:
            self._forward(self._stop_signal, now)
        for slot in self._slots:
            if slot.exit_code is not None:
                continue
            if slot.restart_at is not None:
                if self._stopping:
                    slot.exit_code = EXIT_OK  # down already; nothing to stop
                elif now >= slot.restart_at:
                    self._restart(slot, now)
                continue
            code = slot.child.poll()
            if code is None:
                continue
            if self._stopping:
                slot.exit_code = code
            elif code == EXIT_USAGE:
                log.error(
                    "worker process %d (pid %d) refused to start (exit 2); stopping all",
                    slot.index,
                    slot.child.pid,
                )
                slot.exit_code = code
                self._refused = True
                self._forward(signal.SIGTERM, now)
            else:
                self._schedule_restart(slot, code, now)
        if self._stopping and self._stop_deadline is not None and now >= self._stop_deadline:
            for slot in self._slots:
                if slot.exit_code is None and slot.restart_at is None:
                    log.error("worker process %d did not stop in time; killing it", slot.index)
                    slot.child.kill()
            self._stop_deadline = None
        return all(slot.exit_code is not None for slot in self._slots)

    def _forward(self, sig: int, now: float) -> None:
        self._stopping = True
        self._stop_deadline = now + STOP_GRACE_SECONDS
        for slot in self._slots:
            if slot.exit_code is None and slot.restart_at is None:
                # Exited since the last poll: the next poll collects it.
                with contextlib.suppress(ProcessLookupError):
                    slot.child.send_signal(sig)

    def _schedule_restart(self, slot: _Slot, code: int, now: float) -> None:
        if now - slot.started >= STABLE_SECONDS:
            slot.backoff = FIRST_BACKOFF_SECONDS
        log.warning(
            "worker process %d (pid %d) exited with %d; restarting it in %.1f s",
            slot.index,
            slot.child.pid,
            code,
            slot.backoff,
        )
        slot.restart_at = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, MAX_BACKOFF_SECONDS)

    def _restart(self, slot: _Slot, now: float) -> None:
        try:
            child = self._spawn(slot.index)
        except OSError as exc:
            # Out of processes or memory for a moment: try again, later each time.
            log.error("worker process %d could not be started: %s", slot.index, exc)
            slot.restart_at = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF_SECONDS)
            return
        slot.child = child
        slot.started = now
        slot.restart_at = None
        log.info("worker process %d restarted: pid %d", slot.index, slot.child.pid)

    def exit_code(self) -> int:
        """0 when every child stopped cleanly, 2 after a refusal, else 1."""
        if self._refused:
            return EXIT_USAGE
        if all(slot.exit_code == EXIT_OK for slot in self._slots):
            return EXIT_OK
        return EXIT_PROBLEM


def child_env(
    environ: Mapping[str, str], index: int, web_port: int, data_dir: Path
) -> dict[str, str]:
    """Child `index`'s environment: the parent's, with its own port and state directory.

    Port 0 (any free port) stays 0 for every child.
    """
    env = dict(environ)
    env["METER_WEB_PORT"] = str(web_port + index if web_port else 0)
    env["METER_DATA_DIR"] = str(child_data_dir(data_dir, index))
    return env


def child_data_dir(data_dir: Path, index: int) -> Path:
    return data_dir / f"process-{index}"


def run_processes(
    count: int,
    worker_args: Sequence[str],
    web_port: int,
    data_dir: Path,
) -> int:
    """`meter worker --processes N` with N > 1: spawn, supervise, forward signals."""
    if web_port and web_port + count - 1 > 65535:
        print(
            f"meter worker: METER_WEB_PORT={web_port} leaves no room for {count} processes "
            f"(ports {web_port}..{web_port + count - 1})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    command = [sys.executable, "-m", "processor.ops.cli", "worker", *worker_args]

    def spawn(index: int) -> Child:
        # Faust creates its data dir but not the parents (METER_DATA_DIR may be new).
        child_data_dir(data_dir, index).mkdir(parents=True, exist_ok=True)
        # The supervisor's process group: a group-wide signal (Ctrl-C in a terminal,
        # kill -- -PGID) reaches the children as well as the forwarded one, which mode's
        # worker ignores (it acts on the first), and a group-wide SIGKILL leaves no
        # orphan behind.
        return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command, env=child_env(os.environ, index, web_port, data_dir)
        )

    supervisor = Supervisor(count, spawn)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()
