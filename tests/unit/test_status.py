"""The contract's rule for which status alert gives a tenant's status
(processor/core/status.py), shared by the ledger sink, the simulator's gate and the live
view."""

from __future__ import annotations

import pytest

from processor.core.status import status_rank, supersedes


@pytest.mark.parametrize(
    ("status_seq", "rank"),
    [(1, 1), (7, 7), (None, 0), (0, 0), (-3, 0), (True, 0), ("5", 0), (2.0, 0)],
)
def test_an_alert_ranks_by_its_status_seq_and_without_a_valid_one_below_all(
    status_seq: object, rank: int
) -> None:
    assert status_rank(status_seq) == rank


def test_the_highest_number_wins_not_the_last_arrival() -> None:
    assert supersedes(1, None)  # the first status alert
    assert supersedes(4, 3)
    assert not supersedes(2, 3)  # an older alert re-delivered late
    assert not supersedes(3, 3)  # the same alert again


def test_unnumbered_alerts_rank_below_numbered_ones_and_among_themselves_by_arrival() -> None:
    assert supersedes(0, None)
    assert supersedes(0, 0)  # only arrival orders two unnumbered alerts
    assert supersedes(1, 0)
    assert not supersedes(0, 1)
