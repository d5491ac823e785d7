"""`check_histories`: what a consumer reading the output topics in offset order would
find wrong (processor/ops/reconcile.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from processor.ops.reconcile import Raw, Report, check_histories, check_ledger


def _raws(topic: str, outputs: list[dict[str, Any]]) -> list[Raw]:
    return [Raw(topic, 0, i, json.dumps(o).encode()) for i, o in enumerate(outputs)]


def entry(entry_id: str, kind: str, amount: str, after: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "ledger_entry",
        "entry_id": entry_id,
        "tenant_id": "acme",
        "kind": kind,
        "amount": amount,
        "balance_after": after,
        "recorded_at": "2026-11-25T10:00:00Z",
        **extra,
    }


def alert(alert_id: str, kind: str, balance: str) -> dict[str, Any]:
    return {
        "type": "balance_alert",
        "alert_id": alert_id,
        "tenant_id": "acme",
        "alert": kind,
        "balance": balance,
    }


def request(request_id: str, balance: str, attempt: int = 1, at: str = "10:00") -> dict[str, Any]:
    return {
        "type": "recharge_requested",
        "request_id": request_id,
        "tenant_id": "acme",
        "amount": "25.00",
        "balance": balance,
        "attempt": attempt,
        "requested_at": f"2026-11-25T{at}:00Z",
    }


GOOD = [entry("e1", "credit", "10.00", "10.00"), entry("e2", "debit", "0.50", "9.50")]


def test_an_unbroken_history_has_no_problems() -> None:
    assert check_histories(_raws("ledger", GOOD), balances={"acme": Decimal("9.50")}) == []


def test_a_faithful_copy_differing_only_in_delivery_fields_is_fine() -> None:
    again = dict(GOOD[1], recorded_at="2026-11-25T10:05:00Z")
    requests = [request("r1", "9.50"), request("r1", "9.50", at="10:07")]
    assert check_histories(_raws("ledger", [*GOOD, again]), (), _raws("rr", requests)) == []


def test_a_copy_with_another_balance_is_reported() -> None:
    replayed = entry("e2", "debit", "0.50", "-0.50")
    problems = check_histories(_raws("ledger", [*GOOD, replayed]))
    assert len(problems) == 1 and "e2 seen again with other content" in problems[0]


def test_a_broken_chain_and_a_wrong_end_are_reported() -> None:
    broken = [entry("e1", "credit", "10.00", "10.00"), entry("e2", "debit", "0.50", "9.00")]
    problems = check_histories(_raws("ledger", broken), balances={"acme": Decimal("9.50")})
    assert any("chain breaks at e2" in p and "gives 9.50" in p for p in problems), problems
    assert any("ends at 9.00, the balance is 9.50" in p for p in problems), problems


def test_alerts_and_requests_must_name_balances_the_account_had() -> None:
    alerts = _raws("alerts", [alert("a1", "low_balance", "9.50"), alert("a2", "exhausted", "-1")])
    requests = _raws("rr", [request("r1", "9.50"), request("r2", "3.00")])
    problems = check_histories(_raws("ledger", GOOD), alerts, requests)
    assert problems == [
        "acme: alert a2 names a balance the account never had (-1)",
        "acme: recharge request r2 names a balance the account never had (3.00)",
    ]


def test_a_retried_request_is_its_own_output() -> None:
    requests = _raws("rr", [request("r1", "9.50"), request("r1", "10.00", attempt=2)])
    assert check_histories(_raws("ledger", GOOD), (), requests) == []


def test_an_expiry_entry_counts_negative_in_the_chain() -> None:
    history = [
        entry("e1", "credit", "10.00", "10.00"),
        entry("x1", "expiry", "9.50", "0.50", cause_id="e1"),
    ]
    assert check_histories(_raws("ledger", history), balances={"acme": Decimal("0.50")}) == []
    wrong = [history[0], entry("x1", "expiry", "9.50", "19.50", cause_id="e1")]
    assert check_histories(_raws("ledger", wrong)) != []


def test_reconcile_takes_expired_funds_off_the_inputs_balance() -> None:
    report = Report()
    ledger = [
        entry("e1", "credit", "10.00", "10.00", cause_topic="credits.commands", cause_id="c1"),
        entry("x1", "expiry", "9.50", "0.50", cause_topic="credits.ledger", cause_id="e1"),
        # An expiry whose cause is no credit of the tenant is a discrepancy.
        entry("x2", "expiry", "0.50", "0.00", cause_topic="credits.ledger", cause_id="nope"),
    ]
    sums = check_ledger(ledger, report)
    assert sums["acme"] == Decimal("0.00")
    assert report.expiry_entries == 2
    assert report.expired == {"acme": Decimal("10.00")}
    assert report.problems == ["acme: expiry x2 names no credit entry of the tenant (nope)"]
