"""The dedupe window: how long (event time) an input's id is remembered, so that a
repeat of it within the window is a duplicate and one past it is refused as too old;
and the keys of the table of ids seen."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class DedupeWindow:
    """How long (event time) ids are remembered, and how far ahead of the clock an
    event may be (METER_DEDUPE_DAYS, METER_MAX_FUTURE_SECONDS)."""

    days: float
    max_future_seconds: float = 300.0
    # The window as a timedelta, built once: every applied record asks for its expiry.
    span: timedelta = field(init=False, repr=False, compare=False)
    ahead: timedelta = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "span", timedelta(days=self.days))
        object.__setattr__(self, "ahead", timedelta(seconds=self.max_future_seconds))

    def expires(self, occurred_at: datetime, now: datetime) -> int:
        """Epoch second until which the id is remembered: `days` of event time.

        From the event's time, or from `now` when that is later; never past `now` +
        the window + `max_future_seconds` (the engine refuses an event further ahead
        than that, and one older than the window, before it marks it). Until the mark
        expires a repeat is a duplicate; after it, the repeat is older than the window
        and refused as `too_old`: no repeat is metered twice. Rounded up to the second:
        rounded down, a mark could be gone up to a second before its event is older
        than the window, and a repeat in that second would be metered again.
        """
        if occurred_at <= now:
            return math.ceil((now + self.span).timestamp())
        return math.ceil((min(occurred_at, now + self.ahead) + self.span).timestamp())

    def too_old(self, occurred_at: datetime, now: datetime) -> bool:
        """Older than the window: a repeat of it may have been forgotten already."""
        return occurred_at < now - self.span

    def too_new(self, occurred_at: datetime, now: datetime) -> bool:
        return occurred_at - now > self.ahead


def dedupe_key(tenant_id: str, kind: str, record_id: str) -> str:
    return f"{tenant_id}\x1f{kind}\x1f{record_id}"


def dedupe_tenant(key: str) -> str:
    """The tenant a dedupe key belongs to (tenant ids hold no \\x1f)."""
    return key.partition("\x1f")[0]
