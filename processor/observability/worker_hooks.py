"""The worker's metrics as named hooks: what intake and the flusher report, by name.

A record's updates are counts in plain dicts keyed by their label strings, and values
in lists; `apply`, once per batch the flusher takes, hands them to the registry. Every
record makes five or so updates: as `labels()` calls they cost microseconds each, and as
labelled children looked up by a tuple key a few percent of a record's handling
(docs/performance.md, "Metrics counted by label strings").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from processor.core.outputs import AlertOut, LedgerOut, NotificationsOut, Output
from processor.kafka.topics import TopicNames
from processor.observability import metrics

_NOTHING = Decimal(0)


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


class WorkerHooks:
    """One worker's metric updates: counted per record, applied per batch."""

    def __init__(self, names: TopicNames, currency: str) -> None:
        self.currency = currency
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
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
        # Gathered since the last `apply`: records by source then outcome, the other
        # counters by their one label (outputs by topic name), money by direction.
        self._records: dict[str, dict[str, int]] = {}
        self._rejected: dict[str, int] = {}
        self._outputs: dict[str, int] = {}
        self._recharge_outcomes: dict[str, int] = {}
        self._recharge_requests: dict[str, int] = {}
        self._alerts: dict[str, int] = {}
        self._money: dict[str, Decimal] = {}
        self._processing: list[float] = []
        self._lags: list[float] = []

    # ---- per record: gathered until `apply` ----------------------------------------

    def record(self, label: str, status: str) -> None:
        """A record of `label` (its source, or "timer") ended as `status`."""
        by_status = self._records.get(label)
        if by_status is None:
            by_status = self._records[label] = {}
        _count(by_status, status)

    def rejected(self, reason: str) -> None:
        _count(self._rejected, reason)

    def output(self, topic: str) -> None:
        """One record staged for `topic`."""
        _count(self._outputs, topic)

    def recharge_outcome(self, what: str) -> None:
        _count(self._recharge_outcomes, what)

    def applied_output(self, out: Output) -> None:
        """An output of a record applied now (not a replay): money, alerts, requests."""
        if isinstance(out, LedgerOut):
            money = self._money
            # Summed exactly, made a float once a batch.
            money[out.kind] = money.get(out.kind, _NOTHING) + out.amount
        elif isinstance(out, AlertOut):
            _count(self._alerts, out.alert.value)
        elif isinstance(out, NotificationsOut):
            pass
        else:
            _count(self._recharge_requests, "first" if out.attempt == 1 else "retry")

    def processing(self, seconds: float) -> None:
        self._processing.append(seconds)

    def event_lag(self, seconds: float) -> None:
        self._lags.append(seconds)

    def apply(self) -> None:
        """Hand the gathered updates to the registry (once per batch taken)."""
        records, self._records = self._records, {}
        for label, by_status in records.items():
            for status, n in by_status.items():
                self._child(metrics.RECORDS, label, status).inc(n)
        self._apply_counts(metrics.REJECTED, self._rejected)
        self._rejected = {}
        outputs, self._outputs = self._outputs, {}
        for topic, n in outputs.items():
            self._child(metrics.OUTPUTS, self._topic_labels.get(topic, "other")).inc(n)
        self._apply_counts(metrics.RECHARGE_OUTCOMES, self._recharge_outcomes)
        self._recharge_outcomes = {}
        self._apply_counts(metrics.RECHARGE_REQUESTS, self._recharge_requests)
        self._recharge_requests = {}
        self._apply_counts(metrics.ALERTS, self._alerts)
        self._alerts = {}
        money, self._money = self._money, {}
        for direction, amount in money.items():
            self._child(metrics.MONEY, self.currency, direction).inc(float(amount))
        processing, self._processing = self._processing, []
        if processing:
            metrics.observe_all(metrics.PROCESSING, processing)
        lags, self._lags = self._lags, []
        if lags:
            metrics.observe_all(metrics.EVENT_LAG, lags)

    # ---- per batch or tick: applied at once ------------------------------------------

    def seen_forgotten(self, count: int) -> None:
        metrics.MARKS_FORGOTTEN.inc(count)

    def flushed(self, part: str, seconds: float) -> None:
        """A batch's `part` ("outputs" or "state") landed `seconds` after it was taken."""
        metrics.FLUSH.labels(part).observe(seconds)

    def _apply_counts(self, metric: Any, counts: dict[str, int]) -> None:
        for label, n in counts.items():
            self._child(metric, label).inc(n)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
