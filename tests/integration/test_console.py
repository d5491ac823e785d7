"""The admin console in a real headless Chromium, on the real pipeline.

A broker, a worker and the ledger sink with per-tenant access (METER_AUTH=jwt on a
local key pair), and `meter console` in front of them, all as processes. Debian's
chromium (/usr/bin/chromium, which .ci/run installs) is driven by Playwright for
Python; no browser is downloaded. Every wait is Playwright's `expect` with a deadline.
Screenshots go to test-artifacts/console/ (gitignored); docs/console/*.png are copies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from processor.dev.kafka_local import free_port
from processor.http.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalKeys
from schemas.notifications import NOTIFICATION_EVENTS
from tests.integration.harness import METER, Client, Deployment, Worker, eventually, now_rfc3339

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
ADMIN_TOKEN = "it-console-admin-token"
WAIT_MS = 60_000


@dataclass
class Stack:
    console: str
    worker: Worker
    deployment: Deployment
    keys: LocalKeys

    def token(self, role: str, tenant: str | None = None) -> str:
        return self.keys.issue(role, tenant, issuer=LOCAL_ISSUER, audience=LOCAL_AUDIENCE)


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _status(url: str) -> int:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def _admin(w: Worker, path: str, payload: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": uuid.uuid4().hex}
    async with (
        aiohttp.ClientSession() as http,
        http.post(w.url + path, json=payload, headers=headers) as resp,
    ):
        assert resp.status == 202, await resp.text()


def _call(tenant: str, seconds: int) -> dict[str, Any]:
    return {
        "event_id": f"call-{uuid.uuid4().hex}",
        "tenant_id": tenant,
        "occurred_at": now_rfc3339(),
        "call_id": uuid.uuid4().hex,
        "call_type": "outbound",
        "source_number": "+14155550100",
        "destination_number": "+447700900123",
        "duration_seconds": seconds,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("console")
    keys = LocalKeys(root / "keys").ensure()
    d = Deployment(
        kafka.bootstrap,
        root,
        partitions=2,
        env_extra={
            "METER_AUTH": "jwt",
            "METER_AUTH_JWKS": str(keys.jwks_path),
            "METER_AUTH_ISSUER": LOCAL_ISSUER,
            "METER_AUTH_AUDIENCE": LOCAL_AUDIENCE,
            "METER_ADMIN_TOKEN": ADMIN_TOKEN,
            "METER_WEB_HOST": "127.0.0.1",
        },
    )
    worker = Worker(d, 0).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await worker.wait_ready()
        sink_port, console_port = free_port(), free_port()
        sink_env = d.env(1, free_port()) | {"METER_SINK_PORT": str(sink_port)}
        procs.append(_start([METER, "ledger-sink"], sink_env, root / "sink.log"))
        console_env = d.env(2, free_port()) | {
            "METER_CONSOLE_PORT": str(console_port),
            "METER_API_URL": worker.url,
            "METER_SINK_URL": f"http://127.0.0.1:{sink_port}",
        }
        procs.append(_start([METER, "console"], console_env, root / "console.log"))
        console = f"http://127.0.0.1:{console_port}"

        async def up() -> bool:
            sink = await _status(f"http://127.0.0.1:{sink_port}/ready")
            return sink == 200 and await _status(console + "/signin") == 200

        await eventually(up, 90, what="the ledger sink and the console")
        # acme: 50.00, active. initech: funded, then drained by a call: exhausted.
        await _admin(worker, "/tenants/acme/funds", {"amount": "50.00", "currency": "USD"})
        await _admin(worker, "/tenants/initech/funds", {"amount": "0.50", "currency": "USD"})
        async with Client(d) as client:
            await client.send("usage.calls", _call("initech", 600))
        yield Stack(console, worker, d, keys)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        worker.stop()
        for name in ("sink.log", "console.log"):
            path = root / name
            if path.exists():
                print(f"--- {name} ---\n" + "\n".join(path.read_text().splitlines()[-40:]))


@pytest_asyncio.fixture(loop_scope="module")
async def browser() -> AsyncIterator[BrowserContext]:
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    try:
        async with async_playwright() as p:
            context = await p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1200, "height": 900},
                locale="en-US",
            )
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


async def _page(context: BrowserContext) -> Page:
    return context.pages[0] if context.pages else await context.new_page()


async def sign_in(context: BrowserContext, stack: Stack, token: str) -> Page:
    page = await _page(context)
    await page.goto(stack.console + "/")
    await expect(page).to_have_url(stack.console + "/signin")
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    return page


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_adding_funds_shows_pending_then_applied_and_the_ledger_grows(
    stack: Stack, browser: BrowserContext
) -> None:
    # A tenant admin tops up its own tenant, as on the admin center's page.
    page = await sign_in(browser, stack, stack.token("tenant_admin", "acme"))
    await expect(page).to_have_url(stack.console + "/tenants/acme")
    await expect(page.locator("#balance")).to_have_text("$50.00", timeout=WAIT_MS)
    await page.locator("#amount").fill("12.34")
    await page.get_by_role("button", name="Add funds").click()
    await expect(page.locator("#confirm-text")).to_have_text("Add $12.34 to acme?")
    await page.get_by_role("button", name="Confirm").click()
    result = page.locator("#funds-result")
    await expect(result).to_contain_text("Pending", timeout=WAIT_MS)
    await expect(result).to_contain_text("Applied", timeout=WAIT_MS)
    await expect(result).to_contain_text("Balance after: $62.34")
    await expect(page.locator("#balance")).to_have_text("$62.34", timeout=WAIT_MS)
    ledger = page.locator("#ledger-table tbody tr").first
    await expect(ledger).to_contain_text("+$12.34", timeout=WAIT_MS)
    await expect(ledger).to_contain_text("$62.34")
    csv = page.locator("#csv-link")
    await expect(csv).to_have_attribute("href", "/tenants/acme/ledger.csv")
    async with page.expect_download() as caught:
        await csv.click()
    download = await caught.value
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    assert text.splitlines()[0].startswith("entry_id,recorded_at")
    assert "12.34" in text


async def test_auto_recharge_settings_and_a_burst_that_triggers_a_recharge(
    stack: Stack, browser: BrowserContext
) -> None:
    page = await sign_in(browser, stack, stack.token("tenant_admin", "acme"))
    await expect(page).to_have_url(stack.console + "/tenants/acme")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Communication Credits")
    # By id: "Notify when the balance falls below" (the notifications form) has its words.
    trigger = page.locator("#ar-trigger_balance")
    # The API's validation messages, beside their fields.
    await page.get_by_label("Auto-recharge enabled").check()
    await page.get_by_label("Recharge amount").fill("25.00")
    await trigger.fill("5.00001")
    await page.get_by_role("button", name="Save changes").click()
    error = page.locator("#ar-trigger_balance-error")
    await expect(error).to_contain_text("Too many decimal places", timeout=WAIT_MS)
    await expect(trigger).to_have_attribute("aria-invalid", "true")
    await page.get_by_label("Recharge up to a target balance").check()
    await page.locator("#ar-target_balance").fill("40.00")
    await trigger.fill("45.00")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#ar-target_balance-error")).to_be_visible(timeout=WAIT_MS)
    # Valid settings: recharge 25.00 when the balance falls below its current level.
    await page.get_by_label("Add a fixed amount").check()
    balance = await page.locator("#balance").inner_text()
    level = f"{float(balance.lstrip('$')) - 0.50:.2f}"
    await trigger.fill(level)
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#ar-saved")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#no-recharges")).to_be_visible()
    # A burst of usage takes the balance below the trigger: a recharge request appears.
    async with Client(stack.deployment) as client:
        await client.send_all("usage.calls", [_call("acme", 60) for _ in range(10)])
    table = page.locator("#recharge-table")
    await expect(table).to_contain_text("$25.00", timeout=WAIT_MS)
    await expect(table).to_contain_text("Waiting for billing")
    await expect(page.locator("#pending-recharge")).to_contain_text("$25.00", timeout=WAIT_MS)
    await page.reload()
    await expect(page.locator("#recharge-table")).to_be_visible()
    await shot(page, "tenant-page")


# Each cell's text, laid out: how many lines it takes (a range's boxes, by their tops).
LINES_PER_CELL = """cells => cells.map(cell => {
  const range = document.createRange();
  range.selectNodeContents(cell);
  return new Set([...range.getClientRects()].map(box => Math.round(box.top))).size;
})"""


async def test_on_a_phone_no_amount_breaks_across_lines(
    stack: Stack, browser: BrowserContext
) -> None:
    # After the burst above, acme's ledger has debits, each after a minus (U+2212).
    page = await sign_in(browser, stack, stack.token("tenant_admin", "acme"))
    await page.set_viewport_size({"width": 390, "height": 900})
    await expect(page).to_have_url(stack.console + "/tenants/acme")
    cells = page.locator("#ledger-table td.num")
    await expect(cells.first).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#ledger-table")).to_contain_text("\u2212$")
    assert set(await cells.evaluate_all(LINES_PER_CELL)) == {1}
    await shot(page, "tenant-page-phone")


async def test_a_tenant_admin_is_refused_another_tenant_and_reads_greek(
    stack: Stack, browser: BrowserContext
) -> None:
    page = await sign_in(browser, stack, stack.token("tenant_admin", "acme"))
    await expect(page).to_have_url(stack.console + "/tenants/acme")
    response = await page.goto(stack.console + "/tenants/initech")
    assert response is not None and response.status == 403
    await expect(page.get_by_role("alert")).to_contain_text("only their own tenant")
    response = await page.goto(stack.console + "/operator")
    assert response is not None and response.status == 403
    # Greek, chosen with the switch (keyboard only) and remembered for the next page.
    await page.goto(stack.console + "/tenants/acme")
    await page.get_by_label("Language").select_option("el")
    await page.get_by_label("Language").focus()
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    heading = page.get_by_role("heading", level=1)
    await expect(heading).to_contain_text("Πιστώσεις επικοινωνίας", timeout=WAIT_MS)
    await expect(page.locator("html")).to_have_attribute("lang", "el")
    await expect(page.locator("#balance")).to_contain_text(",")
    await expect(page.locator("#balance")).to_contain_text("$")
    assert (await page.locator("#balance").inner_text()).rstrip("$").rstrip()[-3] == ","
    await page.goto(stack.console + "/tenants/acme")
    await expect(page.get_by_role("button", name="Αποθήκευση αλλαγών")).to_be_visible()
    await shot(page, "tenant-page-el")


async def test_the_operator_filters_the_exhausted_tenants_and_drills_down(
    stack: Stack, browser: BrowserContext
) -> None:
    page = await sign_in(browser, stack, stack.token("operator"))
    await expect(page).to_have_url(stack.console + "/operator")
    table = page.locator("#tenant-table")
    await expect(table).to_contain_text("acme", timeout=WAIT_MS)
    await expect(table).to_contain_text("initech", timeout=WAIT_MS)
    await page.get_by_label("Show").select_option("exhausted")
    await expect(table.locator("tbody tr")).to_have_count(1, timeout=WAIT_MS)
    await expect(table).to_contain_text("initech")
    await expect(table).not_to_contain_text("acme")
    assert "status=exhausted" in page.url
    await shot(page, "operator-page")
    await page.get_by_role("link", name="initech").click()
    await expect(page).to_have_url(stack.console + "/tenants/initech")
    await expect(page.locator("#status")).to_have_text("Exhausted", timeout=WAIT_MS)
    # An operator reads; the forms that change a tenant are not there.
    await expect(page.get_by_role("button", name="Save changes")).to_have_count(0)
    await expect(page.get_by_role("button", name="Save notification settings")).to_have_count(0)
    # The statement streams through with the operator's token (the page's cookies).
    statement = await page.request.get(stack.console + "/tenants/initech/ledger.csv")
    assert statement.status == 200
    assert (await statement.text()).startswith("entry_id,")


async def _account(stack: Stack, tenant: str) -> dict[str, Any]:
    """The account view the worker serves, read with the tenant admin's own token."""
    headers = {"Authorization": f"Bearer {stack.token('tenant_admin', tenant)}"}
    url = f"{stack.worker.url}/tenants/{tenant}/account"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_tenant_admin_changes_who_is_told_what_and_below_which_balance(
    stack: Stack, browser: BrowserContext
) -> None:
    page = await sign_in(browser, stack, stack.token("tenant_admin", "acme"))
    await expect(page).to_have_url(stack.console + "/tenants/acme")
    recipients = page.get_by_label("Email recipients")
    await recipients.fill("ops@acme.example\nbilling@acme.example, ops@acme.example")
    restored = page.get_by_label("Restored")
    await expect(restored).to_be_checked()  # no settings yet: every event
    await restored.uncheck()
    await page.get_by_label("Notify when the balance falls below").fill("7.50")
    await page.get_by_role("button", name="Save notification settings").click()
    await expect(page.locator("#nf-saved")).to_be_visible(timeout=WAIT_MS)
    await expect(recipients).to_have_value("ops@acme.example\nbilling@acme.example")

    async def applied() -> dict[str, Any] | str:
        account = await _account(stack, "acme")
        told = account.get("notifications") or {}
        if told.get("emails") != ["ops@acme.example", "billing@acme.example"]:
            return f"not yet: {told}"
        return account if account.get("notify_below") is not None else "not yet: no level"

    account = await eventually(applied, WAIT_MS / 1000, what="the new notification settings")
    assert set(account["notifications"]["events"]) == set(NOTIFICATION_EVENTS) - {"restored"}
    assert float(account["notify_below"]) == 7.5
    # The page, read again, shows the settings the worker now holds.
    await page.reload()
    await expect(page.get_by_label("Restored")).not_to_be_checked()
    await expect(page.get_by_label("Notify when the balance falls below")).to_have_value("7.50")
    await expect(page.get_by_label("Low balance")).to_be_checked()
