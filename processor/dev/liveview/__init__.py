"""Terminal live view of the processor's outputs, for ``make run`` and demos.

Reads credits.ledger, credits.recharge-requests, credits.alerts, credits.rejected
(and credits.commands, to show how billing answered each recharge request) from the
beginning, with no consumer group: it leaves no state on the broker and never
competes with the processor or billing for partitions.

``ViewState.apply`` and ``render`` are pure, so the screen is unit-tested without
Kafka. Money is kept as ``Decimal`` from the JSON strings, never as float.

Its parts: `state` (what was read), `screen` (the screen as text), `terminal`
(`LiveView`, the Kafka reading and redrawing) and `cli`.
"""

from processor.dev.liveview.cli import main
from processor.dev.liveview.screen import render, summary_line
from processor.dev.liveview.state import (
    AlertView,
    RechargeView,
    RejectionView,
    TenantView,
    TopicKind,
    ViewState,
)
from processor.dev.liveview.terminal import LiveView, LiveViewConfig

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
