"""deploy/grafana: the checked-in dashboard is what the generator writes, and it only
queries series the workers export."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.unit.promql import ROOT, exported_series, metric_names, run_promtool

GRAFANA = ROOT / "deploy" / "grafana"


def generator() -> ModuleType:
    # deploy/ is not a package: load the script the way `python dashboard.py` would.
    spec = importlib.util.spec_from_file_location(
        "credits_meter_dashboard", GRAFANA / "dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "credits-meter.json").read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(board) for t in p["targets"]]


def test_checked_in_json_is_what_the_generator_writes() -> None:
    module = generator()
    assert module.OUTPUT == GRAFANA / "dashboards" / "credits-meter.json"
    assert module.OUTPUT.read_text() == module.render(), (
        "deploy/grafana/dashboards/credits-meter.json is stale: "
        "run .venv/bin/python deploy/grafana/dashboard.py"
    )
    assert module.main(["--check"]) == 0


def test_check_mode_reports_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = generator()
    stale = tmp_path / "credits-meter.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(module, "OUTPUT", stale)
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0


def test_every_query_reads_only_exported_series(board: dict[str, Any]) -> None:
    known = exported_series()
    for title, expr in exprs(board):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: unknown {sorted(names - known)} in {expr!r}"


def test_every_exported_metric_is_on_the_dashboard(board: dict[str, Any]) -> None:
    shown = set().union(*(metric_names(e) for _, e in exprs(board)))
    # A histogram is shown through its buckets, a counter through its _total series.
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported_series()}
    # The standard process_* and python_* collectors: a generic dashboard's business.
    families = {f for f in families if not f.startswith(("process_", "python_"))}
    shown_families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in shown}
    assert families - shown_families == set()


def test_latency_panels_are_quantiles_over_buckets(board: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(board)}
    for title in ("Processing latency", "Event-time lag"):
        targets = [t["expr"] for t in by_title[title]["targets"]]
        levels = [re.findall(r"^histogram_quantile\((0\.\d+),", e) for e in targets]
        assert levels == [["0.5"], ["0.95"], ["0.99"]]
        assert all("_bucket" in e and "by (le)" in e for e in targets)
        assert by_title[title]["fieldConfig"]["defaults"]["unit"] == "s"


def test_every_query_is_valid_promql(board: dict[str, Any], tmp_path: Path) -> None:
    # promtool parses rule expressions, so each query becomes a recording rule once
    # Grafana's variables are replaced by what Grafana would send.
    def concrete(expr: str) -> str:
        return (
            expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*")
        )

    rules = [
        {"record": f"dashboard:query_{i}", "expr": concrete(e)}
        for i, (_, e) in enumerate(exprs(board))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_panels_have_unique_ids_and_fit_the_grid(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    for p in board["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]


def test_every_target_uses_the_datasource_variable(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_provisioning_points_at_the_dashboard_and_a_default_prometheus() -> None:
    prov = GRAFANA / "provisioning"
    dashboards = yaml.safe_load((prov / "dashboards" / "credits-meter.yaml").read_text())
    [provider] = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True


# ---- the PromQL name parser the checks above rely on ---------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (outcome) (rate(meter_records_total{job=~"$job"}[$__rate_interval]))',
            {"meter_records_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(meter_processing_seconds_bucket[5m])))",
            {"meter_processing_seconds_bucket"},
        ),
        ('absent(up{job="credits-meter"} == 1)', {"up"}),
        ("a_total unless a_total offset 15m", {"a_total"}),
        ("60 * sum(rate(b[1m])) > bool 1e3", {"b"}),
        ("sum(x) by (topic, partition) / on(job) group_left(reason) y", {"x", "y"}),
        ('count(meter_ready{instance=~"w(1|2)"}) - sum(meter_ready)', {"meter_ready"}),
    ],
)
def test_metric_names_are_parsed_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_an_unknown_metric_is_caught() -> None:
    assert metric_names("sum(rate(meter_records_totl[5m]))") - exported_series() == {
        "meter_records_totl"
    }


def test_the_notification_panels_read_the_notifiers_own_job(board: dict[str, Any]) -> None:
    """deploy/prometheus scrapes the notifier as its own job: the panels must find it
    whichever workers' job is chosen, and not filter by the workers' instances."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = [c["job_name"] for c in config["scrape_configs"]]
    workers, notifier = jobs[0], next(j for j in jobs if j.endswith("-notifier"))
    found = [e for _, e in exprs(board) if "meter_notification" in e]
    assert len(found) >= 3
    for expr in found:
        assert "$instance" not in expr, expr
        for chosen in (workers, ".*"):  # one job, or All (".*")
            [pattern] = re.findall(r'job=~"([^"]+)"', expr.replace("$job", chosen))
            assert re.fullmatch(pattern, notifier), expr


# ---- what the descriptions say, against the code ---------------------------------


def by_title(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in panels(board)}


def test_money_is_shown_in_every_direction_the_ledger_has(board: dict[str, Any]) -> None:
    """meter_money_total's direction is the ledger entry's kind: expiry too."""
    from processor.sink.http import KINDS

    shown = set()
    for _, expr in exprs(board):
        if "meter_money_total" in expr:
            shown.update(re.findall(r'direction="([a-z_]+)"', expr))
    assert shown == set(KINDS)


def test_the_balance_alerts_panel_names_every_alert_kind(board: dict[str, Any]) -> None:
    from processor.core.outputs import AlertKind

    description = by_title(board)["Balance alerts"]["description"]
    assert {k.value for k in AlertKind} <= set(re.findall(r"[a-z_]+", description))


def test_the_dedupe_marks_panel_gives_the_metrics_size_of_a_mark(board: dict[str, Any]) -> None:
    from processor.observability import metrics

    [family] = metrics.MARKS.collect()
    [help_bytes] = re.findall(r"about (\d+) bytes", family.documentation)
    description = by_title(board)["Dedupe marks"]["description"]
    [(low, high)] = re.findall(r"~(\d+)-(\d+) bytes", description)
    assert int(low) <= int(help_bytes) <= int(high)
