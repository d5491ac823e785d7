"""Which `exhausted`/`restored` alert gives a tenant's status: the contract's rule for
consumers of `credits.alerts` (docs/contract.md, `status_seq`).

The highest `status_seq` seen wins, not the last alert to arrive: a re-delivered older
alert keeps its old number. Alerts from before the field have none, and any numbered
alert is newer than them; among unnumbered ones only arrival can order them.
"""

from __future__ import annotations

from typing import Final

# The status alerts, and the status each one leaves the tenant in (the word the
# tenant APIs use).
STATUS_AFTER: Final = {"exhausted": "exhausted", "restored": "active"}
STATUS_ALERTS: Final = frozenset(STATUS_AFTER)


def status_rank(status_seq: object) -> int:
    """An alert's place in its tenant's status order: its `status_seq`, 0 without one."""
    if isinstance(status_seq, int) and not isinstance(status_seq, bool) and status_seq > 0:
        return status_seq
    return 0


def supersedes(rank: int, known: int | None) -> bool:
    """Whether an alert of `rank` replaces a status taken from one of rank `known`.

    `known` is None before any status alert. The same number again is the same alert
    delivered again, so it changes nothing; two unnumbered ones are told apart only by
    arrival, so the later wins.
    """
    return known is None or rank > known or rank == known == 0
