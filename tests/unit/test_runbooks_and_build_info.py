"""Every alert's runbook section, the PrometheusRule generated from the rules file, and
what every service's /metrics shows beyond its own series (build info, process and
Python collectors)."""

from __future__ import annotations

import platform
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processor.config.version import package_version
from processor.observability import metrics
from processor.observability import rules as prometheus_rule
from processor.sink.http import build_app
from processor.sink.store import LedgerStore
from tests.unit.test_sink_store import db_url, store  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_BASE = "https://github.com/credits-meter/credits-meter/blob/main/"


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(prometheus_rule.RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def runbook_sections() -> list[str]:
    return re.findall(r"^## (\S+)$", RUNBOOK.read_text(), flags=re.MULTILINE)


def test_every_alert_links_its_own_runbook_section() -> None:
    sections = runbook_sections()
    names = [a["alert"] for a in alerts()]
    assert sorted(sections) == sorted(names), "one runbook section per alert, no more"
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        path, _, anchor = url.removeprefix(RUNBOOK_BASE).partition("#")
        # A file in this repository, and GitHub's anchor of the alert's heading.
        assert url.startswith(RUNBOOK_BASE) and (ROOT / path) == RUNBOOK, url
        assert anchor == alert["alert"].lower(), url
    text = RUNBOOK.read_text()
    for name in sections:
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "**Means:**" in section and "**Do:**" in section, name


def test_the_prometheusrule_is_the_rules_file() -> None:
    assert prometheus_rule.check() == []
    [doc] = [d for d in yaml.safe_load_all(prometheus_rule.MANIFEST.read_text()) if d]
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    rules = yaml.safe_load(prometheus_rule.RULES.read_text())
    assert doc["spec"]["groups"] == rules["groups"]
    kustomization = yaml.safe_load(
        (prometheus_rule.MANIFEST.parent / "kustomization.yaml").read_text()
    )
    assert prometheus_rule.MANIFEST.name in kustomization["resources"]


def test_a_changed_rules_file_makes_the_check_fail(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(prometheus_rule.RULES.read_text().replace("for: 2m", "for: 3m", 1))
    manifest = tmp_path / "prometheusrule.yaml"
    assert prometheus_rule.check(rules, manifest) == [f"missing: {manifest}"]
    assert prometheus_rule.write(rules, manifest) and not prometheus_rule.write(rules, manifest)
    assert prometheus_rule.check(rules, manifest) == []
    assert prometheus_rule.check(prometheus_rule.RULES, manifest) != []
    assert "for: 3m" in manifest.read_text()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def check_service_metrics(text: str) -> None:
    found = families(text)
    [sample] = found["meter_build_info"].samples
    assert sample.value == 1
    assert sample.labels == {
        "version": package_version(),
        "faust": package_version("faust-streaming"),
        "aiokafka": package_version("aiokafka"),
        "python": platform.python_version(),
    }
    assert sample.labels["faust"] == "0.15.3" and sample.labels["aiokafka"].startswith("0.14")
    # The standard collectors: process (Linux), platform and garbage collector.
    for name in (
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_info",
        "python_gc_collections",
    ):
        assert name in found, name


def test_the_worker_registry_has_build_info_and_the_standard_collectors() -> None:
    check_service_metrics(generate_latest(metrics.REGISTRY).decode())


@pytest.fixture
async def sink_http(store: LedgerStore) -> AsyncIterator[TestClient[Any, Any]]:  # noqa: F811
    async with TestClient(TestServer(build_app(store))) as client:
        yield client


async def test_the_sink_serves_metrics_too(sink_http: TestClient[Any, Any]) -> None:
    answer = await sink_http.get("/metrics")
    assert answer.status == 200 and answer.content_type == "text/plain"
    check_service_metrics(await answer.text())
