"""Integration tests run against a real Kafka broker.

By default the session starts its own broker (processor.dev.kafka_local.LocalKafka) on
free loopback ports in a fresh tmp dir, so parallel pytest runs never share ports
or data. With KAFKA_BOOTSTRAP_SERVERS set, that broker is used instead and none is
started.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from processor.dev.kafka_local import LocalKafka, wait_ready_blocking

_HERE = Path(__file__).resolve().parent
EXTERNAL_ENV = "KAFKA_BOOTSTRAP_SERVERS"


class KafkaEndpoint(Protocol):
    @property
    def bootstrap(self) -> str: ...


@dataclass(frozen=True)
class ExternalKafka:
    bootstrap: str


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's.
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaEndpoint]:
    """The broker for this test session: started here, or the external one."""
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        # Fail once, clearly, instead of every test timing out on its own.
        wait_ready_blocking(external, 30)
        yield ExternalKafka(external)
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# For tests that start brokers of their own (lifecycle tests of kafka_local itself).
starts_own_brokers = pytest.mark.skipif(
    bool(os.environ.get(EXTERNAL_ENV)),
    reason=f"{EXTERNAL_ENV} is set: this session starts no brokers of its own",
)


@pytest.fixture
def local_kafka_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalKafka]]:
    """Private brokers for tests that stop, kill or restart them.

    Never the session broker: other tests must not see it go away. Keyword
    arguments go to LocalKafka; each broker gets a fresh data dir and free ports.
    """
    if os.environ.get(EXTERNAL_ENV):
        pytest.skip(f"{EXTERNAL_ENV} is set: this session starts no brokers of its own")
    brokers: list[LocalKafka] = []

    def make(**kwargs: Any) -> LocalKafka:
        broker = LocalKafka(tmp_path_factory.mktemp("private-kafka"), **kwargs)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.kill()  # their data is throwaway; no need for a graceful shutdown


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique topic names, so tests never see each other's records (or a rerun's)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:80]

    def make(suffix: str = "") -> str:
        return f"it.{base}{'.' + suffix if suffix else ''}.{uuid.uuid4().hex[:8]}"

    return make
