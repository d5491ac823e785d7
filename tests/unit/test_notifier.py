"""`meter notifier` without Kafka: alerts to outbox rows, and delivery from the outbox to a
real SMTP server (aiosmtpd) and a real webhook receiver (aiohttp) that verifies the
Standard Webhooks signatures, fails the first tries and hangs once."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from processor.config.sealing import Sealer
from processor.dev.catchers import MailCatcher, WebhookReceiver
from processor.notifier.channels import (
    EmailChannel,
    Failure,
    SmtpConfig,
    WebhookChannel,
    is_public,
    message_id,
    readable_money,
    readable_time,
    webhook_headers,
)
from processor.notifier.events import Settings, notification_of, selected
from processor.notifier.service import Notifier, NotifierConfig
from processor.notifier.settings_book import SettingsBook
from processor.notifier.store import Delivery, OutboxStore
from processor.observability import metrics
from processor.sink.store import database_url
from schemas.types import format_timestamp

KEY = Sealer.new_key()
SEALER = Sealer(KEY)
NOW = datetime.now(UTC).replace(microsecond=0)


def _retries() -> float:
    found = metrics.NOTIFIER_REGISTRY.get_sample_value(
        "meter_notifications_total", {"channel": "webhook", "outcome": "retry"}
    )
    return found or 0.0


def secret_for(tenant: str) -> str:
    return "whsec_" + base64.b64encode(tenant.encode().ljust(32, b"#")).decode()


@dataclass
class Rec:
    offset: int
    value: bytes | None
    key: bytes | None = None


def alert(alert_id: str, tenant: str, kind: str, **extra: Any) -> bytes:
    body = {
        "type": "balance_alert",
        "alert_id": alert_id,
        "tenant_id": tenant,
        "alert": kind,
        "balance": "4.5000",
        "currency": "USD",
        "occurred_at": format_timestamp(extra.pop("at", NOW)),
        **extra,
    }
    return json.dumps(body).encode()


def settings(tenant: str, url: str | None, emails: tuple[str, ...] = (), **kw: Any) -> Settings:
    return Settings(
        tenant_id=tenant,
        emails=emails,
        webhook_url=url,
        webhook_secret_sealed=None if url is None else SEALER.seal(secret_for(tenant)),
        events=frozenset(kw.get("events", ("low_balance", "exhausted", "recharge_failed"))),
    )


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last {last!r}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OutboxStore]:
    s = await OutboxStore.open(database_url(None, tmp_path, "notifier.sqlite3"))
    yield s
    await s.close()


@pytest.fixture
def mail() -> Any:
    catcher = MailCatcher().start()
    yield catcher
    catcher.stop()


def make_notifier(
    store: OutboxStore, mail: MailCatcher | None, timeout: float = 0.5, **kw: Any
) -> Notifier:
    email = None
    if mail is not None:
        email = EmailChannel(
            SmtpConfig("127.0.0.1", mail.port, False, None, None, "meter <m@x.example>", 5)
        )
    config = NotifierConfig(timeout=timeout, backoff=0.05, max_backoff=0.2, **kw)
    return Notifier(
        store,
        SettingsBook("127.0.0.1:1", "settings"),
        "127.0.0.1:1",
        "alerts",
        "g",
        email=email,
        # The receivers here listen on 127.0.0.1.
        webhook=WebhookChannel(SEALER, timeout, allow_private=True),
        config=config,
    )


async def enqueue(notifier: Notifier, *records: Rec) -> list[dict[str, Any]]:
    rows, positions = notifier.rows_of({TopicPartition("alerts", 0): list(records)})
    await notifier.store.write(notifier.group, rows, positions)
    return rows


@pytest.fixture
async def delivering() -> AsyncIterator[Callable[[Notifier], None]]:
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    started: list[Notifier] = []

    def start(notifier: Notifier) -> None:
        started.append(notifier)
        tasks.append(asyncio.create_task(notifier.deliver(stop)))

    yield start
    stop.set()
    await asyncio.gather(*tasks)
    for notifier in started:
        await asyncio.gather(*notifier.inflight, return_exceptions=True)
        await notifier.webhook.close()


# ------------------------------------------------------------------------ email


def _delivery(tenant_id: str, event: str, data: dict[str, Any]) -> Delivery:
    at = datetime(2026, 12, 7, 21, 28, tzinfo=UTC)
    payload = json.dumps({"type": event, "data": data})
    return Delivery(
        "d-1", "alert-9", tenant_id, event, "email", "a@t.example", None, payload, at, at, 0
    )


def test_an_email_links_to_the_tenants_console_page_and_reads_its_times() -> None:
    data = {
        "amount": "5.0000",
        "currency": "USD",
        "expires_at": "2027-12-07T21:28:48Z",
        "occurred_at": "2026-12-07T21:28:48.972664Z",
    }
    config = SmtpConfig("h", 25, False, None, None, "m <m@x.example>", 5, "https://c.example/")
    message = EmailChannel(config).message(_delivery("cogswell:cogs", "funds_expiring", data))
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    page = "https://c.example/tenants/cogswell%3Acogs"
    assert f"Your balance, history and settings: {page}" in text.get_content()
    assert f'<a href="{page}">' in html.get_content()
    assert "expire at 7 Dec 2027, 21:28 UTC." in text.get_content()
    assert "When: 7 Dec 2026, 21:28 UTC" in text.get_content()
    # Without a console address: no link, and nothing else missing.
    bare = SmtpConfig("h", 25, False, None, None, "m <m@x.example>", 5)
    plain = EmailChannel(bare).message(_delivery("t1", "funds_expiring", data))
    body = plain.get_body(("plain",))
    assert body is not None and "http" not in body.get_content()
    assert "PATCH /tenants/t1/notifications" in body.get_content()
    # With one: who gets these is changed on the page, where the form is.
    assert f'under "Limits and notifications" on your page: {page}' in text.get_content()


def _text(event: str, data: dict[str, Any]) -> str:
    config = SmtpConfig("h", 25, False, None, None, "m <m@x.example>", 5)
    body = EmailChannel(config).message(_delivery("t1", event, data)).get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_two_low_balance_emails_of_one_change_say_which_level_each_is() -> None:
    base = {"balance": "8.0000", "currency": "USD", "occurred_at": "2026-12-07T21:28:48Z"}
    trigger = _text(
        "low_balance", base | {"threshold": "10.0000", "threshold_setting": "trigger_balance"}
    )
    own = _text("low_balance", base | {"threshold": "15.0000", "threshold_setting": "notify_below"})
    assert "8.00 USD, below your auto-recharge trigger of 10.00 USD." in trigger
    assert "8.00 USD, below your low-balance level of 15.00 USD." in own
    # An alert published before the fields: as it always read.
    assert "8.00 USD, below the level you set." in _text("low_balance", base)


def test_an_emails_amounts_read_as_money_and_its_reasons_as_words() -> None:
    failed = _text(
        "recharge_failed",
        {"balance": "-2.2660", "currency": "USD", "request_id": "r-1",
         "reason": "processor_unavailable", "occurred_at": "2026-12-07T21:28:48Z"},
    )  # fmt: skip
    assert "failed: processor unavailable." in failed
    assert "Your balance is \u22122.266 USD." in failed
    assert readable_money("1050.0000", "EUR") == "1,050.00 EUR"
    assert readable_money("0.0000", "USD") == "0.00 USD"
    assert readable_money("not money", "USD") == "not money USD"


def test_a_time_that_is_not_one_is_shown_as_it_is() -> None:
    assert readable_time("2026-01-05T08:04:00+02:00") == "5 Jan 2026, 06:04 UTC"
    assert readable_time("") == ""
    assert readable_time("soon") == "soon"


# ------------------------------------------------------------------------ mapping


def test_each_alert_maps_to_its_event_and_recharge_failed_says_suspended() -> None:
    failed = notification_of(alert("a-1", "t", "recharge_failed", reason="card_declined"))
    assert failed is not None and failed.event == "recharge_failed"
    assert failed.data["auto_recharge_suspended"] is True
    assert failed.data["reason"] == "card_declined"
    suspended_only = settings("t", None, events=("auto_recharge_suspended",))
    assert selected(suspended_only, "recharge_failed")
    assert not selected(suspended_only, "low_balance")
    # wip-a's kinds, as that branch publishes them.
    expiring = notification_of(
        alert("a-2", "t", "funds_expiring", amount="10.0000", expires_at="2027-01-01T00:00:00Z")
    )
    assert expiring is not None and expiring.data["expires_at"] == "2027-01-01T00:00:00Z"
    expired = notification_of(alert("a-3", "t", "funds_expired", amount="1.0000", entry_id="e"))
    assert expired is not None and expired.event == "funds_expired"
    body = json.loads(expired.body())
    assert body["type"] == "funds_expired" and body["data"]["entry_id"] == "e"
    assert notification_of(alert("a-4", "t", "something_new")) is None
    with pytest.raises(ValueError):
        notification_of(b'{"type": "ledger_entry"}')


async def test_rows_follow_the_settings_and_skip_what_nobody_asked_for(
    store: OutboxStore, mail: MailCatcher
) -> None:
    notifier = make_notifier(store, mail)
    notifier.book.settings = {
        "t1": settings("t1", "https://h.example/1", ("a@t1.example",)),
        "t2": settings("t2", None, ("b@t2.example",), events=("restored",)),
    }
    rows = await enqueue(
        notifier,
        Rec(0, alert("a-1", "t1", "low_balance")),
        Rec(1, alert("a-2", "t2", "low_balance")),  # not selected
        Rec(2, alert("a-3", "t3", "exhausted")),  # no settings
        Rec(3, b"not json"),  # never stops the notifier
        Rec(4, alert("a-5", "t1", "exhausted", at=NOW - timedelta(days=2))),  # too old
    )
    assert sorted(r["delivery_id"] for r in rows) == ["a-1/email", "a-1/webhook"]
    assert notifier.stats.skipped == {
        "not_selected": 2,
        "invalid": 1,
        "too_old": 1,
    }
    # Read again (a crash before the commit, a rebalance): nothing new.
    await enqueue(notifier, Rec(0, alert("a-1", "t1", "low_balance")))
    assert len(await store.rows()) == 2
    assert await store.positions("g", [("alerts", 0)]) == {("alerts", 0): 5}


# ----------------------------------------------------------------------- delivery


async def test_webhooks_are_signed_retried_through_failures_and_a_hang_then_never_resent(
    store: OutboxStore, mail: MailCatcher, delivering: Callable[[Notifier], None]
) -> None:
    receiver = await WebhookReceiver(
        {"t1": secret_for("t1")}, fail_first=3, hang_once_seconds=2.0
    ).start()
    try:
        notifier = make_notifier(store, mail, timeout=0.5)
        notifier.book.settings = {"t1": settings("t1", receiver.url("t1"), ("a@t1.example",))}
        before = _retries()
        await enqueue(notifier, Rec(0, alert("alert-1", "t1", "low_balance")))
        delivering(notifier)

        async def sent() -> bool:
            return all(r["status"] == "sent" for r in await store.rows())

        await eventually(sent)
        [hook] = receiver.delivered()
        assert hook.webhook_id == "alert-1" and hook.verified
        body = json.loads(hook.body)
        assert body["type"] == "low_balance" and body["data"]["balance"] == "4.5000"
        # Three 500s, one hang past the timeout, then the 2xx: five tries, one id,
        # one body, each signed for its own timestamp.
        assert [h.answered for h in receiver.hooks] == [500, 500, 500, 0, 204]
        assert {h.webhook_id for h in receiver.hooks} == {"alert-1"}
        assert {h.body for h in receiver.hooks} == {hook.body}
        assert all(h.verified for h in receiver.hooks)
        rows = {r["channel"]: r for r in await store.rows()}
        assert rows["webhook"]["attempts"] == 5 and rows["email"]["attempts"] == 1
        assert _retries() - before == 4
        # Sent: never taken again, however long the loop runs.
        await asyncio.sleep(0.5)
        assert len(receiver.hooks) == 5
        # The email: to the tenant's admins, text and HTML, its id from the alert's.
        [message] = mail.received()
        assert message["To"] == "a@t1.example"
        assert message["Message-ID"] == message_id("alert-1")
        assert "low" in message["Subject"].lower()
        kinds = {part.get_content_type() for part in message.walk()}
        assert {"text/plain", "text/html"} <= kinds
        text = message.get_body(("plain",))
        assert text is not None and "4.50 USD" in text.get_content()
    finally:
        await receiver.stop()


async def test_a_hanging_tenant_does_not_hold_up_another(
    store: OutboxStore, delivering: Callable[[Notifier], None]
) -> None:
    slow = await WebhookReceiver({"slow": secret_for("slow")}, hang_once_seconds=30).start()
    fast = await WebhookReceiver({"fast": secret_for("fast")}).start()
    try:
        notifier = make_notifier(store, None, timeout=3.0)
        notifier.book.settings = {
            "slow": settings("slow", slow.url("slow")),
            "fast": settings("fast", fast.url("fast")),
        }
        await enqueue(notifier, Rec(0, alert("s-1", "slow", "low_balance")))
        delivering(notifier)
        await eventually(lambda: _async(slow.hooks))  # the slow one is hanging now
        started = time.monotonic()
        await enqueue(notifier, Rec(1, alert("f-1", "fast", "low_balance")))
        await eventually(lambda: _async(fast.delivered()))
        assert time.monotonic() - started < 2.0  # well inside the slow one's timeout
    finally:
        await slow.stop()
        await fast.stop()


async def test_a_delivery_is_given_up_after_the_give_up_time(
    store: OutboxStore, delivering: Callable[[Notifier], None]
) -> None:
    receiver = await WebhookReceiver({"t": secret_for("t")}, fail_first=1000).start()
    try:
        notifier = make_notifier(store, None, give_up=timedelta(seconds=1))
        notifier.book.settings = {"t": settings("t", receiver.url("t"))}
        await enqueue(notifier, Rec(0, alert("g-1", "t", "exhausted", at=datetime.now(UTC))))
        delivering(notifier)

        async def gave_up() -> Any:
            rows = await store.rows()
            return rows[0]["status"] == "gave_up" and rows[0]

        row = await eventually(gave_up)
        assert row["last_error"] == "webhook: HTTP 500" and row["attempts"] >= 2
        assert await store.depth() == 0
    finally:
        await receiver.stop()


async def test_a_row_leased_by_a_dead_notifier_is_sent_again_with_the_same_ids(
    store: OutboxStore, mail: MailCatcher, delivering: Callable[[Notifier], None]
) -> None:
    receiver = await WebhookReceiver({"t": secret_for("t")}).start()
    try:
        dead = make_notifier(store, mail)
        dead.book.settings = {"t": settings("t", receiver.url("t"), ("a@t.example",))}
        await enqueue(dead, Rec(0, alert("k-1", "t", "exhausted")))
        # The dead one took both rows (and then was killed before sending anything).
        now = datetime.now(UTC)
        assert len(await store.claim("dead", now, now + timedelta(seconds=1), 10)) == 2
        alive = make_notifier(store, mail)
        delivering(alive)
        await eventually(lambda: _async(receiver.delivered() and mail.received()))
        assert [h.webhook_id for h in receiver.delivered()] == ["k-1"]
        assert [m["Message-ID"] for m in mail.received()] == [message_id("k-1")]
    finally:
        await receiver.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_webhooks_to_private_addresses_are_refused(host: str) -> None:
    """A tenant's URL may not make the notifier POST to the deployment's own services."""
    receiver = await WebhookReceiver({"t": secret_for("t")}).start()
    channel = WebhookChannel(SEALER, 2)
    try:
        target = receiver.url("t").replace("127.0.0.1", host)
        now = datetime.now(UTC)
        delivery = Delivery(
            "d-1", "k-1", "t", "exhausted", "webhook", target, SEALER.seal(secret_for("t")),
            "{}", now, now, 0,
        )  # fmt: skip
        with pytest.raises(Failure, match="public address"):
            await channel.send(delivery, now)
        assert receiver.delivered() == []
        # The same delivery goes through where private addresses are allowed (demos).
        allowed = WebhookChannel(SEALER, 2, allow_private=True)
        try:
            if host == "127.0.0.1":
                assert 200 <= await allowed.send(delivery, now) < 300
        finally:
            await allowed.close()
    finally:
        await channel.close()
        await receiver.stop()


def test_only_globally_routable_addresses_are_public() -> None:
    assert is_public("93.184.216.34") and is_public("2606:2800:220:1:248:1893:25c8:1946")
    for address in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                    "::1", "fd00::1", "fe80::1%eth0", "0.0.0.0", "not-an-ip"):  # fmt: skip
        assert not is_public(address), address


def test_signatures_are_standard_webhooks() -> None:
    from standardwebhooks.webhooks import Webhook

    secret = secret_for("x")
    headers = webhook_headers(secret, "msg-1", datetime.now(UTC), '{"a":1}')
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify('{"a":1}', headers) == {"a": 1}


async def _async(value: Any) -> Any:
    return value


# ---------------------------------------------------------------- make run (demo)


async def test_the_demo_configures_every_tenant_and_the_view_shows_what_was_told() -> None:
    from processor.dev.demo import DemoNotifications, demo_secret
    from processor.dev.liveview import ViewState, render, summary_line
    from schemas import NotificationsConfigured, decode_command

    told = DemoNotifications(["acme", "globex"], "run-1")
    commands = told.commands(SEALER)
    assert [tenant for tenant, _ in commands] == ["acme", "globex"]
    # Another run's receiver and key: its settings are a new command, not a duplicate.
    again = DemoNotifications(["acme", "globex"], "run-2").commands(SEALER)
    ids = {decode_command(raw).command_id for _, raw in commands + again}
    assert len(ids) == 4
    for tenant, raw in commands:
        command = decode_command(raw)  # what the worker accepts
        assert isinstance(command, NotificationsConfigured)
        assert command.webhook_url == told.hooks.url(tenant)
        assert command.webhook_secret_sealed is not None
        assert SEALER.open(command.webhook_secret_sealed) == demo_secret(tenant)
        assert demo_secret(tenant).encode() not in raw
    await told.hooks.start()
    try:
        body = '{"type":"exhausted"}'
        headers = webhook_headers(demo_secret("acme"), "al-1", datetime.now(UTC), body)
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # the first try is answered 500, as the demo shows retries
                async with http.post(told.hooks.url("acme"), data=body, headers=headers) as r:
                    await r.read()
    finally:
        await told.hooks.stop()
    state = ViewState(notifications=told.lines)
    screen = render(state)
    assert "NOTIFICATIONS SENT  0 emails, 1 webhooks" in screen
    assert "exhausted" in screen and "al-1" in screen
    assert "notifications 0 emails, 1 webhooks" in summary_line(state)


async def test_two_notifiers_sharing_one_outbox_send_each_delivery_once(
    store: OutboxStore, delivering: Callable[[Notifier], None]
) -> None:
    tenants = [f"t{i}" for i in range(6)]
    receiver = await WebhookReceiver({t: secret_for(t) for t in tenants}).start()
    second = await OutboxStore.open(store.engine.url.render_as_string(hide_password=False))
    try:
        one, two = make_notifier(store, None), make_notifier(second, None)
        one.book.settings = {t: settings(t, receiver.url(t)) for t in tenants}
        records = [
            Rec(i, alert(f"s-{i}", tenants[i % len(tenants)], "exhausted")) for i in range(30)
        ]
        await enqueue(one, *records)
        delivering(one)
        delivering(two)

        async def all_sent() -> bool:
            return {r["status"] for r in await store.rows()} == {"sent"}

        await eventually(all_sent)
        await asyncio.sleep(0.3)  # anything sent twice would show by now
        ids = [h.webhook_id for h in receiver.hooks]
        assert sorted(ids) == sorted(f"s-{i}" for i in range(30))  # each once
    finally:
        await second.close()
        await receiver.stop()


async def test_the_settings_book_catches_up_before_alerts_are_read() -> None:
    """Settings committed before an alert apply to it: the consumer waits for the book
    to reach the settings topic's end (its last stable offset) as of now."""
    tp = TopicPartition("settings", 0)

    class Consumer:
        position_now = 1

        async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            return {tp: 3}

        async def position(self, _tp: TopicPartition) -> int:
            return self.position_now

    book = SettingsBook("127.0.0.1:1", "settings")
    consumer = Consumer()
    book.consumer, book.tps = consumer, [tp]
    stop = asyncio.Event()
    waiting = asyncio.create_task(book.caught_up(stop))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    consumer.position_now = 3  # the book's loop applied the records up to the end
    await asyncio.wait_for(waiting, 1)
    with pytest.raises(TimeoutError):
        consumer.position_now = 0
        await book.caught_up(stop, within=0.1)
    # A record applied: the latest settings of a tenant win, a tombstone forgets them.
    record = Rec(0, json.dumps({"tenant_id": "t", "events": ["low_balance"]}).encode(), b"t")
    book.apply(tp, record)
    # union-attr: the left operand asserted it is there
    assert book.get("t") is not None and book.get("t").events == {"low_balance"}  # type: ignore[union-attr]
    book.apply(tp, Rec(1, None, b"t"))
    assert book.get("t") is None
