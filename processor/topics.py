"""The topics the processor reads and writes, and creating them before a worker starts."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from processor import settings as s

log = logging.getLogger(__name__)


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
    # Faust's table changelogs (named by Faust: app id, table, no prefix).
    accounts_changelog: str
    dedupe_changelog: str

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
            reroute=f"{internal}-reroute",
            timer=f"{internal}-recharge-timer",
            accounts_changelog=f"{cfg.app_id}-accounts-changelog",
            dedupe_changelog=f"{cfg.app_id}-dedupe-changelog",
        )

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.calls, self.conferencing, self.commands, self.reroute, self.timer)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.recharge_requests, self.ledger, self.alerts, self.rejected)

    @property
    def changelogs(self) -> tuple[str, ...]:
        return (self.accounts_changelog, self.dedupe_changelog)

    def all(self) -> tuple[str, ...]:
        return self.inputs + self.outputs + self.changelogs


class TopicLayoutError(RuntimeError):
    pass


async def ensure_topics(
    bootstrap: str,
    names: TopicNames,
    partitions: int,
    replication_factor: int,
    **client_options: object,
) -> int:
    """Create missing topics and return the partition count every input shares.

    Inputs that already exist decide the count (a deployment may have created them);
    if they disagree, a tenant's records could land on different partition numbers
    and its account would have two owners, so the worker refuses to start.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    try:
        await admin.start()
    except KafkaError as exc:
        # aiokafka only says "Unable to bootstrap"; name the cause (a wrong password,
        # a TLS failure, nothing listening) so the worker's exit message is actionable.
        from processor.kafka_options import diagnose

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
        missing = [t for t in names.all() if t not in existing]
        if missing:
            # The changelogs too, before the worker starts: Faust creates them itself,
            # but a worker that starts on inputs already holding records processes them
            # before its new changelogs are visible, and every table write then fails
            # (PartitionsMismatch). Compacted, as Faust would make them.
            compacted = {"cleanup.policy": "compact"}
            new = [
                NewTopic(
                    t,
                    count,
                    replication_factor,
                    topic_configs=compacted if t in names.changelogs else {},
                )
                for t in missing
            ]
            # Another worker may create them at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        return count
    finally:
        await admin.close()


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

    The handler sizes rejections and re-routes to fit them (processor/sizing.py). A
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
