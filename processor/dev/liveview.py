"""Terminal live view of the processor's outputs, for ``make run`` and demos.

Reads credits.ledger, credits.recharge-requests, credits.alerts, credits.rejected
(and credits.commands, to show how billing answered each recharge request) from the
beginning, with no consumer group: it leaves no state on the broker and never
competes with the processor or billing for partitions.

``ViewState.apply`` and ``render`` are pure, so the screen is unit-tested without
Kafka. Money is kept as ``Decimal`` from the JSON strings, never as float.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient

from processor.dev.simulator import (
    Simulator,
    SimulatorStats,
    build_arg_parser,
    config_from_args,
    run_until_signalled,
)

__all__ = [
    "AlertView",
    "LiveView",
    "LiveViewConfig",
    "RechargeView",
    "RejectionView",
    "TenantView",
    "TopicKind",
    "ViewState",
    "main",
    "render",
    "summary_line",
]

log = logging.getLogger(__name__)

TopicKind = Literal["ledger", "recharge", "alerts", "rejected", "commands"]

# Unprefixed names from CONTRACT.md, and what each one feeds in the view.
TOPICS: Final[Mapping[str, TopicKind]] = {
    "credits.ledger": "ledger",
    "credits.recharge-requests": "recharge",
    "credits.alerts": "alerts",
    "credits.rejected": "rejected",
    "credits.commands": "commands",
}

CLEAR_HOME: Final = "\x1b[H\x1b[2J"
HOME: Final = "\x1b[H"
CLEAR_EOL: Final = "\x1b[K"
CLEAR_EOS: Final = "\x1b[J"
HIDE_CURSOR: Final = "\x1b[?25l"
SHOW_CURSOR: Final = "\x1b[?25h"


@dataclass(slots=True)
class LiveViewConfig:
    bootstrap: str
    topic_prefix: str = ""
    refresh_seconds: float = 1.0
    max_rows: int = 20
    # Non-TTY output prints one summary line this often instead of redrawing.
    summary_every_seconds: float = 5.0


@dataclass(slots=True)
class TenantView:
    tenant_id: str
    balance: Decimal | None = None
    currency: str = ""
    debits: int = 0
    credits: int = 0
    status: str | None = None  # from the last exhausted/restored alert
    last_alert: str | None = None
    last_alert_at: str | None = None


@dataclass(slots=True)
class RechargeView:
    request_id: str
    tenant_id: str
    amount: Decimal
    currency: str
    attempt: int
    requested_at: str
    outcome: str = "pending"


@dataclass(slots=True)
class AlertView:
    tenant_id: str
    alert: str
    balance: Decimal | None
    occurred_at: str


@dataclass(slots=True)
class RejectionView:
    reason: str
    detail: str
    source_topic: str
    key: str | None
    rejected_at: str


def _decimal(value: Any) -> Decimal | None:
    # Money arrives as JSON strings; anything else is a contract violation we
    # show as "?" rather than coerce through float.
    if not isinstance(value, str):
        return None
    try:
        d = Decimal(value)
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


@dataclass
class ViewState:
    bootstrap: str = ""
    topic_prefix: str = ""
    tenants: dict[str, TenantView] = field(default_factory=dict)
    recharges: OrderedDict[str, RechargeView] = field(default_factory=OrderedDict)
    alerts: deque[AlertView] = field(default_factory=lambda: deque(maxlen=50))
    rejections_by_reason: Counter[str] = field(default_factory=Counter)
    recent_rejections: deque[RejectionView] = field(default_factory=lambda: deque(maxlen=20))
    ledger_entries: int = 0
    ledger_debits: int = 0
    ledger_credits: int = 0
    recharge_requests: int = 0
    decode_errors: int = 0
    ledger_rate: float = 0.0  # entries/s over the last refresh (a display figure)
    simulator: SimulatorStats | None = None
    waiting_for: tuple[str, ...] = ()  # topics that do not exist yet
    error: str | None = None  # last broker error, shown until the next success
    # Billing may answer before the view has read the request (topics are read
    # independently), so outcomes wait here for their request.
    _early_outcomes: OrderedDict[str, str] = field(default_factory=OrderedDict)
    max_recharges: int = 500
    # Added: what `meter notifier` delivered, as the demo's local receivers saw it
    # (a summary line, then the latest deliveries); None: no section.
    notifications: Callable[[], list[str]] | None = None

    def tenant(self, tenant_id: str) -> TenantView:
        view = self.tenants.get(tenant_id)
        if view is None:
            view = self.tenants[tenant_id] = TenantView(tenant_id)
        return view

    def apply(self, kind: TopicKind, payload: Any) -> bool:
        """Fold one decoded record into the view; False if it was not understood."""
        if not isinstance(payload, dict):
            if kind != "commands":  # garbage on an input topic is expected
                self.decode_errors += 1
            return False
        handler = {
            "ledger": self._ledger,
            "recharge": self._recharge,
            "alerts": self._alert,
            "rejected": self._rejected,
            "commands": self._command,
        }[kind]
        ok = handler(payload)
        if not ok and kind != "commands":
            self.decode_errors += 1
        return ok

    def _ledger(self, p: dict[str, Any]) -> bool:
        tenant_id = p.get("tenant_id")
        balance = _decimal(p.get("balance_after"))
        if not isinstance(tenant_id, str) or balance is None:
            return False
        view = self.tenant(tenant_id)
        # Per tenant the ledger is one ordered partition, so the last entry read
        # carries the current balance.
        view.balance = balance
        view.currency = _str(p.get("currency"), view.currency)
        self.ledger_entries += 1
        if p.get("kind") == "debit":
            view.debits += 1
            self.ledger_debits += 1
        elif p.get("kind") == "credit":
            view.credits += 1
            self.ledger_credits += 1
        return True

    def _recharge(self, p: dict[str, Any]) -> bool:
        request_id = p.get("request_id")
        tenant_id = p.get("tenant_id")
        amount = _decimal(p.get("amount"))
        attempt = p.get("attempt")
        if not (isinstance(request_id, str) and isinstance(tenant_id, str) and amount is not None):
            return False
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            return False
        self.recharge_requests += 1
        self.tenant(tenant_id)
        outcome = self._early_outcomes.pop(request_id, "pending")
        existing = self.recharges.pop(request_id, None)
        if existing is not None and existing.attempt >= attempt:
            # A re-delivery of an attempt we know: keep what billing answered.
            outcome = existing.outcome
        self.recharges[request_id] = RechargeView(
            request_id=request_id,
            tenant_id=tenant_id,
            amount=amount,
            currency=_str(p.get("currency")),
            attempt=max(attempt, existing.attempt if existing else 0),
            requested_at=_str(p.get("requested_at")),
            outcome=outcome,
        )
        while len(self.recharges) > self.max_recharges:
            self.recharges.popitem(last=False)
        return True

    def _alert(self, p: dict[str, Any]) -> bool:
        tenant_id = p.get("tenant_id")
        alert = p.get("alert")
        if not (isinstance(tenant_id, str) and isinstance(alert, str)):
            return False
        at = _str(p.get("occurred_at"))
        view = self.tenant(tenant_id)
        view.last_alert = alert
        view.last_alert_at = at
        if alert in ("exhausted", "restored"):
            view.status = "exhausted" if alert == "exhausted" else "active"
        self.alerts.append(AlertView(tenant_id, alert, _decimal(p.get("balance")), at))
        return True

    def _rejected(self, p: dict[str, Any]) -> bool:
        reason = _str(p.get("reason"), "?")
        self.rejections_by_reason[reason] += 1
        key = p.get("key")
        self.recent_rejections.append(
            RejectionView(
                reason=reason,
                detail=_str(p.get("detail")),
                source_topic=_str(p.get("source_topic")),
                key=key if isinstance(key, str) else None,
                rejected_at=_str(p.get("rejected_at")),
            )
        )
        return True

    def _command(self, p: dict[str, Any]) -> bool:
        request_id = p.get("recharge_request_id")
        if not isinstance(request_id, str):
            return False
        if p.get("type") == "funds_added":
            outcome = "paid"
        elif p.get("type") == "recharge_failed":
            outcome = "failed: " + _str(p.get("reason"), "?")
        else:
            return False
        view = self.recharges.get(request_id)
        if view is None:
            self._early_outcomes[request_id] = outcome
            while len(self._early_outcomes) > self.max_recharges:
                self._early_outcomes.popitem(last=False)
        elif view.outcome != "paid":  # once paid, a late failure cannot undo it
            view.outcome = outcome
        return True

    @property
    def exhausted(self) -> int:
        return sum(1 for t in self.tenants.values() if t.status == "exhausted")


# ------------------------------------------------------------------------ render


def _clock(ts: str) -> str:
    """HH:MM:SS of an RFC 3339 timestamp, in UTC; the raw text if unparseable."""
    if not ts:
        return "-"
    try:
        return datetime.fromisoformat(ts).astimezone(UTC).strftime("%H:%M:%S")
    except ValueError:
        return ts[:8]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _money(value: Decimal | None) -> str:
    return "?" if value is None else format(value, "f")


def _balance_key(t: TenantView) -> tuple[bool, Decimal, str]:
    # Lowest balance first: those are the tenants about to be blocked.
    return (t.balance is None, t.balance if t.balance is not None else Decimal(0), t.tenant_id)


def render(state: ViewState, width: int = 100, max_rows: int = 20) -> str:
    """The whole screen as text (no ANSI codes), each line at most ``width`` wide."""
    width = max(40, width)
    lines: list[str] = []
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    prefix = f"  prefix {state.topic_prefix!r}" if state.topic_prefix else ""
    lines.append(f"credits-meter live view  {state.bootstrap}{prefix}  {now}")
    lines.append(
        f"ledger {state.ledger_entries} entries ({state.ledger_debits} debits,"
        f" {state.ledger_credits} credits)  {state.ledger_rate:.1f}/s"
        f"  tenants {len(state.tenants)} ({state.exhausted} exhausted)"
        f"  recharge requests {state.recharge_requests}"
        f"  rejected {sum(state.rejections_by_reason.values())}"
    )
    if state.simulator is not None:
        lines.append("simulator " + state.simulator.summary())
    if state.waiting_for:
        lines.append("waiting for topics: " + ", ".join(state.waiting_for))
    if state.error:
        lines.append("broker error: " + state.error)
    if state.decode_errors:
        lines.append(f"records the view could not read: {state.decode_errors}")
    lines.append("")

    tenants = sorted(state.tenants.values(), key=_balance_key)
    name_w = max([6, *(len(t.tenant_id) for t in tenants[:max_rows])])
    name_w = min(name_w, 32)
    lines.append(
        f"{'TENANT':<{name_w}}  {'BALANCE':>14} {'CUR':<3}  {'STATUS':<9}"
        f"  {'DEBITS':>7} {'CREDITS':>7}  LAST ALERT"
    )
    for t in tenants[:max_rows]:
        alert = f"{t.last_alert} {_clock(t.last_alert_at or '')}" if t.last_alert else "-"
        lines.append(
            f"{_fit(t.tenant_id, name_w):<{name_w}}  {_money(t.balance):>14} {t.currency:<3}"
            f"  {t.status or '-':<9}  {t.debits:>7} {t.credits:>7}  {alert}"
        )
    if len(tenants) > max_rows:
        lines.append(f"... {len(tenants) - max_rows} more tenants")
    lines.append("")

    lines.append("RECENT RECHARGE REQUESTS")
    recent = list(state.recharges.values())[-8:][::-1]
    if recent:
        lines.append(
            f"{'TIME':<8}  {'TENANT':<{name_w}}  {'AMOUNT':>10} {'CUR':<3}  {'TRY':>3}"
            f"  {'OUTCOME':<26}  REQUEST ID"
        )
        for r in recent:
            lines.append(
                f"{_clock(r.requested_at):<8}  {_fit(r.tenant_id, name_w):<{name_w}}"
                f"  {_money(r.amount):>10} {r.currency:<3}  {r.attempt:>3}"
                f"  {_fit(r.outcome, 26):<26}  {r.request_id}"
            )
    else:
        lines.append("(none yet)")
    lines.append("")

    lines.append("RECENT ALERTS")
    if state.alerts:
        for a in list(state.alerts)[-6:][::-1]:
            lines.append(
                f"{_clock(a.occurred_at):<8}  {_fit(a.tenant_id, name_w):<{name_w}}"
                f"  {a.alert:<16} balance {_money(a.balance)}"
            )
    else:
        lines.append("(none yet)")
    lines.append("")

    if state.notifications is not None:
        told = state.notifications()
        lines.append("NOTIFICATIONS SENT  " + (told[0] if told else "(none yet)"))
        lines.extend(told[1:7])
        lines.append("")

    by_reason = "  ".join(f"{r} {n}" for r, n in state.rejections_by_reason.most_common())
    lines.append("REJECTIONS  " + (by_reason or "(none)"))
    for rej in list(state.recent_rejections)[-6:][::-1]:
        detail = " ".join(rej.detail.split())  # details may span lines
        lines.append(
            f"{_clock(rej.rejected_at):<8}  {rej.reason:<17} {rej.source_topic:<20}"
            f" key={rej.key if rej.key is not None else '-'}  {detail}"
        )
    return "\n".join(_fit(line, width) for line in lines) + "\n"


def summary_line(state: ViewState) -> str:
    """One line for logs and non-interactive output."""
    lowest = sorted(state.tenants.values(), key=_balance_key)[:3]
    low = ", ".join(f"{t.tenant_id}={_money(t.balance)}" for t in lowest)
    reasons = ",".join(f"{r}={n}" for r, n in sorted(state.rejections_by_reason.items()))
    line = (
        f"ledger={state.ledger_entries} ({state.ledger_rate:.1f}/s)"
        f" tenants={len(state.tenants)} exhausted={state.exhausted}"
        f" recharge_requests={state.recharge_requests}"
        f" rejected={sum(state.rejections_by_reason.values())}"
        + (f" [{reasons}]" if reasons else "")
        + (f" lowest: {low}" if low else "")
    )
    if state.waiting_for:
        line += " waiting for " + ",".join(state.waiting_for)
    if state.simulator is not None:
        line += " | sim " + state.simulator.summary()
    if state.notifications is not None:
        told = state.notifications()
        line += " | notifications " + (told[0] if told else "none yet")
    return line


# -------------------------------------------------------------------------- I/O


class LiveView:
    def __init__(
        self,
        config: LiveViewConfig,
        simulator_stats: SimulatorStats | None = None,
        *,
        stream: TextIO | None = None,
        notifications: Callable[[], list[str]] | None = None,
    ) -> None:
        self.config = config
        self.state = ViewState(
            bootstrap=config.bootstrap,
            topic_prefix=config.topic_prefix,
            simulator=simulator_stats,
            notifications=notifications,
        )
        self._stream = stream if stream is not None else sys.stdout
        self._kinds: dict[str, TopicKind] = {
            config.topic_prefix + name: kind for name, kind in TOPICS.items()
        }
        # Next offset to apply per partition. Re-assigning (when a topic appears)
        # may rewind a partition; this makes the re-read a no-op instead of
        # double-counting.
        self._positions: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        cfg = self.config
        meta = AIOKafkaClient(bootstrap_servers=cfg.bootstrap, client_id="credits-meter-liveview")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            client_id="credits-meter-liveview",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Show what downstream consumers see: no records of aborted transactions.
            isolation_level="read_committed",
        )
        tty = self._stream.isatty()
        await meta.bootstrap()
        try:
            await consumer.start()
            try:
                if tty:
                    self._write(HIDE_CURSOR + CLEAR_HOME)
                await self._loop(meta, consumer, tty)
            finally:
                await consumer.stop()
        finally:
            await meta.close()
            if tty:
                self._write(SHOW_CURSOR + "\n")

    async def _loop(self, meta: Any, consumer: AIOKafkaConsumer, tty: bool) -> None:
        interval = max(0.1, self.config.refresh_seconds)
        summary_every = max(interval, self.config.summary_every_seconds)
        next_meta = 0.0
        last_draw = time.monotonic()
        next_draw = last_draw  # first screen at once, before any data
        next_summary = last_draw + summary_every
        entries_at_last_draw = 0
        while True:
            now = time.monotonic()
            if now >= next_meta:
                await self._refresh_assignment(meta, consumer)
                # Poll quickly while topics are missing, rarely once all exist.
                next_meta = time.monotonic() + (2.0 if self.state.waiting_for else 30.0)
            wait = max(0.0, min(next_draw, next_meta) - time.monotonic())
            if consumer.assignment():
                batches = await consumer.getmany(
                    timeout_ms=int(min(wait, 0.5) * 1000), max_records=20_000
                )
                for tp, messages in batches.items():
                    self._apply_batch(tp, messages)
            else:
                await asyncio.sleep(min(wait, 0.5))
            now = time.monotonic()
            if now >= next_draw:
                elapsed = max(1e-6, now - last_draw)
                self.state.ledger_rate = (
                    self.state.ledger_entries - entries_at_last_draw
                ) / elapsed
                entries_at_last_draw = self.state.ledger_entries
                last_draw = now
                next_draw = now + interval
                if tty:
                    self._draw()
                elif now >= next_summary:
                    next_summary = now + summary_every
                    self._write(summary_line(self.state) + "\n")

    def _apply_batch(self, tp: TopicPartition, messages: Sequence[Any]) -> None:
        kind = self._kinds.get(tp.topic)
        position = self._positions.get(tp, 0)
        for message in messages:
            if message.offset < position:
                continue
            position = message.offset + 1
            if kind is None:
                continue
            try:
                payload = orjson.loads(message.value) if message.value is not None else None
            except orjson.JSONDecodeError:
                payload = None
            self.state.apply(kind, payload)
        self._positions[tp] = position

    async def _refresh_assignment(self, meta: Any, consumer: AIOKafkaConsumer) -> None:
        try:
            # All topics' metadata: naming missing topics would auto-create them.
            cluster = await meta.fetch_all_metadata()
        except Exception as exc:  # the broker may be starting or gone; keep drawing
            self.state.error = f"{type(exc).__name__}: {exc}"
            return
        self.state.error = None
        wanted: set[TopicPartition] = set()
        missing: list[str] = []
        for topic in self._kinds:
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                missing.append(topic)
                continue
            wanted.update(TopicPartition(topic, p) for p in partitions)
        self.state.waiting_for = tuple(missing)
        if not wanted or wanted == set(consumer.assignment()):
            return
        consumer.assign(sorted(wanted))
        fresh = []
        for tp in wanted:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
            else:
                fresh.append(tp)
        if fresh:
            await consumer.seek_to_beginning(*fresh)

    def _draw(self) -> None:
        size = shutil.get_terminal_size((100, 40))
        # Leave room for the header and the other sections below the table.
        rows = max(3, min(self.config.max_rows, size.lines - 30))
        text = render(self.state, width=size.columns, max_rows=rows)
        body = "".join(line + CLEAR_EOL + "\n" for line in text.rstrip("\n").split("\n"))
        # Home + overwrite + clear the rest: no full clear, so no flicker.
        self._write(HOME + body + CLEAR_EOS)

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m processor.dev.liveview",
        description="Live view of credits-meter's outputs; --simulate also runs the simulator.",
        parents=[build_arg_parser(add_help=False)],
    )
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws")
    p.add_argument("--max-rows", type=int, default=20, help="tenants shown")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="run the traffic simulator in this process and show its counters",
    )
    p.add_argument(
        "--log-file",
        default=os.environ.get("METER_LIVEVIEW_LOG"),
        help="log here (logging to the terminal would tear the screen)",
    )
    return p


async def _run(args: argparse.Namespace) -> None:
    view_config = LiveViewConfig(
        bootstrap=args.bootstrap,
        topic_prefix=args.topic_prefix,
        refresh_seconds=args.refresh,
        max_rows=args.max_rows,
    )
    if not args.simulate:
        await LiveView(view_config).run()
        return
    simulator = Simulator(config_from_args(args))
    view = LiveView(view_config, simulator.stats)
    async with asyncio.TaskGroup() as group:
        group.create_task(simulator.run())
        group.create_task(view.run())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_file:
        logging.basicConfig(
            filename=args.log_file,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
    else:
        logging.basicConfig(level=logging.ERROR)
    status = 0
    try:
        run_until_signalled(_run(args))
    except* RuntimeError as group:
        # Setup failures (topics never created): say why instead of a traceback.
        for exc in group.exceptions:
            print(f"liveview: {exc}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
