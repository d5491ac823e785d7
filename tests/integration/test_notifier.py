"""`meter notifier` on the real broker, with a real worker, a real SMTP server (aiosmtpd)
and a real webhook receiver (aiohttp) that verifies every Standard Webhooks signature,
fails the first three tries of each webhook-id and hangs once past the timeout.

Tenants get their settings through the worker's admin API (the secret sealed there);
the worker's alerts, and funds_expiring / funds_expired alerts built here (the shape
wip-a publishes), are delivered by a notifier that is `kill -9`ed while a delivery
hangs and then restarted: every alert is delivered by webhook and by email, and
whatever was sent twice carries the same webhook-id / Message-ID and body.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processor.config.sealing import Sealer
from processor.dev.catchers import MailCatcher, WebhookReceiver
from processor.dev.kafka_local import free_port
from processor.notifier.channels import message_id
from processor.notifier.store import OutboxStore
from tests.integration.harness import (
    METER,
    Client,
    Deployment,
    InFlight,
    Worker,
    eventually,
    now_rfc3339,
    running,
)
from tests.integration.test_faults_more import account_where
from tests.support.postgres import LocalPostgres

# The outbox's and delivery loop's tests, collected here again on a real PostgreSQL
# server (`store` below), where several notifiers share one outbox.
from tests.unit.test_notifier import (  # noqa: F401
    delivering,
    mail,
    test_a_delivery_is_given_up_after_the_give_up_time,
    test_a_row_leased_by_a_dead_notifier_is_sent_again_with_the_same_ids,
    test_rows_follow_the_settings_and_skip_what_nobody_asked_for,
    test_two_notifiers_sharing_one_outbox_send_each_delivery_once,
    test_webhooks_are_signed_retried_through_failures_and_a_hang_then_never_resent,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres() -> Any:
    server = LocalPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(postgres: LocalPostgres) -> AsyncIterator[OutboxStore]:
    from processor.sink.store import database_url

    s = await OutboxStore.open(database_url(postgres.create_database(), Path(".")))
    yield s
    await s.close()


TOKEN = "it-admin-token"
KEY = Sealer.new_key()
TENANTS = ("n-acme", "n-globex", "n-initech")
NOTIFIED = {
    "low_balance",
    "exhausted",
    "restored",
    "recharge_succeeded",
    "recharge_failed",
    "funds_expiring",
    "funds_expired",
}


def secret_for(tenant: str) -> str:
    return "whsec_" + base64.b64encode(tenant.encode().ljust(32, b"*")).decode()


class NotifierProcess:
    def __init__(self, d: Deployment, catcher: MailCatcher) -> None:
        self.port = free_port()
        self.log_path = d.root / "notifier.log"
        self.env = dict(os.environ)
        self.env.update(
            KAFKA_BOOTSTRAP_SERVERS=d.bootstrap,
            METER_APP_ID=d.app_id,
            METER_TOPIC_PREFIX=d.prefix,
            METER_DATA_DIR=str(d.root / "notifier"),
            METER_NOTIFIER_PORT=str(self.port),
            METER_WEB_HOST="127.0.0.1",
            METER_SECRETS_KEY=KEY,
            METER_SMTP_HOST="127.0.0.1",
            METER_SMTP_PORT=str(catcher.port),
            METER_SMTP_STARTTLS="false",
            METER_NOTIFY_TIMEOUT_SECONDS="1",
            METER_NOTIFY_BACKOFF_SECONDS="0.2",
            METER_NOTIFY_ALLOW_PRIVATE_WEBHOOKS="true",
        )
        self.env.pop("METER_DATABASE_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NotifierProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [METER, "notifier"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"notifier exited:\n{self.log_tail()}")
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{self.port}/ready") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, 60, what="notifier ready")

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as resp,
        ):
            return await resp.text()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
async def worker(kafka: Any, tmp_path: Path) -> AsyncIterator[Worker]:
    d = Deployment(
        kafka.bootstrap,
        tmp_path,
        partitions=2,
        env_extra={"METER_ADMIN_TOKEN": TOKEN, "METER_SECRETS_KEY": KEY},
    )
    async with running(d) as w:
        yield w


async def send_settings(
    w: Worker, tenant: str, body: dict[str, Any], method: str = "PUT"
) -> tuple[int, Any]:
    """PUT (the whole settings) or PATCH (some) of the tenant's notifications."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {TOKEN}",
        "Idempotency-Key": f"settings-{tenant}",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{w.url}/tenants/{tenant}/notifications",
            data=json.dumps(body),
            headers=headers,
        ) as resp,
    ):
        return resp.status, json.loads(await resp.read())


def built_alert(tenant: str, kind: str, n: int, **fields: Any) -> dict[str, Any]:
    """A funds_expiring / funds_expired alert as wip-a publishes them."""
    return {
        "type": "balance_alert",
        "alert_id": f"built-{kind}-{tenant}-{n}",
        "tenant_id": tenant,
        "alert": kind,
        "balance": "1.0000",
        "currency": "USD",
        "occurred_at": now_rfc3339(),
        **fields,
    }


async def test_every_alert_reaches_people_through_failures_a_hang_and_a_kill(
    worker: Worker,
) -> None:
    d = worker.deployment
    smtp = MailCatcher().start()
    receiver = await WebhookReceiver(
        {t: secret_for(t) for t in TENANTS}, fail_first=3, hang_once_seconds=30
    ).start()
    notifier = NotifierProcess(d, smtp)
    try:
        for tenant in TENANTS:
            status, body = await send_settings(
                worker,
                tenant,
                {
                    "emails": [f"admin@{tenant}.example"],
                    "webhook_url": receiver.url(tenant),
                    "webhook_secret": secret_for(tenant),
                },
            )
            assert status == 202, body
            assert body["command_id"] == f"notifications:settings-{tenant}"

        async def shown() -> Any:
            status, view = await worker.get(f"/tenants/{TENANTS[0]}/account")
            return status == 200 and view["notifications"]

        # The settings reach the account (the worker applies them before any funds).
        async with Client(d) as client:
            await client.send(
                "credits.commands",
                {
                    "type": "funds_added",
                    "command_id": "warm-up",
                    "tenant_id": TENANTS[0],
                    "occurred_at": now_rfc3339(),
                    "amount": "0.01",
                    "currency": "USD",
                    "source": "manual",
                },
            )
            view = await eventually(shown, what="settings in the account view")
            assert view["webhook_url"] == receiver.url(TENANTS[0])
            assert "webhook_secret" not in json.dumps(view)

            notifier.start()
            await notifier.wait_ready()
            # restored (funds), then exhausted (a long call) for every tenant, and the
            # alerts of funds expiry, built as wip-a publishes them.
            for tenant in TENANTS:
                await client.send(
                    "credits.commands",
                    {
                        "type": "funds_added",
                        "command_id": f"funds-{tenant}",
                        "tenant_id": tenant,
                        "occurred_at": now_rfc3339(),
                        "amount": "5.00",
                        "currency": "USD",
                        "source": "manual",
                    },
                )
            # Two topics have no order between them: the calls go once the funds are in,
            # so that each call has funds to exhaust, whatever the worker's fetches.
            for tenant in TENANTS:
                await account_where(
                    worker,
                    tenant,
                    lambda v: Decimal(v["balance"]) >= Decimal("5.00"),
                    f"{tenant}'s funds applied",
                )
            for tenant in TENANTS:
                await client.send(
                    "usage.calls",
                    {
                        "event_id": f"call-{tenant}",
                        "tenant_id": tenant,
                        "occurred_at": now_rfc3339(),
                        "call_id": f"c-{tenant}",
                        "call_type": "outbound",
                        "source_number": "+14155550100",
                        "destination_number": "+14155550199",
                        "duration_seconds": 86400,
                    },
                )
                await client.send(
                    "credits.alerts",
                    built_alert(
                        tenant,
                        "funds_expiring",
                        1,
                        amount="2.0000",
                        expires_at="2027-01-01T00:00:00Z",
                    ),
                )
                await client.send(
                    "credits.alerts",
                    built_alert(tenant, "funds_expired", 1, amount="0.5000", entry_id="e-1"),
                )

            # Kill the notifier while a delivery hangs in the receiver.
            await eventually(lambda: _value(receiver.hung), 60, what="a hanging delivery")
            # The evidence that the kill lands mid-load: the alerts to notify of so far
            # (read just before it), and the ones delivered (the notifier is dead: no
            # more) against every alert the test makes (known at the end).
            alerts_at_kill = len(await notified_ids(client))
            notifier.kill()
            sent_before_kill = len(receiver.delivered())
            delivered_at_kill = len({h.webhook_id for h in receiver.delivered()})
            notifier.start()
            await notifier.wait_ready()

            # Auto-recharge for one (now exhausted) tenant: billing pays the request it
            # asks for, and the worker raises recharge_succeeded.
            await client.send(
                "credits.commands",
                {
                    "type": "auto_recharge_configured",
                    "command_id": "ar-1",
                    "tenant_id": TENANTS[0],
                    "occurred_at": now_rfc3339(),
                    "enabled": True,
                    "recharge_amount": "50.00",
                    "trigger_balance": "10.00",
                },
            )

            async def request() -> Any:
                found = [
                    r
                    for r in await client.read_all("credits.recharge-requests")
                    if r["tenant_id"] == TENANTS[0]
                ]
                return found and found[0]

            asked = await eventually(request, what="the recharge request")
            await client.send(
                "credits.commands",
                {
                    "type": "funds_added",
                    "command_id": "billing-1",
                    "tenant_id": TENANTS[0],
                    "occurred_at": now_rfc3339(),
                    "amount": asked["amount"],
                    "currency": "USD",
                    "source": "auto_recharge",
                    "recharge_request_id": asked["request_id"],
                },
            )

            async def succeeded() -> bool:
                alerts = await client.read_all("credits.alerts")
                return any(a["alert"] == "recharge_succeeded" for a in alerts)

            await eventually(succeeded, what="the recharge_succeeded alert")

            expected = await notified_ids(client)
            killed = InFlight(
                "notifier killed",
                done=delivered_at_kill,
                sent=alerts_at_kill,
                total=len(expected),
            ).check()
            kinds = {a["alert"] for a in await client.read_all("credits.alerts")}
            assert {
                "restored",
                "exhausted",
                "recharge_succeeded",
                "funds_expiring",
                "funds_expired",
            } <= kinds
            assert len(expected) >= 4 * len(TENANTS)

            async def all_delivered() -> Any:
                hooks = {h.webhook_id for h in receiver.delivered()}
                mails = {m["Message-ID"] for m in smtp.received()}
                done = expected <= hooks and {message_id(i) for i in expected} <= mails
                return done or f"not yet: {len(hooks)} hooks, {len(mails)} mails"

            try:
                await eventually(all_delivered, 120, interval=0.5, what="every notification")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- notifier ---\n{notifier.log_tail()}") from None

        # Nothing lost: every alert by webhook and by email, nothing else sent.
        delivered = receiver.delivered()
        assert {h.webhook_id for h in delivered} == expected
        assert {m["Message-ID"] for m in smtp.received()} == {message_id(i) for i in expected}
        # Every try was signed with the tenant's secret, and each id kept one body:
        # what was sent again (after the kill) is recognisably the same notification.
        assert all(h.verified for h in receiver.hooks)
        bodies: dict[str, set[bytes]] = {}
        for h in receiver.hooks:
            bodies.setdefault(h.webhook_id, set()).add(h.body)
        assert all(len(b) == 1 for b in bodies.values())
        # The delivery that hung when the notifier was killed was sent again after the
        # restart, under the same webhook-id, and taken.
        [hung] = [h for h in receiver.hooks if h.answered == 0]
        assert hung.webhook_id in {h.webhook_id for h in delivered}
        # Three 500s before any 2xx of an id (the kill may add tries, never skip them).
        for webhook_id in expected:
            answers = [h.answered for h in receiver.hooks if h.webhook_id == webhook_id]
            assert answers[:3] == [500, 500, 500], (webhook_id, answers)
        # Each email went to the tenant's admins, in text and HTML.
        for message in smtp.received():
            assert message["To"].startswith("admin@n-")
            assert {p.get_content_type() for p in message.walk()} >= {"text/plain", "text/html"}
        text = await notifier.metrics()
        assert 'meter_notifications_total{channel="webhook",outcome="sent"}' in text
        assert "meter_notification_outbox" in text
        print(f"delivered before the kill: {sent_before_kill}; after: {len(delivered)}")
        print(f"at the kill: {killed}")
    finally:
        notifier.stop()
        await receiver.stop()
        smtp.stop()
        print(f"--- notifier log ---\n{notifier.log_tail()}")


async def test_a_patch_of_the_emails_keeps_the_webhook_and_its_secret(worker: Worker) -> None:
    """The console's case: new recipients without the webhook secret, which cannot be
    read back; the owner merges the change with the PUT's settings."""
    tenant, url = "n-patched", "https://hooks.n-patched.example/credits"
    secret = secret_for(tenant)
    status, body = await send_settings(
        worker,
        tenant,
        {"emails": ["old@n-patched.example"], "webhook_url": url, "webhook_secret": secret},
    )
    assert status == 202, body
    status, body = await send_settings(
        worker, tenant, {"emails": ["new@n-patched.example"]}, method="PATCH"
    )
    assert status == 202, body
    # The same key as the PUT's: keys are scoped per endpoint.
    assert body["command_id"] == f"notifications-change:settings-{tenant}"

    async def patched() -> Any:
        status, view = await worker.get(f"/tenants/{tenant}/account")
        shown = status == 200 and view["notifications"]
        return shown and shown["emails"] == ["new@n-patched.example"] and shown

    view = await eventually(patched, what="the patched settings in the account view")
    assert view["webhook_url"] == url and len(view["events"]) == 8
    # What the notifiers read: the merged settings whole, the secret still sealed.
    async with Client(worker.deployment) as client:
        records = await client.read_all("credits.notification-settings")
    latest = [r for r in records if r["tenant_id"] == tenant][-1]
    assert latest["command_id"] == body["command_id"] and latest["webhook_url"] == url
    assert Sealer(KEY).open(latest["webhook_secret_sealed"]) == secret
    assert secret not in worker.log_tail(10_000)


async def notified_ids(client: Client) -> set[str]:
    """The ids of the alerts now in credits.alerts that the tenants are notified of."""
    alerts = await client.read_all("credits.alerts")
    return {
        a["alert_id"]
        for a in alerts
        if a.get("tenant_id") in TENANTS and a.get("alert") in NOTIFIED
    }


async def _value(value: Any) -> Any:
    return value
