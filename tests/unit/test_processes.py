"""`meter worker --processes N`: the supervisor's policy, with fake children and time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from processor.ops.cli import main
from processor.ops.processes import (
    FIRST_BACKOFF_SECONDS,
    MAX_PROCESSES,
    STOP_GRACE_SECONDS,
    Supervisor,
    child_env,
)


class FakeChild:
    """A child process whose exit the test decides."""

    _next_pid = 1000

    def __init__(self, index: int, on_signal: int | None = 0) -> None:
        FakeChild._next_pid += 1
        self.pid = FakeChild._next_pid
        self.index = index
        self.code: int | None = None
        self.signals: list[int] = []
        self.killed = False
        # The exit code a forwarded signal leads to (None: the child ignores it).
        self.on_signal = on_signal

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if self.on_signal is not None:
            self.code = self.on_signal

    def kill(self) -> None:
        self.killed = True
        self.code = -signal.SIGKILL


class Rig:
    """A supervisor of fakes on a fake clock, driven one step at a time."""

    def __init__(self, count: int, on_signal: int | None = 0) -> None:
        self.now = 0.0
        self.spawned: list[FakeChild] = []
        self.on_signal = on_signal
        self.sup = Supervisor(count, self.spawn, clock=lambda: self.now, sleep=self.advance)

    def spawn(self, index: int) -> FakeChild:
        child = FakeChild(index, self.on_signal)
        self.spawned.append(child)
        return child

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def live(self, index: int) -> FakeChild:
        return [c for c in self.spawned if c.index == index][-1]


def started(count: int, on_signal: int | None = 0) -> Rig:
    rig = Rig(count, on_signal)
    rig.sup.start()
    return rig


def test_a_crashed_child_is_restarted_after_a_back_off() -> None:
    rig = started(2)
    assert len(rig.spawned) == 2
    crashed = rig.live(1)
    crashed.code = 1
    assert rig.sup.step() is False
    assert len(rig.spawned) == 2, "not before the back-off"
    rig.advance(FIRST_BACKOFF_SECONDS)
    assert rig.sup.step() is False
    assert len(rig.spawned) == 3
    assert rig.live(1) is not crashed and rig.live(1).poll() is None
    assert rig.live(0).signals == []


def test_back_off_doubles_while_a_child_keeps_crashing_early() -> None:
    rig = started(1)
    waits = []
    for _ in range(3):
        rig.live(0).code = 1
        rig.sup.step()
        before = len(rig.spawned)
        waited = 0.0
        while len(rig.spawned) == before:
            rig.advance(0.5)
            waited += 0.5
            rig.sup.step()
        waits.append(waited)
    assert waits == [FIRST_BACKOFF_SECONDS, 2 * FIRST_BACKOFF_SECONDS, 4 * FIRST_BACKOFF_SECONDS]


def test_a_killed_child_is_restarted_too() -> None:
    rig = started(2)
    rig.live(0).code = -signal.SIGKILL
    rig.sup.step()
    rig.advance(FIRST_BACKOFF_SECONDS)
    rig.sup.step()
    assert len(rig.spawned) == 3 and rig.live(0).poll() is None


def test_a_startup_refusal_stops_everything_with_exit_2() -> None:
    rig = started(3)
    rig.live(2).code = 2
    while not rig.sup.step():
        rig.advance(0.2)
    assert len(rig.spawned) == 3, "a refusal is not restarted"
    assert rig.live(0).signals == [signal.SIGTERM]
    assert rig.live(1).signals == [signal.SIGTERM]
    assert rig.sup.exit_code() == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_forwarded_to_every_child_and_ends_with_0(sig: int) -> None:
    rig = started(3)
    rig.sup.request_stop(sig, None)
    assert rig.sup.step() is True
    assert [c.signals for c in rig.spawned] == [[sig]] * 3
    assert rig.sup.exit_code() == 0


def test_a_child_that_does_not_stop_is_killed_after_the_grace_period() -> None:
    rig = started(2, on_signal=None)
    rig.sup.request_stop(signal.SIGTERM, None)
    assert rig.sup.step() is False
    rig.advance(STOP_GRACE_SECONDS)
    assert rig.sup.step() is False  # kills now; collects next round
    assert rig.sup.step() is True
    assert all(c.killed for c in rig.spawned)
    assert rig.sup.exit_code() == 1, "not a clean stop"


def test_a_child_waiting_for_its_restart_is_not_restarted_once_stopping() -> None:
    rig = started(2)
    rig.live(0).code = 1
    rig.sup.step()
    rig.sup.request_stop(signal.SIGTERM, None)
    rig.advance(FIRST_BACKOFF_SECONDS)
    assert rig.sup.step() is True
    assert len(rig.spawned) == 2
    assert rig.sup.exit_code() == 0


def test_each_child_has_its_own_port_and_state_directory(tmp_path: Path) -> None:
    env = {"METER_APP_ID": "a", "METER_WEB_PORT": "6066", "METER_DATA_DIR": "x"}
    first, second = (child_env(env, i, 6066, tmp_path) for i in (0, 1))
    assert (first["METER_WEB_PORT"], second["METER_WEB_PORT"]) == ("6066", "6067")
    assert first["METER_DATA_DIR"] != second["METER_DATA_DIR"]
    assert first["METER_APP_ID"] == second["METER_APP_ID"] == "a"
    assert child_env(env, 3, 0, tmp_path)["METER_WEB_PORT"] == "0"


@pytest.mark.parametrize("count", [0, -1, MAX_PROCESSES + 1])
def test_a_process_count_out_of_bounds_is_refused_with_exit_2(
    count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--processes", str(count)]) == 2
    assert f"--processes {count}: must be 1 to {MAX_PROCESSES}" in capsys.readouterr().err


def test_run_supervises_until_a_signal_and_returns_the_exit_code() -> None:
    rig = Rig(2)
    rounds = 0

    def sleep(seconds: float) -> None:
        nonlocal rounds
        rounds += 1
        rig.advance(seconds)
        if rounds == 3:
            rig.live(1).code = 1  # a crash, restarted after the back-off
        if rounds == 20:
            rig.sup.request_stop(signal.SIGTERM, None)

    rig.sup = Supervisor(2, rig.spawn, clock=lambda: rig.now, sleep=sleep)
    assert rig.sup.run() == 0
    assert len(rig.spawned) == 3
    assert [c.signals for c in (rig.live(0), rig.live(1))] == [[signal.SIGTERM]] * 2


def test_children_that_refuse_to_start_stop_the_real_supervisor_with_2(tmp_path: Path) -> None:
    """End to end with real children: a rate card that does not load is a refusal."""
    env = {
        **os.environ,
        "METER_RATE_CARD": str(tmp_path / "missing.yaml"),
        "METER_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "processor.ops.cli", "worker", "--processes", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "refused to start (exit 2); stopping all" in done.stderr
    assert (tmp_path / "data" / "process-1").is_dir()


def test_a_child_that_cannot_be_spawned_again_is_tried_later() -> None:
    rig = Rig(1)
    calls = 0

    def flaky(index: int) -> FakeChild:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first restart
            raise OSError("fork: no more processes")
        return rig.spawn(index)

    rig.sup = Supervisor(1, flaky, clock=lambda: rig.now, sleep=rig.advance)
    rig.sup.start()
    rig.live(0).code = 1
    rig.sup.step()
    rig.advance(FIRST_BACKOFF_SECONDS)
    rig.sup.step()  # the spawn fails: no new child, no crash of the supervisor
    assert len(rig.spawned) == 1
    rig.advance(2 * FIRST_BACKOFF_SECONDS)
    rig.sup.step()
    assert len(rig.spawned) == 2 and rig.live(0).poll() is None
