"""A worker refuses to start on state it would misread (issue 16, items 9 and 10),
with real `meter worker` processes on the real broker."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.core.rate_card_parser import example_rate_card_path
from tests.integration.harness import Client, Deployment, Worker, eventually
from tests.integration.test_pipeline import account, call, funds

pytestmark = pytest.mark.integration


@pytest.fixture
async def deploy(kafka: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Deployment]]:
    workers: list[Worker] = []

    def factory(**kw: Any) -> Deployment:
        d = Deployment(
            kafka.bootstrap, tmp_path / f"d{len(workers)}-{random.randrange(10**6)}", **kw
        )
        d.root.mkdir(parents=True)
        d.workers = workers
        return d

    yield factory
    for w in workers:
        w.stop()
        print(f"--- worker {w.index} of {w.deployment.app_id} ---\n{w.log_tail(80)}")


async def exit_code(worker: Worker, timeout: float = 90.0) -> int:
    async def exited() -> int | str:
        assert worker.proc is not None
        code = worker.proc.poll()
        return "not yet" if code is None else f"exit {code}"

    result = await eventually(exited, timeout, what=f"worker {worker.index} to exit")
    return int(result.split()[1])


async def test_a_worker_restarted_with_a_card_in_another_currency_exits_2(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    d = deploy(partitions=1)
    first = Worker(d, 0).start()
    d.workers.append(first)
    await first.wait_ready()
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant="acme", amount="5.00"))

        async def funded() -> bool:
            acct = await account(first, "acme")
            return acct is not None and acct["balance"] == "5.0000"

        await eventually(funded, what="the funds applied")
    first.stop()

    euro = tmp_path / "euro-card.yaml"
    card = example_rate_card_path().read_text()
    assert "currency: USD" in card
    euro.write_text(card.replace("currency: USD", "currency: EUR"))
    d.env_extra["METER_RATE_CARD"] = str(euro)
    second = Worker(d, 1).start()
    d.workers.append(second)
    assert await exit_code(second) == 2
    log = second.log_tail(200)
    assert "meter worker: refusing to start: account 'acme' is kept in USD" in log
    assert "the rate card is in EUR" in log


async def test_an_input_deleted_and_recreated_under_its_accounts_is_refused(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(partitions=1)
    first = Worker(d, 0).start()
    d.workers.append(first)
    await first.wait_ready()
    async with Client(d) as c:
        await c.send("credits.commands", funds("c1", tenant="acme", amount="5.00"))
        for i in range(3):
            await c.send("usage.calls", call(f"e{i}", tenant="acme"))

        async def charged() -> bool:
            acct = await account(first, "acme")
            return acct is not None and acct["balance"] == "4.6040"  # 3 x 0.1320

        await eventually(charged, what="the calls applied")
    first.stop()

    calls = d.topic("usage.calls")
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([calls])

        async def gone() -> bool:
            return calls not in await admin.list_topics()

        await eventually(gone, what="the calls topic deleted")

        async def recreated() -> bool:
            await admin.create_topics([NewTopic(calls, 1, 1)])
            return calls in await admin.list_topics()

        await eventually(recreated, what="the calls topic re-created")
    finally:
        await admin.close()
    async with Client(d) as c:
        await c.send("usage.calls", call("after", tenant="acme"))  # offset 0 of the new topic

    second = Worker(d, 1).start()
    d.workers.append(second)
    assert await exit_code(second) == 2
    log = second.log_tail(200)
    assert f"meter worker: refusing to start: input {calls}:0 ends at offset 1" in log
    assert "applied its records up to offset 2" in log
