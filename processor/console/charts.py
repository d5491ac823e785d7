"""Charts drawn on the server as SVG: no script, readable by a screen reader.

Each bar has a <title> (shown on hover, read aloud), and the chart a text summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from markupsafe import Markup, escape

from processor.console.i18n import Translator

__all__ = ["DailySpend", "daily_spend_svg", "last_days"]

WIDTH = 720
HEIGHT = 200
LEFT = 64
BOTTOM = 28
TOP = 12


@dataclass(frozen=True)
class DailySpend:
    day: date
    amount: Decimal


def last_days(buckets: list[dict[str, str]], today: date, days: int = 30) -> list[DailySpend]:
    """One value per day for the last `days` days (today included), 0 where none."""
    sums: dict[str, Decimal] = {}
    for bucket in buckets:
        sums[bucket["key"]] = sums.get(bucket["key"], Decimal(0)) + Decimal(bucket["amount"])
    first = today - timedelta(days=days - 1)
    return [
        DailySpend(d, sums.get(d.isoformat(), Decimal(0)))
        for d in (first + timedelta(days=i) for i in range(days))
    ]


def daily_spend_svg(
    series: list[DailySpend], currency: str, t: Translator, places: int | None = None
) -> Markup:
    """`places`: the page's decimals, so that the axis reads like the amounts beside it."""
    top = max((s.amount for s in series), default=Decimal(0))
    scale = top if top > 0 else Decimal(1)
    plot_w = WIDTH - LEFT - 8
    plot_h = HEIGHT - BOTTOM - TOP
    step = plot_w / max(len(series), 1)
    bar_w = max(step * 0.7, 1.0)
    total = sum((s.amount for s in series), Decimal(0))
    summary = t.gettext("Daily spend, last 30 days: %(total)s in total, at most %(top)s a day") % {
        "total": t.money(total, currency, places),
        "top": t.money(top, currency, places),
    }
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="spend-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="spend-title">{escape(summary)}</title>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}" '
        'class="axis"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 8}" text-anchor="end" class="tick">'
        f"{escape(t.money(top, currency, places))}</text>",
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" class="tick">'
        f"{escape(t.money(Decimal(0), currency, places))}</text>",
    ]
    for i, s in enumerate(series):
        h = float(s.amount / scale) * plot_h
        x = LEFT + i * step + (step - bar_w) / 2
        y = TOP + plot_h - h
        label = f"{t.day(s.day)}: {t.money(s.amount, currency, places)}"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
            f"<title>{escape(label)}</title></rect>"
        )
        if (len(series) - 1 - i) % 7 == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" '
                f'class="tick">{escape(t.short_day(s.day))}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every text in it is escaped above)
