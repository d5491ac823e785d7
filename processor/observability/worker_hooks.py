"""The worker's metrics as named hooks: what intake and the flusher report, by name.

`labels()` costs microseconds on every record, so each labelled child is looked up once
and kept; a record's updates are gathered (`metrics.Batched`) and applied once per batch
the flusher takes (`apply`).
"""

from __future__ import annotations

from typing import Any

from processor.core.outputs import AlertOut, LedgerOut, NotificationsOut, Output
from processor.kafka.topics import TopicNames
from processor.observability import metrics


class WorkerHooks:
    """One worker's metric updates: counted per record, applied per batch."""

    def __init__(self, names: TopicNames, currency: str) -> None:
        self.currency = currency
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._batched = metrics.Batched()
        self._topic_labels = {
            names.ledger: "ledger",
            names.alerts: "alerts",
            names.recharge_requests: "recharge_requests",
            names.rejected: "rejected",
            names.reroute: "reroute",
            names.timer: "timer",
            names.command_results: "command_results",
            names.notification_settings: "notification_settings",
        }

    # ---- per record: gathered until `apply` ----------------------------------------

    def record(self, label: str, status: str) -> None:
        """A record of `label` (its source, or "timer") ended as `status`."""
        self._batched.inc(self._child(metrics.RECORDS, label, status))

    def rejected(self, reason: str) -> None:
        self._batched.inc(self._child(metrics.REJECTED, reason))

    def output(self, topic: str) -> None:
        """One record staged for `topic`."""
        self._batched.inc(self._child(metrics.OUTPUTS, self._topic_labels.get(topic, "other")))

    def recharge_outcome(self, what: str) -> None:
        self._batched.inc(self._child(metrics.RECHARGE_OUTCOMES, what))

    def applied_output(self, out: Output) -> None:
        """An output of a record applied now (not a replay): money, alerts, requests."""
        if isinstance(out, LedgerOut):
            self._batched.inc(
                self._child(metrics.MONEY, self.currency, out.kind), float(out.amount)
            )
        elif isinstance(out, AlertOut):
            self._batched.inc(self._child(metrics.ALERTS, out.alert.value))
        elif isinstance(out, NotificationsOut):
            pass
        else:
            self._batched.inc(
                self._child(metrics.RECHARGE_REQUESTS, "first" if out.attempt == 1 else "retry")
            )

    def processing(self, seconds: float) -> None:
        self._batched.observe(metrics.PROCESSING, seconds)

    def event_lag(self, seconds: float) -> None:
        self._batched.observe(metrics.EVENT_LAG, seconds)

    def apply(self) -> None:
        """Hand the gathered updates to the registry (once per batch taken)."""
        self._batched.apply()

    # ---- per batch or tick: applied at once ------------------------------------------

    def seen_forgotten(self, count: int) -> None:
        metrics.MARKS_FORGOTTEN.inc(count)

    def flushed(self, part: str, seconds: float) -> None:
        """A batch's `part` ("outputs" or "state") landed `seconds` after it was taken."""
        metrics.FLUSH.labels(part).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
