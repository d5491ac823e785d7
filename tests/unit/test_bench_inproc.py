"""`python -m bench.inproc` still runs the worker's per-record path and times it.

This checks the harness, not the number: a few thousand records say nothing about speed.
"""

from __future__ import annotations

import pytest

from bench.inproc import main, measure


def test_the_in_process_harness_times_every_usage_record() -> None:
    per_record = measure(records=2000, tenants=200)
    # Staging and flushing a record takes microseconds, not nothing and not seconds.
    assert 1e-7 < per_record < 0.01


def test_it_prints_the_cost_per_record(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--records", "500", "--tenants", "50"]) == 0
    assert "us CPU per record (500 records, 1,000 a round)" in capsys.readouterr().out


def test_rounds_as_small_as_the_latency_phase_s_are_timed_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--records", "500", "--tenants", "50", "--round", "170"]) == 0
    assert "(500 records, 170 a round)" in capsys.readouterr().out
