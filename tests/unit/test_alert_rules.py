"""deploy/prometheus: the scrape config and alert rules pass promtool and their unit tests."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.promql import ROOT, exported_series, metric_names, run_promtool

PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "credits-meter.rules.yml"
RULE_TESTS = PROM / "tests" / "credits-meter.rules.test.yml"
CONFIG = PROM / "prometheus.yml"
# Series Prometheus itself writes for each target.
SCRAPE_SERIES = {"up"}


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid_and_loads_the_rules() -> None:
    result = run_promtool("check", "config", str(CONFIG))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "1 rule files found" in out, out
    scrape = yaml.safe_load(CONFIG.read_text())["scrape_configs"]
    # The rules select the workers' job; renaming it in one place silences them.
    assert [c["job_name"] for c in scrape] == [
        "credits-meter",
        "credits-meter-ledger-sink",
        "credits-meter-notifier",
    ]


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_the_workers_job_scrapes_workers_only(config: str) -> None:
    """up{job="credits-meter"} is the workers' (WorkerDown, AllWorkersDown): a notifier
    or sink in that job would page as a worker when down, and, when up, hide every
    worker being down."""
    from processor.config.settings import Settings

    ports = {
        name: Settings.model_fields[field].default
        for name, field in (
            ("credits-meter", "web_port"),
            ("credits-meter-ledger-sink", "sink_port"),
            ("credits-meter-notifier", "notifier_port"),
        )
    }
    scrape = yaml.safe_load((PROM / config).read_text())["scrape_configs"]
    for job in scrape:
        targets = [t for c in job["static_configs"] for t in c["targets"]]
        assert targets, job["job_name"]
        assert {int(t.rsplit(":", 1)[1]) for t in targets} == {ports[job["job_name"]]}, job


def test_the_alerts_the_issue_asks_for_exist() -> None:
    names = {a["alert"] for a in alerts()}
    assert {
        "CreditsMeterConsumerLagGrowing",
        "CreditsMeterRejectionsSpiking",
        "CreditsMeterRechargesFailing",
        "CreditsMeterRechargeSuspended",
        "CreditsMeterWorkerDown",
        "CreditsMeterAllWorkersDown",
        "CreditsMeterNoUsage",
        "CreditsMeterOutputErrors",
        # A review: the notifier and the sink down, and the outbox growing.
        "CreditsMeterNotifierDown",
        "CreditsMeterAllNotifiersDown",
        "CreditsMeterNotificationOutboxGrowing",
        "CreditsMeterLedgerSinkDown",
        "CreditsMeterAllLedgerSinksDown",
    } <= names


def test_every_scraped_job_has_a_down_and_an_all_down_alert() -> None:
    """A service that is down exports nothing: only `up` tells. Each scrape job (the
    workers, the ledger sink, the notifier) needs an alert on one target down and one
    on none up (all down or none discovered), with the job the scrape config names."""
    exprs = [" ".join(a["expr"].split()) for a in alerts()]
    scrape = yaml.safe_load(CONFIG.read_text())["scrape_configs"]
    for job in (c["job_name"] for c in scrape):
        assert f'up{{job="{job}"}} == 0' in exprs, job
        [absent] = [a for a in alerts() if a["expr"].strip() == f'absent(up{{job="{job}"}} == 1)']
        # absent() keeps no labels: the rule names the job for routing.
        assert absent["labels"]["job"] == job


def test_the_outbox_rule_does_not_add_up_the_notifiers_reports() -> None:
    """Every notifier reports the depth of the outbox they share (store.depth())."""
    [rule] = [a for a in alerts() if "meter_notification_outbox" in a["expr"]]
    assert "sum" not in rule["expr"] and "max by (job)" in rule["expr"]


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert len(alert["annotations"]["description"]) > 60, alert["alert"]


def test_rules_only_read_series_the_workers_export() -> None:
    known = exported_series() | SCRAPE_SERIES
    for alert in alerts():
        names = metric_names(alert["expr"])
        assert names, alert["alert"]
        assert names <= known, f"{alert['alert']}: unknown {sorted(names - known)}"


@pytest.mark.parametrize(
    "name", ["meter_records_total", "meter_processing_seconds_bucket", "meter_ready"]
)
def test_exported_series_names_follow_the_registry(name: str) -> None:
    assert name in exported_series()
