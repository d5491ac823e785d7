"""The latency phase's p99 second by second shows when in the phase the tail came."""

from __future__ import annotations

from bench.measures import p99_by_second


def test_each_second_of_sends_gets_its_own_p99_and_only_acked_reads_count() -> None:
    # Second 0: 100 records at 10 ms, one at 90; second 2: 100 at 200 ms; second 1: none.
    sent = {f"a{i}": 100.0 + i / 1000 for i in range(101)}
    sent |= {f"c{i}": 102.0 + i / 1000 for i in range(100)}
    arrived = {e: t + 0.010 for e, t in sent.items() if e.startswith("a")}
    arrived["a100"] = sent["a100"] + 0.090
    arrived |= {e: t + 0.200 for e, t in sent.items() if e.startswith("c")}
    sent["x"] = 100.5  # sent and read, but never acknowledged: not counted
    arrived["x"] = 101.5
    acked = set(sent) - {"x"}

    by_second = p99_by_second(sent, arrived, acked)

    assert by_second == [10.0, 0.0, 200.0]


def test_a_phase_with_nothing_read_has_no_seconds() -> None:
    assert p99_by_second({"a": 1.0}, {}, {"a"}) == []
    assert p99_by_second({}, {}, set()) == []
