"""Where the local broker runs: environment settings, the checkout, ports, Java, log files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

LIBS_ENV = "METER_KAFKA_LIBS"
# Replaces DEFAULT_JVM_OPTS. TieredStopAtLevel=1 (C1 JIT only) cuts start-up CPU by
# about a third; the steady-state cost is irrelevant next to Python clients, but a
# benchmark of the broker itself should drop it.
JVM_OPTS_ENV = "METER_KAFKA_JVM_OPTS"
DEFAULT_JVM_OPTS = "-Xms128m -Xmx512m -XX:TieredStopAtLevel=1"
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 20.0

NODE_ID = 1
HOST = "127.0.0.1"


class LocalKafkaError(RuntimeError):
    """The local broker could not be provisioned, started or reached."""


def checkout_root() -> Path | None:
    root = Path(__file__).resolve().parents[3]
    return root if (root / "deploy" / "kafka" / "pom.xml").is_file() else None


def default_state_dir() -> Path:
    """Where the CLI keeps its background broker: `<checkout>/.run/kafka`.

    An installed package has no checkout to write into, so it uses the user's cache.
    """
    root = checkout_root()
    if root is not None:
        return root / ".run" / "kafka"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "credits-meter" / "kafka"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Racy by nature (someone may take it before the broker binds it); `LocalKafka`
    retries with fresh ports when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_run(count: int) -> int:
    """A port p with p .. p+count-1 free now (`meter worker --processes` children take
    p + i); racy like `free_port`."""
    for _ in range(50):
        base = free_port()
        if all(port_is_free(port) for port in range(base + 1, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The JVM binds with SO_REUSEADDR, so a previous broker's TIME_WAIT sockets
        # must not make the port look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def java_executable() -> str:
    """`$JAVA_HOME/bin/java` when JAVA_HOME is set, else `java` from PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        # A stale JAVA_HOME silently replaced by some other java is harder to debug.
        raise LocalKafkaError(f"JAVA_HOME is set to {home!r} but {candidate} is not executable")
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError(
            "Java 17+ is needed to run the local Kafka broker, but `java` is not on PATH "
            "(install a JDK/JRE 17+ or set JAVA_HOME)"
        )
    return found


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so parallel test sessions / CLI calls don't race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_from(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    return "\n".join(read_from(path, offset).splitlines()[-lines:])


def log_problems(path: Path, offset: int = 0, limit: int = 8) -> str:
    """The ERROR and FATAL lines of a run's log: the cause of a failed start is logged
    before the shutdown that follows it, often further back than a tail reaches."""
    # The cause itself is often the exception line right after the ERROR line
    # ("KafkaException: Socket server failed to bind ...: Address already in use").
    markers = (" ERROR ", " FATAL ", "Exception: ", "Caused by: ")
    found = [
        line for line in read_from(path, offset).splitlines() if any(m in line for m in markers)
    ]
    return "\n".join(dict.fromkeys(found[: limit * 3]))


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
