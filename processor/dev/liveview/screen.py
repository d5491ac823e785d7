"""The live view's screen as text, drawn from a `ViewState` (pure, so unit-tested)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from processor.dev.liveview.state import TenantView, ViewState


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
