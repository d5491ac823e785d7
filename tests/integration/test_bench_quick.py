"""`python -m bench.run --quick` still runs end to end and writes a complete result.

This checks the harness, not the numbers: the quick form's counts are too small to
mean anything about speed. It starts its own broker, like `make bench` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = (
    "ceiling_events_per_s",
    "drain_events_per_s",
    "ratio_to_ceiling",
    "cpu_seconds_per_1000",
    "peak_rss_mb",
    "events",
    "tenants",
    "partitions",
)


@pytest.mark.timeout(420)
def test_quick_bench_writes_every_number(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--processes",
            "2",
            "--scaling",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    for key in NUMBERS:
        assert isinstance(result[key], int | float) and result[key] > 0, (key, result.get(key))
    # The broker works for every drained record, and two processes were busy.
    assert result["broker_cpu_seconds_per_1000"] > 0, result
    assert 0 < result["machine_busy"] <= 1, result
    # The ceiling's two passes, either side of the drain, and the drain set against
    # their mean.
    passes = result["ceiling"]
    before, after = passes["before_events_per_s"], passes["after_events_per_s"]
    assert before > 0 and after > 0, passes
    assert result["ceiling_events_per_s"] == pytest.approx((before + after) / 2, abs=0.1)
    assert result["ratio_to_ceiling"] == pytest.approx(
        result["drain_events_per_s"] / result["ceiling_events_per_s"], rel=1e-3
    )
    for q in ("p50", "p99", "p999"):
        assert result["latency_ms"][q] > 0, result["latency_ms"]
    assert (
        result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["p999"]
    )
    # The relay's floor in the same phase: every tracked event timed, the worker's
    # latency set against it.
    floor = result["latency_floor"]
    assert 0 < floor["matched"] == floor["tracked"], floor
    assert 0 < floor["latency_ms"]["p50"] <= floor["latency_ms"]["p99"], floor
    assert floor["split"]["relay_cores"] > 0, floor
    assert floor["worker_over_floor"]["p99"] > 0, floor
    rec = result["recovery"]
    assert rec["tenants"] == 2000, rec
    assert rec["ready_seconds_first_start"] > 0 and rec["ready_seconds_restart"] > 0, rec
    assert rec["rss_mb_ready"] > 0 and rec["rss_mb_empty"] > 0, rec
    # `--processes 2`: each child's records are counted (in the quick form the first
    # to join may drain them all before the other does), and the pair is set against
    # one worker and the ceiling as the one worker is.
    procs = result["processes"]
    assert procs["processes"] == 2 and procs["events_per_s"] > 0, procs
    assert len(procs["records_per_process"]) == 2, procs
    assert sum(procs["records_per_process"]) >= procs["events"], procs
    assert procs["ratio_to_ceiling"] > 0 and procs["ratio_to_one_worker"] > 0, procs
    # `--scaling`: two separate workers of a second deployment, counted the same way.
    pair = result["scaling"]
    assert pair["two_workers_events_per_s"] > 0, pair
    assert len(pair["records_per_worker"]) == 2, pair
    assert sum(pair["records_per_worker"]) >= pair["events"], pair
    assert pair["ratio_to_ceiling"] > 0 and pair["ratio_to_one_worker"] > 0, pair
    assert result["quick"] is True
    assert result["partitions"] == 12
    assert result["kafka_version"]
    assert result["timestamp"]
