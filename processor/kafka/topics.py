"""The topics the processor reads and writes, and creating them before a worker starts."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from processor.config import settings as s

log = logging.getLogger(__name__)

# Kafka's "kept forever" for retention.ms and retention.bytes.
FOREVER = -1


@dataclass(frozen=True, slots=True)
class TopicNames:
    calls: str
    conferencing: str
    commands: str
    recharge_requests: str
    ledger: str
    alerts: str
    rejected: str
    # Internal: records re-routed to their tenant's partition, and the recharge timer.
    reroute: str
    timer: str
    # Faust's table changelogs (named by Faust: app id, table, no prefix). The dedupe
    # table's is gone: its marks are only read, at an upgrade (processor/worker/marks_log.py).
    accounts_changelog: str
    dedupe_changelog: str
    # Added: each command's outcome (last, with a default, for older callers).
    command_results: str = s.COMMAND_RESULTS
    # Added: each tenant's notification settings for `meter notifier` (compacted).
    notification_settings: str = s.NOTIFICATION_SETTINGS
    # Added: the dedupe marks, one record per partition per round (processor/worker/
    # marks_log.py); by default named like the changelogs: `<app id>-dedupe-marks`.
    dedupe_marks: str = ""

    def __post_init__(self) -> None:
        if not self.dedupe_marks:
            app_id = self.accounts_changelog.removesuffix("-accounts-changelog")
            object.__setattr__(self, "dedupe_marks", f"{app_id}-dedupe-marks")

    @classmethod
    def from_settings(cls, cfg: s.Settings) -> TopicNames:
        internal = f"{cfg.topic_prefix}{cfg.app_id}"
        return cls(
            calls=cfg.topic(s.USAGE_CALLS),
            conferencing=cfg.topic(s.USAGE_CONFERENCING),
            commands=cfg.topic(s.COMMANDS),
            recharge_requests=cfg.topic(s.RECHARGE_REQUESTS),
            ledger=cfg.topic(s.LEDGER),
            alerts=cfg.topic(s.ALERTS),
            rejected=cfg.topic(s.REJECTED),
            notification_settings=cfg.topic(s.NOTIFICATION_SETTINGS),
            reroute=f"{internal}-reroute",
            timer=f"{internal}-recharge-timer",
            accounts_changelog=f"{cfg.app_id}-accounts-changelog",
            dedupe_changelog=f"{cfg.app_id}-dedupe-changelog",
            command_results=cfg.topic(s.COMMAND_RESULTS),
            dedupe_marks=f"{cfg.app_id}-dedupe-marks",
        )

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.calls, self.conferencing, self.commands, self.reroute, self.timer)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (
            self.recharge_requests,
            self.ledger,
            self.alerts,
            self.rejected,
            self.command_results,
            self.notification_settings,
        )

    @property
    def changelogs(self) -> tuple[str, ...]:
        """The compacted state topics the worker creates."""
        return (self.accounts_changelog,)

    @property
    def written(self) -> tuple[str, ...]:
        """Every topic the worker produces to."""
        return (*self.outputs, self.reroute, self.timer, *self.changelogs, self.dedupe_marks)

    def all(self) -> tuple[str, ...]:
        return self.inputs + self.outputs + self.changelogs + (self.dedupe_marks,)


class TopicLayoutError(RuntimeError):
    pass


# ---- retention ---------------------------------------------------------------------
#
# The ledger is the record of every balance change: kept forever unless the operator
# says otherwise (METER_LEDGER_RETENTION_MS). Rejected records wait there for a replay,
# and recharge requests are billing's work queue: both are kept at least as long as
# the inputs they come from, so neither is forgotten while its cause is still there.


def longest_retention(values: Iterable[int]) -> int | None:
    """The longest of some retention.ms values (-1, forever, is the longest); None
    for none."""
    longest: int | None = None
    for value in values:
        if value < 0:
            return FOREVER
        longest = value if longest is None else max(longest, value)
    return longest


def marks_retention_ms(dedupe_days: float, max_future_seconds: float) -> int:
    """How long the marks topic keeps a record: the dedupe window, plus how far ahead
    an event may be dated, plus a day; every mark in it has expired by then."""
    return int((dedupe_days * 86_400 + max_future_seconds + 86_400) * 1000)


def creation_configs(
    names: TopicNames,
    ledger_retention_ms: int,
    input_retention_ms: int | None,
    marks_retention: int | None = None,
) -> dict[str, dict[str, str]]:
    """The configs the worker gives each topic it creates (none: the broker's defaults).

    `input_retention_ms` is the longest retention.ms of the input topics (as the broker
    reports it, its default included), None when unknown. `marks_retention`: the
    marks topic's retention.ms (`marks_retention_ms`; None: the default settings').
    """
    configs: dict[str, dict[str, str]] = {
        # Compacted, as Faust would make them.
        t: {"cleanup.policy": "compact"}
        for t in names.changelogs
    }
    configs[names.ledger] = {"retention.ms": str(ledger_retention_ms)}
    # Not compacted: a record holds a round's marks, deleted once they all expired.
    if marks_retention is None:
        marks_retention = marks_retention_ms(7, 300)  # the settings' defaults
    configs[names.dedupe_marks] = {
        "cleanup.policy": "delete",
        "retention.ms": str(marks_retention),
    }
    # The latest settings per tenant, read whole by every notifier: kept by compaction.
    configs[names.notification_settings] = {"cleanup.policy": "compact"}
    if input_retention_ms is not None:
        for t in (names.rejected, names.recharge_requests):
            configs[t] = {"retention.ms": str(input_retention_ms)}
    return configs


def retention_warnings(names: TopicNames, retention: Mapping[str, Mapping[str, str]]) -> list[str]:
    """What to warn about in the existing topics' retention: a ledger that forgets, or
    a rejected or recharge-requests topic that forgets before the inputs do.

    `retention` maps a topic to its retention.ms and retention.bytes, as described.
    """
    warnings: list[str] = []
    ledger = retention.get(names.ledger)
    if ledger is not None:
        for key in ("retention.ms", "retention.bytes"):
            value = ledger.get(key)
            if value is not None and int(value) >= 0:
                warnings.append(
                    f"topic {names.ledger} has {key}={value}: ledger entries will be deleted "
                    f"(the ledger should be kept forever: set {key}=-1 on the topic; "
                    "METER_LEDGER_RETENTION_MS applies only when the worker creates it)"
                )
    inputs = longest_retention(
        int(retention[t]["retention.ms"])
        for t in (names.calls, names.conferencing, names.commands)
        if "retention.ms" in retention.get(t, {})
    )
    if inputs is not None:
        for t in (names.rejected, names.recharge_requests):
            value = retention.get(t, {}).get("retention.ms")
            if value is not None and longest_retention((int(value), inputs)) != int(value):
                warnings.append(
                    f"topic {t} has retention.ms={value}, shorter than its inputs' "
                    f"({inputs}): its records would be deleted while their causes are kept"
                )
    return warnings


async def _retention(
    admin: AIOKafkaAdminClient, topics: Iterable[str]
) -> dict[str, dict[str, str]]:
    """retention.ms and retention.bytes of each topic, as the broker applies them."""
    wanted = list(topics)
    if not wanted:
        return {}
    keys = {"retention.ms": None, "retention.bytes": None}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t, dict(keys)) for t in wanted]
    )
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _message, _type, name, entries in response.resources:
            if error_code == 0:
                found[name] = {e[0]: e[1] for e in entries if e[0] in keys and e[1] is not None}
    return found


async def ensure_topics(
    bootstrap: str,
    names: TopicNames,
    partitions: int,
    replication_factor: int,
    ledger_retention_ms: int = FOREVER,
    marks_retention: int | None = None,
    **client_options: object,
) -> int:
    """Create missing topics and return the partition count every input shares.

    Inputs that already exist decide the count (a deployment may have created them);
    if they disagree, a tenant's records could land on different partition numbers
    and its account would have two owners, so the worker refuses to start.

    Topics are created with explicit retention (`creation_configs`); an existing
    ledger that forgets, or outputs that forget before their inputs, are logged as
    warnings (`retention_warnings`).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    try:
        await admin.start()
    except KafkaError as exc:
        # aiokafka only says "Unable to bootstrap"; name the cause (a wrong password,
        # a TLS failure, nothing listening) so the worker's exit message is actionable.
        from processor.kafka.options import diagnose

        with contextlib.suppress(Exception):
            await admin.close()
        raise await diagnose(bootstrap, dict(client_options)) from exc
    try:
        existing = await _partition_counts(admin, names.all())
        input_counts = {existing[t] for t in names.inputs if t in existing}
        if len(input_counts) > 1:
            detail = ", ".join(f"{t}={existing[t]}" for t in names.inputs if t in existing)
            raise TopicLayoutError(
                f"input topics have different partition counts ({detail}); "
                "every input topic must have the same number of partitions"
            )
        count = input_counts.pop() if input_counts else partitions
        # The outputs that follow their inputs' retention come last, once the inputs
        # exist and the broker can say what their retention is.
        following = (names.rejected, names.recharge_requests)
        missing = [t for t in names.all() if t not in existing and t not in following]
        configs = creation_configs(names, ledger_retention_ms, None, marks_retention)
        # The changelogs too, before the worker starts: Faust creates them itself,
        # but a worker that starts on inputs already holding records processes them
        # before its new changelogs are visible, and every table write then fails
        # (PartitionsMismatch).
        await _create(admin, missing, count, replication_factor, configs)
        retention = await _retention(
            admin, (names.calls, names.conferencing, names.commands, names.ledger, *following)
        )
        inputs = longest_retention(
            int(retention[t]["retention.ms"])
            for t in (names.calls, names.conferencing, names.commands)
            if "retention.ms" in retention.get(t, {})
        )
        configs = creation_configs(names, ledger_retention_ms, inputs, marks_retention)
        late = [t for t in following if t not in existing]
        await _create(admin, late, count, replication_factor, configs)
        for warning in retention_warnings(names, retention):
            # Before the worker's logging is set up: Python prints it to stderr as is.
            log.warning("warning: %s", warning)
        return count
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient,
    topics: list[str],
    count: int,
    replication_factor: int,
    configs: Mapping[str, Mapping[str, str]],
) -> None:
    if not topics:
        return
    new = [
        NewTopic(t, count, replication_factor, topic_configs=dict(configs.get(t, {})))
        for t in topics
    ]
    # Another worker may create them at the same moment.
    with contextlib.suppress(TopicAlreadyExistsError):
        await admin.create_topics(new)


async def _partition_counts(admin: AIOKafkaAdminClient, topics: tuple[str, ...]) -> dict[str, int]:
    # Ask for all topics first: a metadata request that names a missing topic makes a
    # broker with auto-creation on create it, with its default partition count.
    present = set(await admin.list_topics())
    wanted = [t for t in topics if t in present]
    if not wanted:
        return {}
    described = await admin.describe_topics(wanted)
    counts: dict[str, int] = {}
    for item in described:
        if item.get("error_code", 0) == 0 and item.get("partitions"):
            counts[item["topic"]] = len(item["partitions"])
    return counts


async def max_message_bytes(
    bootstrap: str, topics: tuple[str, ...], **client_options: object
) -> dict[str, int]:
    """Each topic's `max.message.bytes`, as the broker describes it.

    The handler sizes rejections and re-routes to fit them (processor/worker/sizing.py). A
    topic the broker does not describe is left out, and taken at Kafka's default.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    limits: dict[str, int] = {}
    try:
        await admin.start()
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None})
                for t in topics
            ]
        )
        for response in responses:
            for error_code, _msg, _type, name, entries in (r[:5] for r in response.resources):
                for entry in entries if error_code == 0 else ():
                    if entry[0] == "max.message.bytes" and str(entry[1]).isdigit():
                        limits[name] = int(entry[1])
    except Exception as exc:  # a lookup that fails must not stop the worker
        log.warning("could not describe the topics' max.message.bytes (%r); assuming 1 MiB", exc)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return limits
