"""The credits-meter Grafana dashboard, as code (grafana-foundation-sdk).

    .venv/bin/python deploy/grafana/dashboard.py          # rewrite the checked-in JSON
    .venv/bin/python deploy/grafana/dashboard.py --check  # exit 1 if it is out of date

The JSON lands in deploy/grafana/dashboards/credits-meter.json, which Grafana loads
through deploy/grafana/provisioning/. Every query reads the `meter_*` series that
processor/observability/metrics.py declares; tests/unit/test_dashboard.py checks both the drift and
the metric names.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "credits-meter.json"
UID = "credits-meter"

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every query narrows to the chosen job and workers.
SCOPE = 'job=~"$job", instance=~"$instance"'
# Except the notifier's: deploy/prometheus scrapes it as its own job, `<job>-notifier`
# (older configs: in the workers' job), and the Worker variable lists workers only.
NOTIFIER_SCOPE = 'job=~"$job|$job-notifier"'
RATE = "[$__rate_interval]"

# Grid: 24 columns; rows of full-width stat strips and half-width graphs.
STAT_H, GRAPH_H, HALF = 4, 8, 12


AnyPanel = timeseries.Panel | stat.Panel | bargauge.Panel

# Multi-value variables start on "All", not on whichever value Grafana lists first.
ALL = model.VariableOption(selected=True, text="All", value="$__all")


def sel(metric: str, extra: str = "", scope: str = SCOPE) -> str:
    """`metric{job, instance scope[, extra]}`."""
    return f"{metric}{{{scope}{', ' + extra if extra else ''}}}"


def query(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def queries(*specs: tuple[str, str]) -> list[prometheus.Dataquery]:
    return [query(expr, legend, ref=chr(ord("A") + i)) for i, (expr, legend) in enumerate(specs)]


def graph(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str = "short",
    stacked: bool = False,
    width: int = HALF,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(targets))
        .unit(unit)
        .min(0)
        .height(GRAPH_H)
        .span(width)
        .fill_opacity(10)
        .line_width(1)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_model.LegendDisplayMode.TABLE)
            .placement(common_model.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(common.VizTooltipOptions().mode(common_model.TooltipDisplayMode.MULTI))
    )
    if stacked:
        panel = panel.stacking(
            common.StackingConfig().mode(common_model.StackingMode.NORMAL)
        ).fill_opacity(40)
    return panel


def single(
    title: str,
    description: str,
    expr: str,
    unit: str = "short",
    red_from: float | None = None,
    width: int = 4,
) -> stat.Panel:
    steps = [model.Threshold(value=None, color="green")]
    if red_from is not None:
        steps.append(model.Threshold(value=red_from, color="red"))
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, instant=True))
        .unit(unit)
        .height(STAT_H)
        .span(width)
        .color_mode(common_model.BigValueColorMode.BACKGROUND)
        .graph_mode(common_model.BigValueGraphMode.NONE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps))
    )


def quantiles(metric: str, scope: str = SCOPE) -> list[prometheus.Dataquery]:
    bucket = f"sum by (le) (rate({sel(metric + '_bucket', scope=scope)}{RATE}))"
    return queries(
        *((f"histogram_quantile({q}, {bucket})", f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99))
    )


def flush_p99(phase: str) -> tuple[str, str]:
    bucket = sel("meter_batch_flush_seconds_bucket", f'phase="{phase}"')
    return f"histogram_quantile(0.99, sum by (le) (rate({bucket}{RATE})))", phase


APPLIED = sel("meter_records_total", 'outcome="applied"')
LONG_PAUSES = sel("meter_gc_pause_seconds_bucket", 'le="0.1"')


def overview() -> list[stat.Panel]:
    return [
        single(
            "Ready workers",
            "Workers reporting meter_ready = 1 (partitions assigned, state recovered).",
            f"sum({sel('meter_ready')})",
        ),
        single(
            "Not ready",
            "Workers scraped but not ready: recovering state, rebalancing, or idle.",
            f"count({sel('meter_ready')}) - sum({sel('meter_ready')})",
            red_from=1,
        ),
        single(
            "Applied / s",
            "Input records applied to balances, per second, all sources.",
            f"sum(rate({APPLIED}{RATE}))",
            unit="reqps",
        ),
        single(
            "Consumer lag",
            "Records not yet processed, all owned input partitions.",
            f"sum({sel('meter_consumer_lag_records')})",
            red_from=10000,
        ),
        single(
            "Exhausted tenants",
            "Tenants at or below zero: telephony blocks their credit-funded calls.",
            f"sum({sel('meter_tenants_exhausted')})",
        ),
        single(
            "Recharges outstanding",
            "Recharge requests waiting for billing (or for their retry).",
            f"sum({sel('meter_recharge_outstanding')})",
        ),
    ]


def throughput() -> list[timeseries.Panel]:
    records = sel("meter_records_total")
    return [
        graph(
            "Records by outcome",
            "Input records per second by outcome: applied, duplicate, rejected, ignored, "
            "rerouted, replayed.",
            queries((f"sum by (outcome) (rate({records}{RATE}))", "{{outcome}}")),
            unit="reqps",
            stacked=True,
        ),
        graph(
            "Records by source",
            "Input records per second by source topic.",
            queries((f"sum by (topic) (rate({records}{RATE}))", "{{topic}}")),
            unit="reqps",
            stacked=True,
        ),
        graph(
            "Rejections by reason",
            "Records sent to credits.rejected per second, by reason. Each one waits there "
            "for an operator (fix the card or the sender, then replay).",
            queries((f"sum by (reason) (rate({sel('meter_rejected_total')}{RATE}))", "{{reason}}")),
            unit="reqps",
            stacked=True,
        ),
        graph(
            "Outputs and output errors",
            "Records published per second by output topic, and records the broker refused "
            "(the worker restarts to replay those).",
            queries(
                (f"sum by (topic) (rate({sel('meter_outputs_total')}{RATE}))", "{{topic}}"),
                (f"sum(rate({sel('meter_output_errors_total')}{RATE}))", "errors"),
            ),
            unit="reqps",
        ),
    ]


def lag_and_latency() -> list[timeseries.Panel]:
    return [
        graph(
            "Consumer lag by partition",
            "Highwater minus committed offset per owned input partition. Commits happen "
            "every few seconds, so a small standing lag is normal; a rising line is not.",
            queries(
                (
                    f"sum by (topic, partition) ({sel('meter_consumer_lag_records')})",
                    "{{topic}}/{{partition}}",
                )
            ),
            width=24,
        ),
        graph(
            "Processing latency",
            "Time to handle one input record, decode to outputs queued (quantiles over "
            "meter_processing_seconds).",
            quantiles("meter_processing_seconds"),
            unit="s",
        ),
        graph(
            "Event-time lag",
            "Now minus the event's occurred_at when applied: how late usage reaches "
            "balances, telephony's delay included.",
            quantiles("meter_event_lag_seconds"),
            unit="s",
        ),
        graph(
            "Batch delivery time (p99)",
            "From a batch's flush to its outputs acknowledged by Kafka (outputs), and to "
            "its state acknowledged too, after which its offsets may be committed (state).",
            queries(*(flush_p99(phase) for phase in ("outputs", "state"))),
            unit="s",
            width=24,
        ),
    ]


def money() -> list[timeseries.Panel]:
    def rate_of(direction: str) -> str:
        counter = sel("meter_money_total", f'direction="{direction}"')
        return f"60 * sum by (currency) (rate({counter}{RATE}))"

    def per_minute(direction: str) -> list[prometheus.Dataquery]:
        return queries((rate_of(direction), "{{currency}}"))

    return [
        # Expiry beside the debits, not a panel of its own: both take money out of
        # balances, and a new panel here would renumber the panels after it.
        graph(
            "Money debited and expired per minute",
            "Usage charges per minute, by currency, and funds removed when their lot "
            "expired (METER_FUNDS_EXPIRE_DAYS; ledger entries of kind expiry). "
            "Prometheus stores floats: for amounts that must add up, read credits.ledger.",
            queries(
                (rate_of("debit"), "{{currency}} debited"),
                (rate_of("expiry"), "{{currency}} expired"),
            ),
        ),
        graph(
            "Money credited per minute",
            "Funds added (manual and auto-recharge) per minute, by currency.",
            per_minute("credit"),
        ),
    ]


def recharges() -> list[timeseries.Panel]:
    return [
        graph(
            "Recharge requests sent",
            "Requests to billing per second: first attempts and retries of the same "
            "request_id. Retries mean billing failed or did not answer in time.",
            queries(
                (
                    f"sum by (attempt) (rate({sel('meter_recharge_requests_total')}{RATE}))",
                    "{{attempt}}",
                )
            ),
            unit="reqps",
            width=8,
        ),
        graph(
            "Recharge outcomes",
            "fulfilled (funds arrived), failed (billing said so), timed_out (no answer), "
            "suspended (last attempt failed: the tenant needs a person), dropped.",
            queries(
                (
                    f"sum by (outcome) (rate({sel('meter_recharge_outcomes_total')}{RATE}))",
                    "{{outcome}}",
                )
            ),
            unit="reqps",
            width=8,
        ),
        graph(
            "Recharges outstanding",
            "Open requests: sent and unanswered, or waiting for their retry.",
            queries((f"sum({sel('meter_recharge_outstanding')})", "outstanding")),
            width=8,
        ),
    ]


def tenants() -> list[timeseries.Panel | bargauge.Panel]:
    balance = sel("meter_tenant_balance")
    return [
        graph(
            "Balance alerts",
            "Alerts published per second by type: exhausted, restored, low_balance, "
            "recharge_failed, recharge_succeeded, funds_expiring, funds_expired.",
            queries((f"sum by (alert) (rate({sel('meter_alerts_total')}{RATE}))", "{{alert}}")),
            unit="reqps",
            width=8,
        ),
        graph(
            "Tenants and exhausted tenants",
            "Tenants with an account, and those at or below zero.",
            queries(
                (f"sum({sel('meter_tenants')})", "tenants"),
                (f"sum({sel('meter_tenants_exhausted')})", "exhausted"),
            ),
            width=8,
        ),
        bargauge.Panel()
        .title("Lowest balances (opt-in)")
        .description(
            "Only with METER_METRICS_TENANT_BALANCES > 0 (each worker exports that many of "
            "its lowest balances). Empty otherwise: a tenant label is unbounded."
        )
        .datasource(DATASOURCE)
        .with_target(query(f"bottomk(20, {balance})", "{{tenant}} ({{currency}})", instant=True))
        .height(GRAPH_H)
        .span(8)
        .orientation(common_model.VizOrientation.HORIZONTAL)
        .display_mode(common_model.BarGaugeDisplayMode.BASIC)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=None, color="red"), model.Threshold(0.01, "green")])
        ),
    ]


def workers() -> list[timeseries.Panel]:
    return [
        graph(
            "Ready workers",
            "Workers ready against workers scraped. A gap lasting more than a rebalance "
            "means a worker is stuck recovering.",
            queries(
                (f"sum({sel('meter_ready')})", "ready"),
                (f"count({sel('meter_ready')})", "reporting"),
            ),
        ),
        graph(
            "Rebalances",
            "Consumer group rebalances per worker over 5 minutes, and records Faust "
            "skipped around them (left uncommitted and read again), fetched before a "
            "seek (dropped, read again). Frequent rebalances "
            "stall processing: look for workers restarting or exceeding the session timeout.",
            queries(
                (
                    f"sum by (instance) (increase({sel('meter_rebalances_total')}[5m]))",
                    "{{instance}}",
                ),
                (
                    f"sum(increase({sel('meter_skipped_records_reread_total')}[5m]))",
                    "skipped, read again",
                ),
                (
                    f"sum(increase({sel('meter_stale_records_dropped_total')}[5m]))",
                    "stale fetch dropped",
                ),
                (
                    f"sum(increase({sel('meter_unowned_records_dropped_total')}[5m]))",
                    "unowned partition, not produced",
                ),
            ),
        ),
        graph(
            "Transactions",
            "Kafka transactions the workers' flushers committed per second (one a round "
            "per partition number, or per group of them a worker owns whole). Each "
            "carries a round's outputs with the state that applied them; a consumer "
            "reading read_committed sees both or neither.",
            queries(
                (
                    f"sum by (instance) (rate({sel('meter_transactions_total')}[1m]))",
                    "{{instance}}",
                ),
            ),
        ),
        graph(
            "Dedupe marks",
            "Marks each worker holds (one per distinct event and command within "
            "METER_DEDUPE_DAYS, ~27-30 bytes of memory each), and marks forgotten over 5 "
            "minutes once their window passed. Held marks should level off after one window.",
            queries(
                (f"sum by (instance) ({sel('meter_dedupe_marks')})", "{{instance}}"),
                (
                    f"sum(increase({sel('meter_dedupe_marks_forgotten_total')}[5m]))",
                    "forgotten",
                ),
            ),
        ),
        graph(
            "Versions and memory",
            "Workers per build (meter_build_info: credits-meter, Faust, aiokafka and "
            "Python versions; two lines during a rolling upgrade), workers per event loop "
            "(meter_event_loop_info, METER_EVENT_LOOP), workers running their per-record "
            "path compiled or interpreted (meter_record_path_info, METER_COMPILED), and each "
            "worker's resident memory (process_resident_memory_bytes).",
            queries(
                (
                    f"count by (version, faust, aiokafka, python) ({sel('meter_build_info')})",
                    "{{version}} (faust {{faust}}, aiokafka {{aiokafka}}, python {{python}})",
                ),
                (
                    f"count by (loop) ({sel('meter_event_loop_info')})",
                    "workers on {{loop}}",
                ),
                (
                    f"count by (path) ({sel('meter_record_path_info')})",
                    "workers {{path}}",
                ),
                (
                    f"sum by (instance) ({sel('process_resident_memory_bytes')}) / 1e6",
                    "{{instance}} MB",
                ),
            ),
        ),
        graph(
            "Collector pauses",
            "Python's garbage collector holding each worker's loop (meter_gc_pause_seconds; "
            "processor/worker/collector.py): the share of time it held it, and its passes "
            "longer than 0.1 s over 5 minutes. What survives a pass is frozen; a long pass "
            "outside a rebalance is a stall of every record and /authorize answer.",
            queries(
                (
                    f"sum by (instance) (rate({sel('meter_gc_pause_seconds_sum')}{RATE}))",
                    "{{instance}} share of time",
                ),
                (
                    f"sum by (instance) (increase({sel('meter_gc_pause_seconds_count')}[5m]))"
                    f" - sum by (instance) (increase({LONG_PAUSES}[5m]))",
                    "{{instance}} passes over 0.1 s",
                ),
            ),
        ),
    ]


def notifications() -> list[timeseries.Panel]:
    """`meter notifier`: its own /metrics (METER_NOTIFIER_PORT), its own job."""
    outbox = sel("meter_notification_outbox", 'status="pending"', NOTIFIER_SCOPE)
    return [
        graph(
            "Notifications by outcome",
            "Email and webhook tries per second: sent (2xx, or the SMTP server took it), "
            "retry (failed, tried again with back-off), gave_up (still failing after "
            "METER_NOTIFY_GIVE_UP_HOURS).",
            queries(
                (
                    "sum by (channel, outcome) "
                    f"(rate({sel('meter_notifications_total', scope=NOTIFIER_SCOPE)}{RATE}))",
                    "{{channel}} {{outcome}}",
                )
            ),
            unit="reqps",
            width=8,
        ),
        graph(
            "Notification latency",
            "From the alert to its notification delivered, retries included (p50, p95, p99).",
            quantiles("meter_notification_delivery_seconds", NOTIFIER_SCOPE),
            unit="s",
            width=8,
        ),
        graph(
            "Notification outbox",
            "Deliveries waiting in the notifier's outbox: due, or backing off after a "
            "failed try. Growing: receivers are failing or the notifier is behind. "
            "Every notifier reports the outbox they share, so this is the largest "
            "report, not the sum.",
            queries((f"max({outbox})", "pending")),
            width=8,
        ),
    ]


def build() -> model.Dashboard:
    rows: list[tuple[str, Sequence[AnyPanel]]] = [
        ("Overview", overview()),
        ("Throughput and rejections", throughput()),
        ("Lag and latency", lag_and_latency()),
        ("Money", money()),
        ("Recharge pipeline", recharges()),
        ("Tenants and alerts", tenants()),
        ("Workers", workers()),
        ("Notifications", notifications()),
    ]
    board = (
        dashboard.Dashboard("credits-meter")
        .uid(UID)
        .description("Prepaid credits metering: throughput, lag, money, recharges, tenants.")
        .tags(["credits-meter", "kafka", "billing"])
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("job")
            .label("Job")
            .datasource(DATASOURCE)
            .query("label_values(meter_ready, job)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(ALL)
        )
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("Worker")
            .datasource(DATASOURCE)
            .query('label_values(meter_ready{job=~"$job"}, instance)')
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(ALL)
        )
    )
    # Fixed ids keep links to a panel (?viewPanel=N) stable across regenerations.
    ids = itertools.count(1)
    for title, panels in rows:
        board = board.with_row(dashboard.Row(title).id(next(ids)))
        for panel in panels:
            board = board.with_panel(panel.id(next(ids)))
    return board.build()


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
