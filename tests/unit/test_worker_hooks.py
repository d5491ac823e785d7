"""The worker's metric hooks: a batch's updates reach the registry when applied, once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from processor.config.settings import Settings
from processor.core.outputs import AlertKind, AlertOut, LedgerOut
from processor.kafka.topics import TopicNames
from processor.observability.metrics import REGISTRY
from processor.observability.worker_hooks import WorkerHooks

NAMES = TopicNames.from_settings(Settings(_env_file=None))
T0 = datetime(2026, 12, 7, tzinfo=UTC)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _debit(amount: str) -> LedgerOut:
    return LedgerOut(
        entry_id="e",
        tenant_id="hooks-tenant",
        kind="debit",
        amount=Decimal(amount),
        balance_after=Decimal("1"),
        cause_topic=NAMES.calls,
        cause_id="c",
        occurred_at=T0,
        recorded_at=T0,
        rate_prefix=None,
        rate_per_minute=None,
        billed_seconds=None,
        actor=None,
    )


def test_a_batchs_updates_reach_the_registry_once_and_only_when_applied() -> None:
    hooks = WorkerHooks(NAMES, "XTS")
    records = ("meter_records_total", {"topic": "calls", "outcome": "applied"})
    money = ("meter_money_total", {"currency": "XTS", "direction": "debit"})
    outputs = ("meter_outputs_total", {"topic": "ledger"})
    alerts = ("meter_alerts_total", {"alert": "exhausted"})
    before = {name: _sample(name, labels) for name, labels in (records, money, outputs, alerts)}
    seconds = _sample("meter_processing_seconds_count")
    for amount in ("0.0100", "0.0200", "0.0300"):
        hooks.record("calls", "applied")
        hooks.applied_output(_debit(amount))
        hooks.output(NAMES.ledger)
        hooks.processing(0.0001)
    hooks.applied_output(
        AlertOut(
            alert_id="a",
            tenant_id="hooks-tenant",
            alert=AlertKind.EXHAUSTED,
            balance=Decimal("-1"),
            occurred_at=T0,
            status_seq=1,
        )
    )
    assert _sample(*records) == before["meter_records_total"]
    hooks.apply()
    hooks.apply()  # nothing new: nothing added twice
    assert _sample(*records) == before["meter_records_total"] + 3
    assert _sample(*money) == pytest.approx(before["meter_money_total"] + 0.06)
    assert _sample(*outputs) == before["meter_outputs_total"] + 3
    assert _sample(*alerts) == before["meter_alerts_total"] + 1
    assert _sample("meter_processing_seconds_count") == seconds + 3
