"""Typed settings, read once from the environment (names fixed by CONTRACT.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Logical topic names from the contract; a deployment prefixes all of them.
USAGE_CALLS = "usage.calls"
USAGE_CONFERENCING = "usage.conferencing"
COMMANDS = "credits.commands"
RECHARGE_REQUESTS = "credits.recharge-requests"
LEDGER = "credits.ledger"
ALERTS = "credits.alerts"
REJECTED = "credits.rejected"
# Added: what became of each command (processor/worker/intake.py, docs/contract.md).
COMMAND_RESULTS = "credits.command-results"
# Added: each tenant's notification settings for `meter notifier` (compacted).
NOTIFICATION_SETTINGS = "credits.notification-settings"
# What METER_DATABASE_URL may start with (processor/sink/store.py adds the driver).
DATABASE_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://", "sqlite")


# The event loops a worker can run on (METER_EVENT_LOOP).
EventLoop = Literal["uvloop", "asyncio"]
# Whether a worker runs its per-record path compiled (METER_COMPILED,
# processor/ops/compiled.py).
Compiled = Literal["auto", "off", "require"]


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
    # retention.ms of credits.ledger when a worker creates it; -1 keeps it forever.
    ledger_retention_ms: int = Field(
        default=-1, validation_alias="METER_LEDGER_RETENTION_MS", ge=-1
    )
    # How far ahead of the worker's clock an event's occurred_at may be; further ahead
    # it is rejected (invalid_event), and a dedupe mark never outlives now + the window
    # + this.
    max_future_seconds: float = Field(
        default=300, validation_alias="METER_MAX_FUTURE_SECONDS", ge=0
    )
    # Funds expire this many days after the occurred_at of the credit that brought them
    # (fractions allowed; 0: never), and funds_expiring is published this many days
    # before a lot with money left expires.
    funds_expire_days: float = Field(default=365, validation_alias="METER_FUNDS_EXPIRE_DAYS", ge=0)
    funds_expiring_notice_days: float = Field(
        default=30, validation_alias="METER_FUNDS_EXPIRING_NOTICE_DAYS", ge=0
    )
    # How often the recharge timer looks for timed-out or retry-due requests.
    timer_interval_seconds: float = Field(
        default=5.0, validation_alias="METER_TIMER_INTERVAL_SECONDS", gt=0
    )
    # How long the group waits for a silent worker before giving its partitions away:
    # the time a crashed worker's tenants stand still.
    session_timeout_seconds: float = Field(
        default=30.0, validation_alias="METER_SESSION_TIMEOUT_SECONDS", gt=0
    )
    # How many staged records (or fetched ones waiting to be staged) make the fetch
    # loop and the agents wait for the flusher to take them: the largest round a
    # worker that is behind sends. Larger rounds are fewer transactions per record
    # (docs/performance.md, "Rounds as large as a drain needs").
    batch_max: int = Field(default=6000, validation_alias="METER_BATCH_MAX", ge=1)
    # The same wait at this many bytes of staged input records (key and value), so
    # that large records, hostile ones included, hold a bounded amount of memory
    # whatever their count.
    batch_max_bytes: int = Field(
        default=16 * 1024 * 1024, validation_alias="METER_BATCH_MAX_BYTES", ge=1
    )
    # The worker's event loop: uvloop (libuv) unless asyncio's own is asked for, e.g.
    # to rule the loop out when chasing a problem.
    event_loop: EventLoop = Field(default="uvloop", validation_alias="METER_EVENT_LOOP")
    # The compiled build of the per-record path (`make setup` makes it): "auto" runs it
    # when it is current, "off" never, "require" refuses to start without it.
    compiled: Compiled = Field(default="auto", validation_alias="METER_COMPILED")
    # Warm copies each worker keeps of the tables of partitions it does not own, for a
    # faster takeover. Off by default, as in Kafka Streams: a standby reads every
    # changelog record the other workers write, which cost a pair of workers on one
    # host 30-40% of their drain (docs/performance.md, "Standby replicas"); without
    # one, a takeover restores the partitions from their changelogs.
    standby_replicas: int = Field(default=0, validation_alias="METER_STANDBY_REPLICAS", ge=0)
    # Faust store URL; memory:// rebuilds state from the changelog on start.
    store: str = Field(default="memory://", validation_alias="METER_STORE")
    # Any case ("INFO" too); kept lower-case.
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", validation_alias="METER_LOG_LEVEL"
    )
    # "json": one JSON object per line, with tenant and event ids as fields.
    log_format: Literal["text", "json"] = Field(default="text", validation_alias="METER_LOG_FORMAT")
    # Opt-in: export meter_tenant_balance for at most this many tenants (the lowest
    # balances); 0 exports none, since a tenant label is unbounded.
    metrics_tenant_balances: int = Field(
        default=0, validation_alias="METER_METRICS_TENANT_BALANCES", ge=0
    )
    # The ledger sink (`meter ledger-sink`, processor/sink/): its database (unset:
    # SQLite in METER_DATA_DIR; postgresql://user:password@host/db for PostgreSQL) and
    # the port of its query API. SecretStr: the URL may hold a password.
    database_url: SecretStr | None = Field(default=None, validation_alias="METER_DATABASE_URL")
    sink_port: int = Field(default=6070, validation_alias="METER_SINK_PORT", ge=0, le=65535)
    # The admin console (`meter console`, processor/console/): its port, and the worker
    # API and ledger sink it calls with the signed-in user's token (unset: this host's
    # METER_WEB_PORT and METER_SINK_PORT).
    console_port: int = Field(default=6080, validation_alias="METER_CONSOLE_PORT", ge=0, le=65535)
    api_url: str | None = Field(default=None, validation_alias="METER_API_URL")
    # Added: where a worker forwards GET /commands/{command_id}, and where the console
    # reads the history (unset: the local sink, http://127.0.0.1:METER_SINK_PORT).
    sink_url: str | None = Field(default=None, validation_alias="METER_SINK_URL")

    # Added: Fernet key(s) sealing webhook secrets (processor/config/sealing.py): the admin
    # API seals with it, `meter notifier` opens with it. Comma-separated to rotate.
    secrets_key: SecretStr | None = Field(default=None, validation_alias="METER_SECRETS_KEY")
    # Added: `meter notifier` (processor/notifier/): its port (/metrics, /health, /ready), the
    # SMTP server it sends through, and how it retries webhooks.
    notifier_port: int = Field(default=6071, validation_alias="METER_NOTIFIER_PORT", ge=0, le=65535)
    smtp_host: str | None = Field(default=None, validation_alias="METER_SMTP_HOST")
    smtp_port: int = Field(default=587, validation_alias="METER_SMTP_PORT", ge=1, le=65535)
    smtp_starttls: bool = Field(default=True, validation_alias="METER_SMTP_STARTTLS")
    smtp_username: str | None = Field(default=None, validation_alias="METER_SMTP_USERNAME")
    smtp_password: SecretStr | None = Field(default=None, validation_alias="METER_SMTP_PASSWORD")
    smtp_from: str = Field(
        default="credits-meter <no-reply@localhost>", validation_alias="METER_SMTP_FROM"
    )
    # Added: the console's address as tenants' admins reach it; each email links to the
    # tenant's page there. Unset: emails carry no link.
    console_url: str | None = Field(default=None, validation_alias="METER_CONSOLE_URL")
    # Each try of a webhook or an email gives up after this long.
    notify_timeout_seconds: float = Field(
        default=10.0, validation_alias="METER_NOTIFY_TIMEOUT_SECONDS", gt=0
    )
    # The first retry waits this long, each next one twice as long (at most an hour),
    # and a delivery is given up this long after its alert.
    notify_backoff_seconds: float = Field(
        default=5.0, validation_alias="METER_NOTIFY_BACKOFF_SECONDS", gt=0
    )
    notify_give_up_hours: float = Field(
        default=24.0, validation_alias="METER_NOTIFY_GIVE_UP_HOURS", gt=0
    )
    # Webhooks to loopback and private addresses are refused unless this is set (local
    # demos and tests): a tenant's URL must not reach the deployment's own services.
    notify_allow_private_webhooks: bool = Field(
        default=False, validation_alias="METER_NOTIFY_ALLOW_PRIVATE_WEBHOOKS"
    )

    # The admin API's bearer token (processor/http/admin.py); unset disables the admin
    # endpoints. SecretStr: never printed by a repr or a settings dump.
    admin_token: SecretStr | None = Field(default=None, validation_alias="METER_ADMIN_TOKEN")
    # Access per tenant (processor/http/auth.py). `token`: the read API is open and the
    # admin API takes METER_ADMIN_TOKEN (as before); `jwt`: every tenant endpoint
    # takes a JSON Web Token verified against METER_AUTH_JWKS (a file or an http(s)
    # URL), with this issuer and audience, and METER_ADMIN_TOKEN still works.
    auth: Literal["token", "jwt"] = Field(default="token", validation_alias="METER_AUTH")
    auth_jwks: str | None = Field(default=None, validation_alias="METER_AUTH_JWKS")
    auth_issuer: str | None = Field(default=None, validation_alias="METER_AUTH_ISSUER")
    auth_audience: str | None = Field(default=None, validation_alias="METER_AUTH_AUDIENCE")
    # The bearer the `meter` CLI sends to a worker's read API (`meter account`,
    # `meter reconcile --worker-url`) under METER_AUTH=jwt; else METER_ADMIN_TOKEN's.
    api_token: SecretStr | None = Field(default=None, validation_alias="METER_API_TOKEN")
    auth_leeway_seconds: int = Field(
        default=30, validation_alias="METER_AUTH_LEEWAY_SECONDS", ge=0, le=300
    )
    # Secure Kafka (processor/kafka/options.py turns these into client options).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SASL_PASSWORD"
    )
    kafka_ssl_cafile: Path | None = Field(default=None, validation_alias="KAFKA_SSL_CAFILE")
    kafka_ssl_certfile: Path | None = Field(default=None, validation_alias="KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: Path | None = Field(default=None, validation_alias="KAFKA_SSL_KEYFILE")
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SSL_KEY_PASSWORD"
    )

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        url = "" if value is None else value.get_secret_value()
        if url and not url.lower().startswith(DATABASE_SCHEMES):
            raise ValueError("a postgresql:// (or sqlite:///) URL")
        return value

    @field_validator("console_url")
    @classmethod
    def _console_address(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("an http(s):// URL")
        if parts.query or parts.fragment:
            raise ValueError("an http(s):// URL without a query or fragment")
        return value

    @field_validator("secrets_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from processor.config.sealing import Sealer, SealError

            try:
                Sealer(value)
            except SealError:
                # Never the value itself: it is the key.
                raise ValueError(
                    "Fernet keys (32 url-safe base64 bytes each), comma-separated"
                ) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def topic(self, logical: str) -> str:
        return f"{self.topic_prefix}{logical}"


# What a setting must be, in words, by pydantic's error type.
_BOUNDS: dict[str, str] = {
    "greater_than": "greater than {gt}",
    "greater_than_equal": "at least {ge}",
    "less_than": "less than {lt}",
    "less_than_equal": "at most {le}",
}
_KINDS: dict[str, str] = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "bool_parsing": "true or false",
    "string_too_short": "at least {min_length} character(s) long",
}
_SECRETS: frozenset[str] = frozenset(
    str(f.validation_alias)
    for f in Settings.model_fields.values()
    if "SecretStr" in str(f.annotation)
)


def settings_problems(exc: ValidationError) -> list[str]:
    """One sentence per refused setting: the variable, its value, what is allowed.

    For `Settings()`'s ValidationError (the CLI prints these instead of a traceback);
    a secret's value is never repeated.
    """
    lines = []
    for error in exc.errors(include_url=False):
        variable = ".".join(str(part) for part in error["loc"]) or "(settings)"
        ctx = error.get("ctx") or {}
        kind = error["type"]
        if kind == "literal_error":
            allowed = str(ctx["expected"])
        elif kind in _BOUNDS:
            allowed = _BOUNDS[kind].format(**ctx)
        elif kind in _KINDS:
            allowed = _KINDS[kind].format(**ctx)
        else:
            allowed = error["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        value = error.get("input")
        if variable in _SECRETS:
            shown = "(hidden)"
        else:
            text = repr(value)
            shown = text if len(text) <= 80 else f"{text[:77]}..."
        lines.append(f"{variable}={shown} is not allowed: it must be {allowed}")
    return lines
