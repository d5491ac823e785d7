"""A real single-node Apache Kafka broker, started by the project itself.

Tests, `make run` and the CLI need a genuine Kafka (transactions, consumer groups,
compaction) and no Docker, so this package runs the broker straight from the jars
that deploy/kafka/pom.xml fetches from Maven Central: one JVM in KRaft combined
mode (broker + controller, node 1), listening on loopback only.

Two ways to use it:

* `LocalKafka` - owned by the calling process (tests). `start()` returns once the
  broker answers a metadata request; `stop()`, `kill()` and `restart()` drive it.
  The data dir survives restarts, so "hard-kill the broker and bring it back"
  scenarios see the same topics and offsets.
* `start_background` / `status` / `stop_background` - a broker that outlives the
  CLI invocation that started it, tracked through `<state dir>/kafka.json`.

Everything here is stdlib only; the readiness check speaks the Kafka wire protocol
directly so it works the same from sync and async code and without aiokafka's
connection-error logging while the broker is still booting.

Its parts: `host` (settings from the environment, the checkout, ports, Java, log
files), `jars`, `probe` (readiness), `jvm` (flags, class-data sharing, signals),
`broker` (`LocalKafka`) and `background` (`start_background`, `status`,
`stop_background`).
"""

from processor.dev.kafka_local.background import (
    BrokerStatus,
    start_background,
    status,
    stop_background,
)
from processor.dev.kafka_local.broker import LocalKafka
from processor.dev.kafka_local.host import (
    LIBS_ENV,
    LocalKafkaError,
    default_state_dir,
    free_port,
    free_port_run,
    java_executable,
)
from processor.dev.kafka_local.jars import ensure_jars
from processor.dev.kafka_local.probe import wait_ready, wait_ready_blocking

__all__ = [
    "LIBS_ENV",
    "BrokerStatus",
    "LocalKafka",
    "LocalKafkaError",
    "default_state_dir",
    "ensure_jars",
    "free_port",
    "free_port_run",
    "java_executable",
    "start_background",
    "status",
    "stop_background",
    "wait_ready",
    "wait_ready_blocking",
]
