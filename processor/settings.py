"""Typed settings, read once from the environment (names fixed by CONTRACT.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Logical topic names from the contract; a deployment prefixes all of them.
USAGE_CALLS = "usage.calls"
USAGE_CONFERENCING = "usage.conferencing"
COMMANDS = "credits.commands"
RECHARGE_REQUESTS = "credits.recharge-requests"
LEDGER = "credits.ledger"
ALERTS = "credits.alerts"
REJECTED = "credits.rejected"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Comma-separated brokers; unset means the project's local broker.",
    )
    rate_card: Path | None = Field(default=None, validation_alias="METER_RATE_CARD")
    topic_prefix: str = Field(default="", validation_alias="METER_TOPIC_PREFIX")
    app_id: str = Field(default="credits-meter", validation_alias="METER_APP_ID", min_length=1)
    data_dir: Path = Field(default=Path(".run/data"), validation_alias="METER_DATA_DIR")
    web_port: int = Field(default=6066, validation_alias="METER_WEB_PORT", ge=0, le=65535)
    web_host: str = Field(default="0.0.0.0", validation_alias="METER_WEB_HOST")  # noqa: S104
    partitions: int = Field(default=6, validation_alias="METER_PARTITIONS", ge=1)
    replication_factor: int = Field(default=1, validation_alias="METER_REPLICATION_FACTOR", ge=1)
    recharge_timeout_seconds: float = Field(
        default=3600, validation_alias="METER_RECHARGE_TIMEOUT_SECONDS", gt=0
    )
    recharge_retry_after_seconds: float = Field(
        default=900, validation_alias="METER_RECHARGE_RETRY_AFTER_SECONDS", ge=0
    )
    recharge_max_attempts: int = Field(
        default=3, validation_alias="METER_RECHARGE_MAX_ATTEMPTS", ge=1
    )
    dedupe_days: float = Field(default=7, validation_alias="METER_DEDUPE_DAYS", gt=0)
    # How often the recharge timer looks for timed-out or retry-due requests.
    timer_interval_seconds: float = Field(
        default=5.0, validation_alias="METER_TIMER_INTERVAL_SECONDS", gt=0
    )
    # How long the group waits for a silent worker before giving its partitions away:
    # the time a crashed worker's tenants stand still.
    session_timeout_seconds: float = Field(
        default=30.0, validation_alias="METER_SESSION_TIMEOUT_SECONDS", gt=0
    )
    # Faust store URL; memory:// rebuilds state from the changelog on start.
    store: str = Field(default="memory://", validation_alias="METER_STORE")
    log_level: str = Field(default="info", validation_alias="METER_LOG_LEVEL")
    # "json": one JSON object per line, with tenant and event ids as fields.
    log_format: str = Field(
        default="text", validation_alias="METER_LOG_FORMAT", pattern="^(text|json)$"
    )
    # Opt-in: export meter_tenant_balance for at most this many tenants (the lowest
    # balances); 0 exports none, since a tenant label is unbounded.
    metrics_tenant_balances: int = Field(
        default=0, validation_alias="METER_METRICS_TENANT_BALANCES", ge=0
    )

    def topic(self, logical: str) -> str:
        return f"{self.topic_prefix}{logical}"
