"""What a failed reconciliation in a fault test needs to say to be acted on: which
input records never reached a balance, where the group's offsets stand, and the
changelog history of a few mismatched accounts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from processor.ops.reconcile import read_topic
from processor.worker.codec import load_stored
from tests.integration.harness import Deployment


async def input_progress(d: Deployment) -> dict[str, tuple[int | None, int]]:
    """Per input partition: the group's committed offset and the end offset."""
    topics = [d.topic(t) for t in ("credits.commands", "usage.calls", "usage.conferencing")]
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=d.bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(d.app_id)
        tps = [TopicPartition(t, p) for t in topics for p in range(d.partitions)]
        ends = await consumer.end_offsets(tps)
        return {
            f"{tp.topic.removeprefix(d.prefix)}:{tp.partition}": (
                committed[tp].offset if tp in committed else None,
                ends[tp],
            )
            for tp in tps
        }
    finally:
        await consumer.stop()
        await admin.close()


async def never_applied(d: Deployment) -> dict[str, list[int]]:
    """Input records that change a balance but have no ledger entry, by partition."""
    causes = {
        (e["cause_topic"], e["cause_id"])
        for raw in await read_topic(d.bootstrap, d.topic("credits.ledger"))
        if raw.value
        for e in [json.loads(raw.value)]
    }
    seen: set[tuple[str, str]] = set()
    missing: dict[str, list[int]] = {}
    for logical in ("credits.commands", "usage.calls", "usage.conferencing"):
        for raw in await read_topic(d.bootstrap, d.topic(logical)):
            body = json.loads(raw.value or b"{}")
            if body.get("type") == "auto_recharge_configured" or body.get("duration_seconds") == 0:
                continue  # changes no balance, writes no entry
            cause = (d.topic(logical), body.get("event_id") or body["command_id"])
            if cause in seen:
                continue  # a re-sent duplicate
            seen.add(cause)
            if cause not in causes:
                missing.setdefault(f"{logical}:{raw.partition}", []).append(raw.offset)
    return missing


def spans(offsets: list[int]) -> str:
    return f"{len(offsets)} records, offsets {offsets[0]}..{offsets[-1]}"


async def changelog_audit(d: Deployment) -> tuple[int, int, int]:
    """Account writes in the changelog: how many, how many came after a newer one
    (late writes, e.g. a zombie's, that recovery must ignore), and how many tie the
    newest write's (epoch, generation, seq) with other contents (recovery cannot tell
    those apart)."""
    newest: dict[str, tuple[tuple[int, int, int], Any]] = {}
    writes = late = conflicting = 0
    for raw in await read_topic(d.bootstrap, f"{d.app_id}-accounts-changelog"):
        if raw.value is None:
            continue
        stored = load_stored(raw.value)
        writes += 1
        tenant = stored.account.tenant_id
        contents = (stored.account.balance, dict(stored.applied))
        order, seen = newest.get(tenant, ((-1, -1, -1), None))
        if stored.order < order:
            late += 1
        elif stored.order == order and contents != seen:
            conflicting += 1
        else:
            newest[tenant] = (stored.order, contents)
    return writes, late, conflicting


async def account_history(d: Deployment, tenants: Iterable[str]) -> str:
    """Every changelog write of these tenants' accounts, in log order."""
    wanted = set(tenants)
    lines = []
    for raw in await read_topic(d.bootstrap, f"{d.app_id}-accounts-changelog"):
        if raw.value is None:
            continue
        stored = load_stored(raw.value)
        if stored.account.tenant_id in wanted:
            applied = {tp.removeprefix(d.prefix): o for tp, o in stored.applied.items()}
            lines.append(
                f"{stored.account.tenant_id} changelog p{raw.partition}@{raw.offset}: "
                f"(epoch, generation, seq) {stored.order} balance {stored.account.balance} "
                f"applied {applied}"
            )
    return "\n".join(lines)


async def explained(d: Deployment, exc: AssertionError) -> AssertionError:
    """The reconciliation's failure, with the changelog history of a few tenants."""
    bad = [
        line.split()[1].rstrip(":") for line in str(exc).splitlines() if line.startswith("MISMATCH")
    ][:3]
    writes, late, conflicting = await changelog_audit(d)
    missing = {tp: spans(o) for tp, o in sorted((await never_applied(d)).items())}
    return AssertionError(
        f"{exc}\ninput records never applied (no ledger entry): {missing}\n"
        f"committed/end offsets per input partition: {await input_progress(d)}\n"
        f"account changelog: {writes} writes, {late} late (lower seq than one "
        f"before), {conflicting} with the newest order but other contents\n"
        f"{await account_history(d, bad)}"
    )
