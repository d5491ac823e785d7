"""`meter demo` (what `make run` runs): the whole pipeline on one machine.

Starts the local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), one worker,
the ledger sink (`meter ledger-sink`, SQLite in METER_DATA_DIR), the notifier
(`meter notifier`, with a local SMTP server catching its mail and a local webhook
receiver verifying its signatures) and the admin console (`meter console`, whose URL
it prints with the sign-in tokens) as child processes, the traffic simulator and the
live view; the simulated tenants get notification settings. On Ctrl-C it stops what
it started, in reverse order, and leaves a broker it did not start alone.

Access is per tenant (METER_AUTH=jwt, unless METER_AUTH says otherwise) on a local
key pair in METER_DATA_DIR/auth (processor/http/tokens.py); the demo prints a tenant
admin's token and an operator's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from processor.config.sealing import Sealer
from processor.config.settings import COMMANDS, Settings
from processor.dev import kafka_local
from processor.dev.catchers import MailCatcher, WebhookReceiver
from processor.dev.liveview import LiveView, LiveViewConfig
from processor.dev.simulator import Simulator, SimulatorConfig, run_until_signalled
from processor.http.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalKeys
from schemas.types import format_timestamp

log = logging.getLogger(__name__)

# Billing answers within seconds in the demo, so let failed recharges visibly retry.
DEMO_ENV = {
    "METER_RECHARGE_RETRY_AFTER_SECONDS": "10",
    "METER_RECHARGE_TIMEOUT_SECONDS": "60",
    "METER_TIMER_INTERVAL_SECONDS": "1",
    # Funds expire in minutes rather than a year, so a demo shows the notice (after two
    # minutes), the expiry entry and the recharge that follows (after five).
    "METER_FUNDS_EXPIRE_DAYS": str(5 / 1440),
    "METER_FUNDS_EXPIRING_NOTICE_DAYS": str(3 / 1440),
}


def demo_env(environ: dict[str, str], bootstrap: str) -> dict[str, str]:
    """The children's environment: the demo's short times (`DEMO_ENV`) where the
    caller's environment does not set them, and the broker the demo found or started."""
    return {**DEMO_ENV, **environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}


def _spawn(command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`meter <command>` as a child in its own session, its output appended to log_path."""
    with log_path.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 (our own `meter` subcommands only)
            [sys.executable, "-m", "processor.ops.cli", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float, what: str = "worker"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(f"the {what} exited during start-up:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the {what} was not ready within {timeout:.0f}s; see {log_path}")


# The printed tokens last a working day.
DEMO_TOKEN_TTL_SECONDS = 12 * 3600


def local_auth(env: dict[str, str]) -> LocalKeys | None:
    """METER_AUTH=jwt on the local key pair, in `env` (unless METER_AUTH is set)."""
    if env.get("METER_AUTH", "jwt") != "jwt":
        return None
    keys = LocalKeys(Path(env["METER_DATA_DIR"])).ensure()
    env["METER_AUTH"] = "jwt"
    env.setdefault("METER_AUTH_JWKS", str(keys.jwks_path))
    env.setdefault("METER_AUTH_ISSUER", LOCAL_ISSUER)
    env.setdefault("METER_AUTH_AUDIENCE", LOCAL_AUDIENCE)
    return keys


def print_tokens(keys: LocalKeys, env: dict[str, str], tenant_id: str, web_port: int) -> None:
    issued: dict[str, str | None] = {"tenant_admin": tenant_id, "operator": None}
    for role, tenant in issued.items():
        token = keys.issue(
            role,
            tenant,
            ttl_seconds=DEMO_TOKEN_TTL_SECONDS,
            issuer=env["METER_AUTH_ISSUER"],
            audience=env["METER_AUTH_AUDIENCE"],
        )
        who = f"{role} of {tenant}" if tenant else role
        print(f"token ({who}, 12 h): {token}", flush=True)
    print(
        f'  curl -H "Authorization: Bearer <token>" '
        f"http://127.0.0.1:{web_port}/tenants/{tenant_id}/account\n"
        "  more: meter token issue --role tenant_admin|operator|billing [--tenant T]",
        flush=True,
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # A Faust worker can hang in shutdown; its state is safe in Kafka.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def demo_secret(tenant_id: str) -> str:
    """A tenant's webhook secret in the demo (whsec_, 32 bytes derived from its id)."""
    key = hashlib.sha256(b"credits-meter demo " + tenant_id.encode()).digest()
    return "whsec_" + base64.b64encode(key).decode()


class DemoNotifications:
    """The notifier's receivers in the demo, and what the live view says of them."""

    def __init__(self, tenant_ids: list[str], run_id: str) -> None:
        self.tenant_ids = tenant_ids
        # Each run's receiver listens on a new port, and its secrets are sealed with a
        # new key: the settings must be applied again, so their command is the run's
        # (a fixed id would be dropped as a duplicate and leave the last run's).
        self.run_id = run_id
        self.mail = MailCatcher()
        # Every webhook fails its first try, so the view shows retries happen.
        self.hooks = WebhookReceiver({t: demo_secret(t) for t in tenant_ids}, fail_first=1)

    def commands(self, sealer: Sealer) -> list[tuple[str, bytes]]:
        """A notifications_configured command per tenant (secret sealed)."""
        now = format_timestamp(datetime.now(UTC).replace(microsecond=0))
        out = []
        for tenant in self.tenant_ids:
            command = {
                "type": "notifications_configured",
                "command_id": f"notifications:demo-{self.run_id}-{tenant}",
                "tenant_id": tenant,
                "occurred_at": now,
                "emails": [f"admin@{tenant}.example"],
                "webhook_url": self.hooks.url(tenant),
                "webhook_secret_sealed": sealer.seal(demo_secret(tenant)),
            }
            out.append((tenant, json.dumps(command).encode()))
        return out

    def limits(self) -> list[tuple[str, bytes]]:
        """A tenant_limits_configured per tenant: a low-balance level of its own, and a
        small credit limit for every other tenant (so some go a little below zero)."""
        now = format_timestamp(datetime.now(UTC).replace(microsecond=0))
        out = []
        for index, tenant in enumerate(self.tenant_ids):
            command: dict[str, str] = {
                "type": "tenant_limits_configured",
                "command_id": f"limits:demo-{tenant}",
                "tenant_id": tenant,
                "occurred_at": now,
                "notify_below": "3.00",
            }
            if index % 2:
                command["credit_limit"] = "2.00"
            out.append((tenant, json.dumps(command).encode()))
        return out

    def lines(self) -> list[str]:
        mails = self.mail.received()
        delivered = self.hooks.delivered()
        verified = sum(h.verified for h in self.hooks.hooks)
        retried = sum(1 for h in self.hooks.hooks if not 200 <= h.answered < 300)
        head = (
            f"{len(mails)} emails, {len(delivered)} webhooks "
            f"({verified} requests signature-verified, {retried} answered 500 and retried)"
        )
        latest = []
        for h in delivered[-6:][::-1]:
            try:
                kind = json.loads(h.body).get("type", "?")
            except ValueError:
                kind = "?"
            latest.append(f"  webhook {h.tenant_id:<24} {kind:<18} webhook-id {h.webhook_id}")
        return [head, *latest]


def run_demo(tenants: int = 36, rate: float = 20.0, seconds: float | None = None) -> int:
    cfg = Settings()
    run_dir = kafka_local.default_state_dir().parent
    run_dir.mkdir(parents=True, exist_ok=True)
    started_broker = False
    if cfg.kafka_bootstrap_servers:
        bootstrap = cfg.kafka_bootstrap_servers
    else:
        state = kafka_local.status(kafka_local.default_state_dir())
        if not state or not state.get("running"):
            print("starting the local Kafka broker ...", flush=True)
            started_broker = True
        bootstrap = kafka_local.start_background(kafka_local.default_state_dir())
    print(f"Kafka at {bootstrap}", flush=True)

    worker_log = run_dir / "worker.log"
    env = demo_env(dict(os.environ), bootstrap)
    env.setdefault("METER_DATA_DIR", str(run_dir / "data"))
    keys = local_auth(env)
    # One key for the workers (which seal webhook secrets) and the notifier (which opens
    # them); a fresh one per demo unless the environment gives it.
    env.setdefault("METER_SECRETS_KEY", Sealer.new_key())
    sealer = Sealer(env["METER_SECRETS_KEY"])
    print(f"starting a worker (log: {worker_log}) ...", flush=True)
    sink: subprocess.Popen[bytes] | None = None
    notifier: subprocess.Popen[bytes] | None = None
    told: DemoNotifications | None = None
    console: subprocess.Popen[bytes] | None = None
    worker = _spawn("worker", env, worker_log)
    try:
        _wait_ready(f"http://127.0.0.1:{cfg.web_port}", worker, worker_log, timeout=120)
        print(
            f"worker ready: http://127.0.0.1:{cfg.web_port}/tenants/<id>/account and /metrics",
            flush=True,
        )
        # The ledger sink: the ledger in SQLite (METER_DATA_DIR) and its query API.
        sink_log = run_dir / "ledger-sink.log"
        sink = _spawn("ledger-sink", env, sink_log)
        _wait_ready(f"http://127.0.0.1:{cfg.sink_port}", sink, sink_log, 60, "ledger sink")
        print(
            f"ledger sink ready: http://127.0.0.1:{cfg.sink_port}/tenants/<id>/ledger, "
            "/usage and /ledger.csv",
            flush=True,
        )
        # The admin console (meter console), in front of the worker and the sink.
        console_log = run_dir / "console.log"
        console = _spawn("console", env, console_log)
        console_url = f"http://127.0.0.1:{cfg.console_port}"
        _wait_ready(console_url, console, console_log, 60, "console")
        simulator = Simulator(
            SimulatorConfig(
                bootstrap=bootstrap,
                topic_prefix=cfg.topic_prefix,
                tenants=tenants,
                rate_per_second=rate,
                duration_seconds=seconds,
            )
        )
        # The notifier, with a local SMTP server and webhook receiver to tell.
        told = DemoNotifications([t.tenant_id for t in simulator.tenants], uuid.uuid4().hex[:12])
        told.mail.start()
        notifier_env = {
            **env,
            "METER_SMTP_HOST": "127.0.0.1",
            "METER_SMTP_PORT": str(told.mail.port),
            "METER_SMTP_STARTTLS": "false",
            "METER_CONSOLE_URL": console_url,
            "METER_NOTIFY_BACKOFF_SECONDS": "2",
            # The demo's webhook receiver listens on 127.0.0.1.
            "METER_NOTIFY_ALLOW_PRIVATE_WEBHOOKS": "true",
        }
        notifier_log = run_dir / "notifier.log"
        notifier = _spawn("notifier", notifier_env, notifier_log)
        _wait_ready(f"http://127.0.0.1:{cfg.notifier_port}", notifier, notifier_log, 60, "notifier")
        print(
            f"notifier ready: http://127.0.0.1:{cfg.notifier_port}/metrics; mail to "
            f"127.0.0.1:{told.mail.port}, webhooks to {told.hooks.url('<tenant>')}",
            flush=True,
        )
        if keys is not None:
            print_tokens(keys, env, simulator.tenants[0].tenant_id, cfg.web_port)
        print(
            f"console: {console_url}/ (sign in with one of the tokens above; English or Greek)",
            flush=True,
        )
        view = LiveView(
            LiveViewConfig(bootstrap=bootstrap, topic_prefix=cfg.topic_prefix),
            simulator.stats,
            notifications=told.lines,
        )

        async def configure_notifications() -> None:
            assert told is not None
            await told.hooks.start()
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await producer.start()
            try:
                topic = cfg.topic(COMMANDS)
                sent = [
                    await producer.send(topic, value, key=tenant.encode())
                    for tenant, value in [*told.commands(sealer), *told.limits()]
                ]
                await asyncio.gather(*sent)
            finally:
                await producer.stop()

        async def both() -> None:
            await configure_notifications()
            view_task = asyncio.create_task(view.run())
            try:
                await simulator.run()
            finally:
                view_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await view_task
                assert told is not None
                await told.hooks.stop()

        run_until_signalled(both())
        print("\n" + simulator.stats.summary(), flush=True)
        return 0
    except RuntimeError as exc:
        print(f"meter demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if console is not None:
            print("stopping the console ...", flush=True)
            _stop(console)
        if notifier is not None:
            print("stopping the notifier ...", flush=True)
            _stop(notifier)
        if told is not None:
            told.mail.stop()
        if sink is not None:
            print("stopping the ledger sink ...", flush=True)
            _stop(sink)
        print("stopping the worker ...", flush=True)
        _stop(worker)
        if started_broker:
            print("stopping the local Kafka broker ...", flush=True)
            kafka_local.stop_background(kafka_local.default_state_dir())
