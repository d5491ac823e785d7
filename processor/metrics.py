"""Every Prometheus metric the processor exports, declared in one place.

Names follow Prometheus conventions: `meter_` prefix, base units, `_total` counters,
labels from small fixed sets (never a tenant id). Prometheus stores floats, so these
are for watching the processor, never for money that must add up: that is the ledger.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# `_created` series double the exposition for no question an operator asks.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

RECORDS = Counter(
    "meter_records_total",
    "Input records handled, by logical topic and outcome "
    "(applied, duplicate, rejected, ignored, rerouted).",
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
    "Money moved through balances, by currency and direction (debit, credit).",
    ["currency", "direction"],
    registry=REGISTRY,
)
RECHARGE_REQUESTS = Counter(
    "meter_recharge_requests_total",
    "Recharge requests sent to billing: first attempts and retries.",
    ["attempt"],
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
EVENT_LAG = Histogram(
    "meter_event_lag_seconds",
    "Now minus the event's occurred_at when it is applied.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
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
