"""Nothing is forgotten too soon (issue 16, item 10), on the real broker: the topics a
worker creates, its warning about a ledger that forgets, and `meter reconcile` on
inputs that retention has already removed."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from processor.config.settings import Settings
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.kafka.topics import TopicNames
from processor.ops.reconcile import reconcile
from tests.integration.harness import Client, Deployment, eventually
from tests.integration.test_pipeline import account, call, deploy, funds, start_workers

__all__ = ["deploy"]  # the fixture, shared with test_pipeline


async def retention_ms(bootstrap: str, topics: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {"retention.ms": None}) for t in topics]
        )
        return {res[3]: e[1] for r in responses for res in r.resources for e in res[4]}
    finally:
        await admin.close()


def names(d: Deployment) -> TopicNames:
    return TopicNames.from_settings(Settings(METER_TOPIC_PREFIX=d.prefix, METER_APP_ID=d.app_id))


async def test_a_worker_creates_outputs_with_explicit_retention(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(partitions=1)
    await start_workers(d, 1)
    n = names(d)
    found = await retention_ms(d.bootstrap, [n.calls, n.ledger, n.rejected, n.recharge_requests])
    assert found[n.ledger] == "-1"
    # the broker's default for the inputs, which the worker created alike
    assert found[n.rejected] == found[n.recharge_requests] == found[n.calls] != "-1"


async def test_a_worker_warns_when_the_ledger_forgets(deploy: Callable[..., Deployment]) -> None:
    d = deploy(partitions=1)
    n = names(d)
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:
        day = str(24 * 3600 * 1000)
        await admin.create_topics([NewTopic(n.ledger, 1, 1, topic_configs={"retention.ms": day})])
    finally:
        await admin.close()
    [w] = await start_workers(d, 1)
    assert f"warning: topic {n.ledger} has retention.ms={day}" in w.log_tail(400)


async def test_reconcile_names_inputs_removed_by_retention_instead_of_mismatches(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(partitions=1)
    [w] = await start_workers(d, 1)
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant="acme", amount="5.00"))
        for i in range(3):
            await c.send("usage.calls", call(f"e{i}", tenant="acme"))

        async def charged() -> bool:
            acct = await account(w, "acme")
            return acct is not None and acct["balance"] == "4.6040"

        await eventually(charged, what="the calls applied")
    n = names(d)
    card = load_rate_card(example_rate_card_path())
    before = await reconcile(d.bootstrap, n, card, w.url)
    assert before.discrepancies == 0 and before.removed == []

    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:  # what retention does to the oldest segment, done at once
        await admin.delete_records({TopicPartition(n.calls, 0): RecordsToDelete(2)})
    finally:
        await admin.close()
    after = await reconcile(d.bootstrap, n, card, w.url)
    text = after.render()
    assert after.removed == [f"{n.calls} partition 0: offsets 0 to 1 already deleted (retention)"]
    assert "not checked against the inputs" in text
    # without the note, the two lost calls were mismatches: inputs imply 4.8680
    assert after.discrepancies == 0, text
    assert "MISMATCH" not in text
