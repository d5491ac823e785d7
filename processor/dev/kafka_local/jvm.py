"""The broker's JVM: its flags, fallback logging, class-data sharing, signals, properties."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from processor.dev.kafka_local.host import LocalKafkaError

JVM_FLAGS = (
    "-server",
    # Kafka 4 needs a HotSpot JDK 17+, which knows every flag here; this only keeps
    # another JVM from refusing to start over the performance flags.
    "-XX:+IgnoreUnrecognizedVMOptions",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    # A broker that ran out of heap limps on and answers nothing; better dead and visible.
    "-XX:+ExitOnOutOfMemoryError",
    # Otherwise every JVM leaves an mmapped hsperfdata file in /tmp.
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)
# Used only when the package runs outside a checkout (no deploy/kafka/log4j2.yaml).
FALLBACK_LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    File:
      name: BrokerLog
      fileName: "${sys:meter.kafka.logFile:-broker.log}"
      append: true
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: BrokerLog
"""


# ------------------------------------------------------------- class-data sharing

CDS_ENV = "METER_KAFKA_CDS"


def cds_archive(java: str, libs: Path) -> Path:
    """The class-data-sharing archive for this JVM build and jar set.

    Loading and verifying Kafka's ~9000 classes is most of a broker's start-up CPU;
    a dynamic CDS archive (JDK 13+) of them roughly halves it. The name hashes what
    the archive depends on, so a JDK update or new jars simply get a new archive.
    """
    digest = hashlib.sha256()
    java_path = Path(java).resolve()
    for part in (java_path, java_path.parent.parent / "lib" / "server" / "libjvm.so"):
        with contextlib.suppress(OSError):
            st = part.stat()
            digest.update(f"{part}:{st.st_size}:{st.st_mtime_ns};".encode())
    for jar in sorted(libs.glob("*.jar")):
        st = jar.stat()
        digest.update(f"{jar.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return libs.parent / f"kafka-cds-{digest.hexdigest()[:16]}.jsa"


def remove_stale_cds_temps(directory: Path) -> None:
    # Left by brokers that were killed while writing their archive.
    cutoff = time.time() - 3600
    for tmp in directory.glob("kafka-cds-*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def signal_group(pid: int, sig: signal.Signals) -> None:
    # The broker is a session leader (start_new_session), so its pid is its group id;
    # signalling the group also reaches anything the JVM may have forked.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate(pid: int, exited: Callable[[], bool], timeout: float) -> bool:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns False if SIGKILL was needed."""
    if exited():
        return True
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited():
            return True
        time.sleep(0.05)  # polling a process we cannot wait() on from here
    # A broker can hang in controlled shutdown (e.g. waiting for a quorum that left).
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while not exited() and time.monotonic() < deadline:
        time.sleep(0.05)
    return False


def read_ports(properties: Path) -> tuple[int | None, int | None]:
    try:
        text = properties.read_text()
    except OSError:
        return None, None
    broker = re.search(r"^listeners=.*PLAINTEXT://[^:,]+:(\d+)", text, re.MULTILINE)
    controller = re.search(r"^listeners=.*CONTROLLER://[^:,]+:(\d+)", text, re.MULTILINE)
    return (
        int(broker.group(1)) if broker else None,
        int(controller.group(1)) if controller else None,
    )


def new_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid(): url-safe base64 of 16 random bytes.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # would be parsed as a command-line flag
            return cid


def escape_property(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise LocalKafkaError(f"broker property values must be one line: {value!r}")
    return value.replace("\\", "\\\\")
