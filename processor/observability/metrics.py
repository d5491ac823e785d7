"""Every Prometheus metric the processor exports, declared in one place.

Names follow Prometheus conventions: `meter_` prefix, base units, `_total` counters,
labels from small fixed sets (never a tenant id). Prometheus stores floats, so these
are for watching the processor, never for money that must add up: that is the ledger.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Counter_
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from processor.config.version import build_info
from processor.core.outputs import AlertKind

# `_created` series double the exposition for no question an operator asks.
disable_created_metrics()  # type: ignore[no-untyped-call]


def service_registry() -> CollectorRegistry:
    """Added: a registry with what every service's /metrics shows (the worker's and the
    ledger sink's): `meter_build_info` and the standard process_* and python_*
    collectors (CPU, memory, open files, GC, the interpreter's version)."""
    registry = CollectorRegistry(auto_describe=True)
    info = build_info()
    Gauge(
        "meter_build_info",
        "Always 1; the labels say which credits-meter, Faust, aiokafka and Python run.",
        list(info),
        registry=registry,
    ).labels(**info).set(1)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


REGISTRY = service_registry()

EVENT_LOOP = Gauge(
    "meter_event_loop_info",
    "Always 1; the label says which event loop the worker runs on (METER_EVENT_LOOP).",
    ["loop"],
    registry=REGISTRY,
)
RECORD_PATH = Gauge(
    "meter_record_path_info",
    "Always 1; the label says whether the worker's per-record path runs compiled or "
    "interpreted (METER_COMPILED).",
    ["path"],
    registry=REGISTRY,
)
GC_PAUSE = Histogram(
    "meter_gc_pause_seconds",
    "How long each pass of Python's cyclic garbage collector held the worker's loop, "
    "by generation (0 and 1 young, 2 full).",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECORDS = Counter(
    "meter_records_total",
    "Input records handled, by source (calls, conferencing, commands, timer) and outcome "
    "(applied, duplicate, rejected, ignored, rerouted, replayed).",
    ["topic", "outcome"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "meter_rejected_total",
    "Records sent to credits.rejected, by reason.",
    ["reason"],
    registry=REGISTRY,
)
MONEY = Counter(
    "meter_money_total",
    "Money moved through balances, by currency and direction (debit, credit, expiry).",
    ["currency", "direction"],
    registry=REGISTRY,
)
RECHARGE_REQUESTS = Counter(
    "meter_recharge_requests_total",
    "Recharge requests sent to billing: first attempts and retries.",
    ["attempt"],
    registry=REGISTRY,
)
RECHARGE_OUTCOMES = Counter(
    "meter_recharge_outcomes_total",
    "What became of recharge requests: fulfilled (funds with its id), failed (billing "
    "said so), timed_out (no answer in time), suspended (last attempt failed), dropped "
    "(no longer needed when a retry was due).",
    ["outcome"],
    registry=REGISTRY,
)
ALERTS = Counter(
    "meter_alerts_total",
    "Balance alerts published, by alert.",
    ["alert"],
    registry=REGISTRY,
)
PROCESSING = Histogram(
    "meter_processing_seconds",
    "Time to handle one input record, decode to outputs queued.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)
FLUSH = Histogram(
    "meter_batch_flush_seconds",
    "Time from a batch's flush to its outputs acknowledged (phase=outputs), and to its "
    "state acknowledged too (phase=state), when its input offsets may be committed.",
    ["phase"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
EVENT_LAG = Histogram(
    "meter_event_lag_seconds",
    "Now minus the event's occurred_at when it is applied.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
    registry=REGISTRY,
)
OUTPUTS = Counter(
    "meter_outputs_total",
    "Records published to the output topics, by logical topic.",
    ["topic"],
    registry=REGISTRY,
)
OUTPUT_ERRORS = Counter(
    "meter_output_errors_total",
    "Output records the broker did not accept (the worker restarts to replay them).",
    registry=REGISTRY,
)
SKIPS_REREAD = Counter(
    "meter_skipped_records_reread_total",
    "Records Faust skipped around a rebalance without processing them; their acks are "
    "dropped so they stay uncommitted and are read again.",
    registry=REGISTRY,
)
STALE_DROPPED = Counter(
    "meter_stale_records_dropped_total",
    "Records of a fetch that came back before a seek of their partition, dropped "
    "rather than processed ahead of the records the seek reads again.",
    registry=REGISTRY,
)
UNOWNED_DROPPED = Counter(
    "meter_unowned_records_dropped_total",
    "Records staged for a partition this worker no longer owns (timer ticks), not "
    "produced: its new owner does that work, and producing them "
    "would fence it.",
    registry=REGISTRY,
)
TRANSACTIONS = Counter(
    "meter_transactions_total",
    "Kafka transactions committed by the flusher (one a round per partition number, "
    "or per group of them the worker owns whole).",
    registry=REGISTRY,
)
MARKS_FORGOTTEN = Counter(
    "meter_dedupe_marks_forgotten_total",
    "Dedupe marks forgotten once their METER_DEDUPE_DAYS window had passed.",
    registry=REGISTRY,
)
MARKS = Gauge(
    "meter_dedupe_marks",
    "Dedupe marks this worker holds (about 30 bytes of memory each).",
    registry=REGISTRY,
)
REBALANCES = Counter(
    "meter_rebalances_total",
    "Consumer group rebalances this worker went through.",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "meter_consumer_lag_records",
    "Records not yet processed, by input topic and partition owned by this worker.",
    ["topic", "partition"],
    registry=REGISTRY,
)
READY = Gauge(
    "meter_ready",
    "1 when partitions are assigned and state is recovered, else 0.",
    registry=REGISTRY,
)
EXHAUSTED = Gauge(
    "meter_tenants_exhausted",
    "Owned tenants whose balance is at or below zero.",
    registry=REGISTRY,
)
TENANT_BALANCE = Gauge(
    "meter_tenant_balance",
    "Balance per tenant; only with METER_METRICS_TENANT_BALANCES > 0, and for at most "
    "that many tenants (the lowest balances), since a tenant label is unbounded.",
    ["tenant", "currency"],
    registry=REGISTRY,
)
TENANTS = Gauge(
    "meter_tenants",
    "Tenants whose accounts this worker owns.",
    registry=REGISTRY,
)
OUTSTANDING = Gauge(
    "meter_recharge_outstanding",
    "Recharge requests of owned tenants that are open (outstanding or awaiting retry).",
    registry=REGISTRY,
)

# ---- `meter notifier` (processor/notifier/): its own registry, served on its own
# /metrics (METER_NOTIFIER_PORT), so it never shows as a worker that is not ready.
NOTIFIER_REGISTRY = CollectorRegistry(auto_describe=True)
NOTIFICATIONS = Counter(
    "meter_notifications_total",
    "Notification delivery tries by channel (email, webhook) and outcome: sent (2xx, or "
    "the SMTP server took it), retry (failed, tried again later), gave_up (still failing "
    "METER_NOTIFY_GIVE_UP_HOURS after the alert was read).",
    ["channel", "outcome"],
    registry=NOTIFIER_REGISTRY,
)
NOTIFICATION_LATENCY = Histogram(
    "meter_notification_delivery_seconds",
    "From the alert to its notification delivered, by channel (retries included).",
    ["channel"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
    registry=NOTIFIER_REGISTRY,
)
NOTIFICATION_OUTBOX = Gauge(
    "meter_notification_outbox",
    "Deliveries in the notifier's outbox not yet sent nor given up (the queue depth).",
    ["status"],
    registry=NOTIFIER_REGISTRY,
)


def _start_at_zero() -> None:
    """Create every labelled series a rule or panel rates, at 0.

    A labelled series otherwise appears at its first increment, and increase() cannot
    see that first step: the first suspension or rejection of a kind would go unseen.
    """
    for reason in (
        "invalid_json",
        "invalid_event",
        "no_rate",
        "currency_mismatch",
        "internal_error",
    ):
        REJECTED.labels(reason)
    for outcome in ("fulfilled", "failed", "timed_out", "suspended", "dropped"):
        RECHARGE_OUTCOMES.labels(outcome)
    for alert in AlertKind:
        ALERTS.labels(alert.value)
    for channel in ("email", "webhook"):
        for outcome in ("sent", "retry", "gave_up"):
            NOTIFICATIONS.labels(channel, outcome)
    for attempt in ("first", "retry"):
        RECHARGE_REQUESTS.labels(attempt)
    for source in ("calls", "conferencing", "commands", "timer"):
        for outcome in ("applied", "duplicate", "rejected", "ignored", "rerouted", "replayed"):
            RECORDS.labels(source, outcome)


_start_at_zero()


def observe_all(histogram: Any, values: list[float]) -> None:
    """`histogram.observe(v)` for each of `values`, one lock per bucket touched.

    Uses prometheus_client's histogram internals (bucket bounds, bucket and sum
    values); tests/unit/test_metrics.py checks the exposition against one observe
    per value, so a change of those internals fails a test, not the metric.
    """
    bounds = histogram._upper_bounds  # noqa: SLF001 (see the docstring)
    per_bucket = Counter_(bisect_left(bounds, v) for v in values)
    for index, n in per_bucket.items():
        histogram._buckets[index].inc(n)  # noqa: SLF001
    histogram._sum.inc(sum(values))  # noqa: SLF001
