"""Topic retention and inputs that forget (issue 16, item 10): processor/kafka/topics.py,
the checks on stored offsets (processor/core/stored.py) and `meter reconcile`'s report."""

from __future__ import annotations

from decimal import Decimal

import pytest

from processor.config.settings import Settings
from processor.core.state import Account
from processor.core.stored import InputsRewound, StoredAccount, highest_applied, rewound_inputs
from processor.kafka.topics import (
    FOREVER,
    TopicNames,
    creation_configs,
    longest_retention,
    retention_warnings,
)
from processor.ops.reconcile import Report, TenantCheck, removed_by_retention
from processor.ops.service_commands import startup_refusal
from processor.worker.codec import Undecoded, dump_stored

NAMES = TopicNames.from_settings(Settings(METER_TOPIC_PREFIX="p.", METER_APP_ID="app"))
WEEK = 7 * 24 * 3600 * 1000


# ---- what the worker creates -----------------------------------------------------------


def test_every_topic_the_worker_produces_to_is_written_and_no_input_of_the_contract() -> None:
    # Their max.message.bytes bound the record batches the worker fills.
    n = NAMES
    assert set(n.written) >= {
        n.ledger,
        n.alerts,
        n.rejected,
        n.recharge_requests,
        n.command_results,
        n.reroute,
        n.timer,
        n.accounts_changelog,
        n.dedupe_marks,
    }
    assert not set(n.written) & {n.calls, n.conferencing, n.commands}


def test_the_ledger_is_kept_forever_by_default() -> None:
    assert Settings().ledger_retention_ms == FOREVER == -1
    configs = creation_configs(NAMES, Settings().ledger_retention_ms, WEEK)
    assert configs[NAMES.ledger] == {"retention.ms": "-1"}


def test_the_ledger_retention_is_a_setting() -> None:
    cfg = Settings(METER_LEDGER_RETENTION_MS="31536000000")
    configs = creation_configs(NAMES, cfg.ledger_retention_ms, WEEK)
    assert configs[NAMES.ledger] == {"retention.ms": "31536000000"}
    with pytest.raises(ValueError, match="METER_LEDGER_RETENTION_MS"):
        Settings(METER_LEDGER_RETENTION_MS="-2")


@pytest.mark.parametrize("inputs", [WEEK, FOREVER, 3 * WEEK])
def test_rejected_and_recharge_requests_are_kept_as_long_as_the_inputs(inputs: int) -> None:
    configs = creation_configs(NAMES, FOREVER, inputs)
    for topic in (NAMES.rejected, NAMES.recharge_requests):
        assert configs[topic] == {"retention.ms": str(inputs)}


def test_without_known_input_retention_they_take_the_brokers_default_like_the_inputs() -> None:
    configs = creation_configs(NAMES, FOREVER, None)
    assert NAMES.rejected not in configs and NAMES.recharge_requests not in configs


def test_changelogs_are_still_compacted() -> None:
    configs = creation_configs(NAMES, FOREVER, WEEK)
    for topic in NAMES.changelogs:
        assert configs[topic] == {"cleanup.policy": "compact"}


def test_the_longest_retention_is_forever_if_any_is() -> None:
    assert longest_retention([WEEK, 3 * WEEK]) == 3 * WEEK
    assert longest_retention([WEEK, FOREVER, 3 * WEEK]) == FOREVER
    assert longest_retention([]) is None


# ---- what the worker warns about ---------------------------------------------------------


def inputs_at(ms: int) -> dict[str, dict[str, str]]:
    return {t: {"retention.ms": str(ms)} for t in (NAMES.calls, NAMES.conferencing, NAMES.commands)}


def test_a_ledger_with_a_finite_retention_is_warned_about_by_name() -> None:
    retention = {**inputs_at(WEEK), NAMES.ledger: {"retention.ms": str(WEEK)}}
    (warning,) = retention_warnings(NAMES, retention)
    assert f"topic {NAMES.ledger} has retention.ms={WEEK}" in warning
    assert "retention.ms=-1" in warning


def test_a_ledger_limited_by_size_is_warned_about_too() -> None:
    retention = {NAMES.ledger: {"retention.ms": "-1", "retention.bytes": "1073741824"}}
    (warning,) = retention_warnings(NAMES, retention)
    assert "retention.bytes=1073741824" in warning


def test_a_ledger_kept_forever_and_outputs_as_long_as_inputs_raise_no_warning() -> None:
    retention = {
        **inputs_at(WEEK),
        NAMES.ledger: {"retention.ms": "-1", "retention.bytes": "-1"},
        NAMES.rejected: {"retention.ms": str(WEEK)},
        NAMES.recharge_requests: {"retention.ms": "-1"},
    }
    assert retention_warnings(NAMES, retention) == []


def test_outputs_that_forget_before_their_inputs_are_warned_about() -> None:
    retention = {**inputs_at(FOREVER), NAMES.rejected: {"retention.ms": str(WEEK)}}
    (warning,) = retention_warnings(NAMES, retention)
    assert f"topic {NAMES.rejected} has retention.ms={WEEK}" in warning


# ---- inputs deleted and re-created --------------------------------------------------------


def test_the_highest_applied_offset_per_partition() -> None:
    values = [{"a:0": 5, "b:0": 1}, {"a:0": 7}, {"b:0": 0, "c:1": 2}]
    assert highest_applied(values) == {"a:0": 7, "b:0": 1, "c:1": 2}


def test_an_input_whose_offsets_restarted_below_the_applied_ones_is_found() -> None:
    applied = {"p.usage.calls:0": 41, "p.credits.commands:0": 9}
    # calls re-created: 3 new records (end 3), commands grew as usual
    ends = {"p.usage.calls:0": 3, "p.credits.commands:0": 10}
    (problem,) = rewound_inputs(applied, ends)
    assert "input p.usage.calls:0 ends at offset 3" in problem
    assert "applied its records up to offset 41" in problem
    assert "re-created" in problem


@pytest.mark.parametrize("end", [42, 43, 1000])
def test_an_input_past_what_was_applied_is_fine(end: int) -> None:
    assert rewound_inputs({"p.usage.calls:0": 41}, {"p.usage.calls:0": end}) == []


def test_an_input_that_ends_exactly_at_the_applied_offset_was_rewound() -> None:
    # offset 41 applied means the log held at least 42 records
    assert rewound_inputs({"p.usage.calls:0": 41}, {"p.usage.calls:0": 41}) != []


def test_partitions_no_account_applied_are_not_judged() -> None:
    assert rewound_inputs({}, {"p.usage.calls:0": 0}) == []


def test_values_read_at_recovery_report_what_they_applied() -> None:
    highest: dict[str, int] = {}
    for offsets in ({"a:0": 3}, {"a:0": 9, "b:0": 1}, {"a:0": 4}):
        value = StoredAccount(Account("t", balance=Decimal(1)), seq=1, applied=offsets)
        Undecoded(dump_stored(value), highest)
    assert highest == {"a:0": 9, "b:0": 1}


def test_a_rewound_input_is_a_refusal_to_start() -> None:
    try:
        raise RuntimeError("rebalance crashed") from InputsRewound("input x:0 ends at 0")
    except RuntimeError as crash:
        assert startup_refusal(crash) == "input x:0 ends at 0"


# ---- meter reconcile --------------------------------------------------------------------


def test_reconcile_names_the_offsets_retention_removed() -> None:
    report = Report()
    assert removed_by_retention(NAMES.calls, {0: (120, 500), 1: (0, 30)}, report)
    assert not removed_by_retention(NAMES.commands, {0: (0, 7)}, report)
    assert report.removed == [
        f"{NAMES.calls} partition 0: offsets 0 to 119 already deleted (retention)"
    ]
    report.inputs_complete = False
    text = report.render()
    assert f"RETENTION {NAMES.calls} partition 0: offsets 0 to 119" in text
    assert "not checked against the inputs" in text
    assert report.discrepancies == 0


def test_unknown_sides_of_a_tenant_are_not_mismatches() -> None:
    d = Decimal
    assert TenantCheck("t", None, d("5.00"), d("5.00")).ok
    assert not TenantCheck("t", None, d("5.00"), d("4.00")).ok
    assert TenantCheck("t", d("5.00"), None, None).ok
    assert not TenantCheck("t", d("5.00"), d("4.00")).ok
    assert TenantCheck("t", d("5.00"), d("5.00")).ok
