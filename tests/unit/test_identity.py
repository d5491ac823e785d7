"""WorkerIdentity (processor/worker/identity.py): the worker's transactional id is kept
in its data directory across restarts, and never shared by two running workers."""

from __future__ import annotations

from pathlib import Path

from processor.worker.identity import WorkerIdentity


def test_a_restart_on_the_same_data_directory_keeps_the_id(tmp_path: Path) -> None:
    first = WorkerIdentity(tmp_path / "data")
    first.release()
    again = WorkerIdentity(tmp_path / "data")
    assert again.value == first.value and len(first.value) == 32


def test_a_second_worker_on_a_held_directory_takes_an_id_of_its_own(tmp_path: Path) -> None:
    running = WorkerIdentity(tmp_path)
    second = WorkerIdentity(tmp_path)
    assert second.value != running.value
    running.release()
    # The kept id is the first worker's, for its next restart.
    assert WorkerIdentity(tmp_path).value == running.value


def test_a_directory_it_cannot_write_still_gives_an_id(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert len(WorkerIdentity(blocked / "data").value) == 32
