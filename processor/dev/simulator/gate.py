"""Simulated telephony's call gate: no credit-funded call for an exhausted tenant.

The contract publishes `exhausted` and `restored` on `credits.alerts` "so telephony can
block and unblock credit-funded calls". Without a gate the simulator would keep placing
calls for a tenant that has run out, and its balance would sink ever further past its
credit limit, which no real deployment shows. A call already under way when the alert
arrives still ends with its usage event, so a balance may go a little past the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from processor.core.status import STATUS_ALERTS, status_rank, supersedes


class CallGate:
    """Each of the simulator's tenants' status, by the contract's rule for consumers
    (processor/core/status.py).

    Only the simulator's own tenants are tracked, so a topic shared with other tenants
    cannot grow it. A tenant no alert has named yet may call (its first funds answer
    with `restored`; before them telephony has nothing to go by).
    """

    def __init__(self, tenant_ids: Iterable[str]) -> None:
        self._status: dict[str, tuple[int, bool] | None] = dict.fromkeys(tenant_ids)

    def observe(self, alert: Mapping[str, Any]) -> None:
        """Take one decoded `credits.alerts` value into account; others are ignored."""
        kind = alert.get("alert")
        tenant_id = alert.get("tenant_id")
        if kind not in STATUS_ALERTS or not isinstance(tenant_id, str):
            return
        if tenant_id not in self._status:
            return
        rank = status_rank(alert.get("status_seq"))
        known = self._status[tenant_id]
        if supersedes(rank, None if known is None else known[0]):
            self._status[tenant_id] = (rank, kind == "exhausted")

    def allows(self, tenant_id: str) -> bool:
        """Whether a credit-funded call may start for ``tenant_id`` now."""
        known = self._status.get(tenant_id)
        return known is None or not known[1]

    def exhausted(self) -> list[str]:
        """The tenants whose calls are blocked now, in the order they were given."""
        return [t for t, known in self._status.items() if known is not None and known[1]]
