"""SASL on a real broker: a private LocalKafka with a SASL_PLAINTEXT listener.

The SCRAM-SHA-512 user is created when the storage is formatted (KRaft keeps SCRAM
credentials in its metadata log; `kafka-storage format --add-scram`), and PLAIN
users come from the listener's JAAS line. The broker keeps a PLAINTEXT listener
only for LocalKafka's own readiness probe; every client under test uses the SASL one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from processor.dev.kafka_local import LocalKafka, free_port
from tests.integration.harness import METER, Deployment, Worker, eventually

pytestmark = pytest.mark.integration

USER = "meter"
SCRAM_PASSWORD = "scram-pw-5ad1c0"
PLAIN_PASSWORD = "plain-pw-77e0b3"
WRONG_PASSWORD = "not-the-pw-91f2"


def sasl_broker(factory: Callable[..., LocalKafka]) -> tuple[LocalKafka, str]:
    port, controller, sasl = free_port(), free_port(), free_port()
    host = "127.0.0.1"
    properties = {
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller},"
        f"SASL_PLAINTEXT://{host}:{sasl}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT",
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{USER}="{PLAIN_PASSWORD}";'
        ),
    }
    broker = factory(
        port=port,
        controller_port=controller,
        extra_properties=properties,
        format_args=["--add-scram", f"SCRAM-SHA-512=[name={USER},password={SCRAM_PASSWORD}]"],
    )
    broker.start()
    return broker, f"{host}:{sasl}"


def sasl_env(mechanism: str, password: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": password,
    }


async def run_meter(env: dict[str, str], *argv: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        METER,
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_scram_worker_and_plain_cli_work_and_a_wrong_password_fails_fast(
    local_kafka_factory: Callable[..., LocalKafka], tmp_path: Path
) -> None:
    _, bootstrap = await asyncio.to_thread(sasl_broker, local_kafka_factory)
    d = Deployment(
        bootstrap,
        tmp_path,
        partitions=2,
        env_extra=sasl_env("SCRAM-SHA-512", SCRAM_PASSWORD),
    )
    worker = Worker(d, 0).start()
    try:
        # The right SCRAM credentials: topics created, Faust consuming, ready.
        await worker.wait_ready()

        # The CLI publishes with PLAIN over the same listener; the worker applies it.
        cli_env = {**d.env(1, worker.port), **sasl_env("PLAIN", PLAIN_PASSWORD)}
        code, out = await run_meter(cli_env, "add-funds", "acme", "7.50")
        assert code == 0, out

        async def applied() -> Any:
            status, body = await worker.get("/tenants/acme/account")
            return status == 200 and body["balance"] == "7.5000"

        await eventually(applied, timeout=30, what="the SASL top-up applied")

        # A wrong password: the worker stops at once, says why, and never prints it.
        wrong_env = {**d.env(2, free_port()), **sasl_env("SCRAM-SHA-512", WRONG_PASSWORD)}
        started = time.monotonic()
        code, out = await run_meter(wrong_env, "worker", timeout=30)
        elapsed = time.monotonic() - started
        assert code == 2, out
        assert "refused our credentials" in out, out
        assert "SCRAM-SHA-512" in out and repr(USER) in out
        assert "KAFKA_SASL_PASSWORD" in out
        assert elapsed < 20, f"took {elapsed:.1f}s to give up"
        assert WRONG_PASSWORD not in out

        # The same for the CLI, with the wrong PLAIN password.
        cli_wrong = {**cli_env, "KAFKA_SASL_PASSWORD": WRONG_PASSWORD}
        code, out = await run_meter(cli_wrong, "add-funds", "acme", "1.00")
        assert code == 1 and "refused our credentials" in out, out
        assert WRONG_PASSWORD not in out
    finally:
        worker.stop()
        print(f"--- worker log ---\n{worker.log_tail(80)}")
    log = worker.log_path.read_text(errors="replace")
    assert SCRAM_PASSWORD not in log and json.dumps(SCRAM_PASSWORD) not in log
