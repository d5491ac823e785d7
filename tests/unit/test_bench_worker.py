"""The bench's worker runs the code of the checkout the bench is in."""

from __future__ import annotations

import os
from pathlib import Path

from bench.worker import CHECKOUT, worker_pythonpath


def test_the_worker_imports_processor_from_the_benchs_own_checkout_first() -> None:
    assert (CHECKOUT / "processor" / "__init__.py").is_file()
    assert (CHECKOUT / "bench" / "worker.py").is_file()
    assert worker_pythonpath(None) == str(CHECKOUT)
    inherited = os.pathsep.join(["/elsewhere", "/more"])
    assert worker_pythonpath(inherited).split(os.pathsep) == [str(CHECKOUT), "/elsewhere", "/more"]


def test_the_checkout_is_where_this_test_runs_from() -> None:
    assert Path(__file__).resolve().is_relative_to(CHECKOUT)
