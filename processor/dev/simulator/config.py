"""The simulator's settings and the counters of what it sent."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from processor.dev.simulator.contract import BILLING_GROUP_ID


@dataclass(slots=True)
class SimulatorConfig:
    bootstrap: str
    topic_prefix: str = ""
    tenants: int = 36
    rate_per_second: float = 20.0  # usage events per second, all tenants together
    duplicate_ratio: float = 0.03
    failure_ratio: float = 0.15  # share of recharge requests answered recharge_failed
    garbage_ratio: float = 0.01  # share of traffic records that are deliberately bad
    billing_delay_seconds: float = 2.0
    seed: int | None = None
    duration_seconds: float | None = None  # None: until cancelled
    currency: str = "USD"
    # Additions beyond the brief, all with harmless defaults:
    miskey_ratio: float = 0.01  # valid usage keyed by another tenant or with no key
    admin_actions_per_minute: float = 4.0  # manual top-ups and settings changes
    conference_share: float = 0.25  # share of usage on usage.conferencing
    billing_group_id: str | None = None  # None: prefix + BILLING_GROUP_ID
    # Waiting for the processor to create the topics avoids auto-creating them with
    # the broker's default partition count. None: do not wait.
    topic_wait_seconds: float | None = 60.0
    setup: bool = True  # send initial funds and settings for every tenant
    # Place no call for a tenant credits.alerts says is exhausted, as the contract
    # asks of telephony (simulator/gate.py). False: call regardless of the balance.
    gate_calls: bool = True
    stats_log_seconds: float | None = None  # log stats periodically (standalone runs)
    # SASL/TLS keyword arguments for every Kafka client (processor.kafka.options).
    client_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("duplicate_ratio", "failure_ratio", "garbage_ratio", "miskey_ratio",
                     "conference_share"):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.tenants < 1:
            raise ValueError("tenants must be >= 1")
        if self.rate_per_second <= 0:
            raise ValueError("rate_per_second must be > 0")
        if self.billing_delay_seconds < 0:
            raise ValueError("billing_delay_seconds must be >= 0")

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @property
    def group_id(self) -> str:
        return self.billing_group_id or self.topic_prefix + BILLING_GROUP_ID


@dataclass(slots=True)
class SimulatorStats:
    """Counters of what was sent; ``commands_sent`` counts admin commands (initial
    setup, top-ups, settings), billing answers are ``funds_answered`` and
    ``failures_answered``."""

    usage_sent: int = 0
    duplicates_sent: int = 0
    commands_sent: int = 0
    garbage_sent: int = 0
    recharge_requests_seen: int = 0
    funds_answered: int = 0
    failures_answered: int = 0
    miskeyed_sent: int = 0
    calls_blocked: int = 0  # calls the gate refused: their tenants were exhausted
    requests_ignored: int = 0  # re-deliveries and paid requests billing did not answer
    send_errors: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "started_at"}

    def summary(self) -> str:
        return (
            f"usage {self.usage_sent} dup {self.duplicates_sent} garbage {self.garbage_sent}"
            f" miskeyed {self.miskeyed_sent} blocked {self.calls_blocked}"
            f" commands {self.commands_sent}"
            f" recharge-requests {self.recharge_requests_seen} paid {self.funds_answered}"
            f" failed {self.failures_answered} ignored {self.requests_ignored}"
            f" send-errors {self.send_errors}"
        )
