"""A real single-node Apache Kafka broker, started by the project itself.

Tests, `make run` and the CLI need a genuine Kafka (transactions, consumer groups,
compaction) and no Docker, so this module runs the broker straight from the jars
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
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict

__all__ = [
    "BrokerStatus",
    "LocalKafka",
    "LocalKafkaError",
    "default_state_dir",
    "ensure_jars",
    "free_port",
    "java_executable",
    "start_background",
    "status",
    "stop_background",
    "wait_ready",
    "wait_ready_blocking",
]

LIBS_ENV = "METER_KAFKA_LIBS"
# Replaces DEFAULT_JVM_OPTS. TieredStopAtLevel=1 (C1 JIT only) cuts start-up CPU by
# about a third; the steady-state cost is irrelevant next to Python clients, but a
# benchmark of the broker itself should drop it.
JVM_OPTS_ENV = "METER_KAFKA_JVM_OPTS"
DEFAULT_JVM_OPTS = "-Xms128m -Xmx512m -XX:TieredStopAtLevel=1"
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 20.0

_NODE_ID = 1
_HOST = "127.0.0.1"
_STAMP_NAME = ".complete.json"
# A libs dir without these cannot start a broker that logs; checked besides the stamp
# so a hand-made METER_KAFKA_LIBS dir (e.g. a Kafka distribution's libs/) is vetted too.
_REQUIRED_JAR_PREFIXES = (
    "kafka_2.13-",
    "kafka-clients-",
    "kafka-server-",
    "kafka-raft-",
    "kafka-metadata-",
    "kafka-storage-",
    "scala-library-",
    "slf4j-api-",
    "log4j-core-",
    "log4j-slf4j2-impl-",
    "jackson-dataformat-yaml-",
)
_JVM_FLAGS = (
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
_FALLBACK_LOG4J2 = """\
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


class LocalKafkaError(RuntimeError):
    """The local broker could not be provisioned, started or reached."""


# --------------------------------------------------------------------------- helpers


def _checkout_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "deploy" / "kafka" / "pom.xml").is_file() else None


def default_state_dir() -> Path:
    """Where the CLI keeps its background broker: `<checkout>/.run/kafka`.

    An installed package has no checkout to write into, so it uses the user's cache.
    """
    root = _checkout_root()
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
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The JVM binds with SO_REUSEADDR, so a previous broker's TIME_WAIT sockets
        # must not make the port look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
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
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so parallel test sessions / CLI calls don't race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_from(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    return "\n".join(_read_from(path, offset).splitlines()[-lines:])


def _problems(path: Path, offset: int = 0, limit: int = 8) -> str:
    """The ERROR and FATAL lines of a run's log: the cause of a failed start is logged
    before the shutdown that follows it, often further back than a tail reaches."""
    # The cause itself is often the exception line right after the ERROR line
    # ("KafkaException: Socket server failed to bind ...: Address already in use").
    markers = (" ERROR ", " FATAL ", "Exception: ", "Caused by: ")
    found = [
        line for line in _read_from(path, offset).splitlines() if any(m in line for m in markers)
    ]
    return "\n".join(dict.fromkeys(found[: limit * 3]))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ------------------------------------------------------------------------------ jars


def _missing_jars(libs: Path) -> list[str]:
    names = [p.name for p in libs.glob("*.jar")] if libs.is_dir() else []
    return [pre for pre in _REQUIRED_JAR_PREFIXES if not any(n.startswith(pre) for n in names)]


def _read_stamp(stamp: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _libs_complete(libs: Path, pom_digest: str) -> bool:
    stamp = _read_stamp(libs / _STAMP_NAME)
    if stamp is None or stamp.get("pom_sha256") != pom_digest:
        return False
    jars = stamp.get("jars")
    if not isinstance(jars, list) or not all((libs / str(j)).is_file() for j in jars):
        return False
    return not _missing_jars(libs)


def ensure_jars(repo_root: Path | None = None) -> Path:
    """Return a directory holding Kafka's broker jars, fetching them with Maven if needed.

    `METER_KAFKA_LIBS` points at a ready-made libs dir and skips Maven entirely.
    Otherwise `<repo>/deploy/kafka/target/libs` is (re)filled when it is missing,
    incomplete, or was fetched for a different pom (i.e. another Kafka version).
    """
    override = os.environ.get(LIBS_ENV)
    if override:
        libs = Path(override).expanduser().resolve()
        missing = _missing_jars(libs)
        if missing:
            raise LocalKafkaError(
                f"{LIBS_ENV}={override} does not hold the jars a broker needs; "
                f"missing: {', '.join(p + '*.jar' for p in missing)}"
            )
        return libs

    root = repo_root.resolve() if repo_root is not None else _checkout_root()
    pom = root / "deploy" / "kafka" / "pom.xml" if root is not None else None
    if pom is None or not pom.is_file():
        raise LocalKafkaError(
            "cannot find deploy/kafka/pom.xml (not running from a checkout?); "
            f"set {LIBS_ENV} to a directory of Kafka broker jars"
        )
    libs = pom.parent / "target" / "libs"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _libs_complete(libs, digest):
        return libs

    java_executable()  # Maven needs it as well, and the broker will: fail early and clearly.
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "Maven (`mvn`) is needed once to fetch Kafka's jars from Maven Central but is "
            f"not on PATH; install it or set {LIBS_ENV} to a directory of Kafka broker jars"
        )
    with _file_lock(pom.parent / "target" / ".libs.lock"):
        if _libs_complete(libs, digest):  # another process fetched them while we waited
            return libs
        old = _read_stamp(libs / _STAMP_NAME)
        if old is not None and old.get("pom_sha256") != digest:
            # Jars of the previous Kafka version would sit next to the new ones on the
            # wildcard classpath and the JVM would load whichever it lists first.
            shutil.rmtree(libs)
        cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                cmd, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"`{' '.join(cmd)}` did not finish in 15 minutes") from exc
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise LocalKafkaError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{output}")
        missing = _missing_jars(libs)
        if missing:
            raise LocalKafkaError(f"Maven finished but {libs} still lacks {missing}")
        stamp = {"pom_sha256": digest, "jars": sorted(p.name for p in libs.glob("*.jar"))}
        (libs / _STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n")
    return libs


# ------------------------------------------------------------------ readiness probe

_METADATA_API_KEY = 3
# Kafka 4 dropped Metadata v0-v3 (KIP-896). v4 is the oldest version it still serves
# and, unlike v9+, has no tagged fields, so it is simple to encode by hand.
_METADATA_VERSION = 4
_MAX_RESPONSE = 1 << 20  # no topics are asked for; anything bigger is not Kafka talking


@dataclass(frozen=True)
class _ClusterView:
    cluster_id: str | None
    controller_id: int
    broker_ids: tuple[int, ...]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._data):
            raise ValueError("truncated metadata response")
        (value,) = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += size
        return value

    def int32(self) -> int:
        value: int = self._take(">i")
        return value

    def string(self) -> str | None:
        length: int = self._take(">h")
        if length < 0:
            return None
        if self._pos + length > len(self._data):
            raise ValueError("truncated metadata response")
        text = self._data[self._pos : self._pos + length].decode("utf-8", "replace")
        self._pos += length
        return text


def _metadata_request(correlation_id: int) -> bytes:
    client_id = b"credits-meter-readiness"
    header = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(client_id)
    )
    # topics = empty array (cluster info only), allow_auto_topic_creation = false
    body = struct.pack(">ib", 0, 0)
    payload = header + client_id + body
    return struct.pack(">i", len(payload)) + payload


def _parse_metadata(payload: bytes, correlation_id: int) -> _ClusterView:
    reader = _Reader(payload)
    if reader.int32() != correlation_id:
        raise ValueError("metadata response for another request")
    reader.int32()  # throttle_time_ms
    brokers: list[int] = []
    for _ in range(reader.int32()):
        brokers.append(reader.int32())
        reader.string()  # host
        reader.int32()  # port
        reader.string()  # rack
    cluster_id = reader.string()
    controller_id = reader.int32()
    return _ClusterView(cluster_id, controller_id, tuple(brokers))


def _endpoints(bootstrap: str) -> list[tuple[str, int]]:
    result: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        entry = item.strip()
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            raise LocalKafkaError(f"bad bootstrap address {item!r} (want host:port)")
        result.append((host.strip("[]") or _HOST, int(port)))
    if not result:
        raise LocalKafkaError("empty bootstrap address")
    return result


def _is_ready(view: _ClusterView) -> bool:
    # A KRaft broker lists itself only once it is registered and unfenced, i.e. able
    # to serve produce/fetch; a controller id of -1 means no quorum leader yet.
    return bool(view.broker_ids) and view.controller_id >= 0


def _probe_blocking(host: str, port: int, timeout: float) -> _ClusterView:
    correlation_id = int.from_bytes(os.urandom(3), "big")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_metadata_request(correlation_id))
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        if not 0 < size <= _MAX_RESPONSE:
            raise ValueError(f"implausible response size {size}")
        return _parse_metadata(_recv_exact(sock, size), correlation_id)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


async def _probe_async(host: str, port: int, timeout: float) -> _ClusterView:  # noqa: ASYNC109
    correlation_id = int.from_bytes(os.urandom(3), "big")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_metadata_request(correlation_id))
            await writer.drain()
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            if not 0 < size <= _MAX_RESPONSE:
                raise ValueError(f"implausible response size {size}")
            return _parse_metadata(await reader.readexactly(size), correlation_id)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _not_ready_error(bootstrap: str, timeout: float, last: str) -> LocalKafkaError:
    return LocalKafkaError(
        f"Kafka at {bootstrap} did not answer a metadata request within {timeout:g}s "
        f"(last attempt: {last})"
    )


def wait_ready_blocking(
    bootstrap: str,
    timeout: float = DEFAULT_START_TIMEOUT,
    *,
    check_alive: Callable[[], None] | None = None,
) -> None:
    """Block until a broker at `bootstrap` answers a metadata request listing itself.

    `check_alive` is called between attempts and may raise to give up early (e.g.
    when the broker process has exited).
    """
    endpoints = _endpoints(bootstrap)
    deadline = time.monotonic() + timeout
    delay = 0.05
    last = "no attempt made"
    while True:
        for host, port in endpoints:
            remaining = deadline - time.monotonic()
            try:
                view = _probe_blocking(host, port, max(0.2, min(2.0, remaining)))
            except (OSError, ValueError) as exc:
                last = f"{host}:{port}: {exc or type(exc).__name__}"
                continue
            if _is_ready(view):
                return
            last = f"{host}:{port}: answered but not ready ({view})"
        if check_alive is not None:
            check_alive()
        if time.monotonic() + delay > deadline:
            raise _not_ready_error(bootstrap, timeout, last)
        time.sleep(delay)  # poll interval between probes, not a guess at readiness
        delay = min(delay * 2, 0.5)


# The timeout parameters below are deliberate (ASYNC109): they mirror the blocking API,
# and the error raised on expiry names the last failure, which asyncio.timeout cannot.
async def wait_ready(
    bootstrap: str,
    timeout: float = DEFAULT_START_TIMEOUT,  # noqa: ASYNC109
) -> None:
    """Async twin of `wait_ready_blocking`: poll until the broker answers metadata.

    Raises `LocalKafkaError` after `timeout` seconds, naming the last failure.
    """
    endpoints = _endpoints(bootstrap)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    last = "no attempt made"
    while True:
        for host, port in endpoints:
            remaining = deadline - loop.time()
            try:
                view = await _probe_async(host, port, max(0.2, min(2.0, remaining)))
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
                last = f"{host}:{port}: {exc or type(exc).__name__}"
                continue
            if _is_ready(view):
                return
            last = f"{host}:{port}: answered but not ready ({view})"
        if loop.time() + delay > deadline:
            raise _not_ready_error(bootstrap, timeout, last)
        await asyncio.sleep(delay)  # poll interval between probes
        delay = min(delay * 2, 0.5)


# ------------------------------------------------------------------ process control

# Brokers owned by this process; stopped at interpreter exit so an aborted test run
# does not leave JVMs behind (they live in their own session, so no terminal signal
# reaches them).
_OWNED: set[LocalKafka] = set()


def _stop_owned_at_exit() -> None:
    for broker in list(_OWNED):
        broker.stop(timeout=10.0)


def _exited(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is not None


atexit.register(_stop_owned_at_exit)


# ------------------------------------------------------------- class-data sharing

CDS_ENV = "METER_KAFKA_CDS"


def _cds_archive(java: str, libs: Path) -> Path:
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


def _remove_stale_cds_temps(directory: Path) -> None:
    # Left by brokers that were killed while writing their archive.
    cutoff = time.time() - 3600
    for tmp in directory.glob("kafka-cds-*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The broker is a session leader (start_new_session), so its pid is its group id;
    # signalling the group also reaches anything the JVM may have forked.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _terminate(pid: int, exited: Callable[[], bool], timeout: float) -> bool:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns False if SIGKILL was needed."""
    if exited():
        return True
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited():
            return True
        time.sleep(0.05)  # polling a process we cannot wait() on from here
    # A broker can hang in controlled shutdown (e.g. waiting for a quorum that left).
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while not exited() and time.monotonic() < deadline:
        time.sleep(0.05)
    return False


def _read_ports(properties: Path) -> tuple[int | None, int | None]:
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


def _new_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid(): url-safe base64 of 16 random bytes.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # would be parsed as a command-line flag
            return cid


def _escape_property(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise LocalKafkaError(f"broker property values must be one line: {value!r}")
    return value.replace("\\", "\\\\")


class LocalKafka:
    """A single-node KRaft broker (broker + controller in one JVM) on loopback.

    `data_dir` holds server.properties, broker.log, broker.stdout.log (JVM output
    from before logging starts) and the Kafka data (`data/`). It is formatted once
    and reused on every later start, so restarts - clean or after `kill()` - keep
    topics, records and committed offsets.

    With `port`/`controller_port` left as None, the ports of a previous run in the
    same data dir are reused when still free, else fresh free ports are picked, so
    `bootstrap` is known before `start()`. Only if a picked port gets taken before
    the JVM binds it does the first `start()` move to another one; after that first
    successful start the ports stay fixed, so `bootstrap` survives `restart()`.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        extra_properties: Mapping[str, str] | None = None,
        *,
        libs_dir: Path | None = None,
        jvm_opts: str | None = None,
        format_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._extra = dict(extra_properties or {})
        self._libs_dir = libs_dir
        self._jvm_opts = jvm_opts or os.environ.get(JVM_OPTS_ENV) or DEFAULT_JVM_OPTS
        # Extra `kafka-storage format` arguments, used once when the data dir is new
        # (e.g. --add-scram to create SASL/SCRAM users, which KRaft stores as metadata).
        self._format_args = tuple(format_args)
        self._proc: subprocess.Popen[bytes] | None = None
        # Stopped at our exit; a broker started for the CLI outlives it.
        self.owned = True
        # (temp file the JVM dumps its CDS archive to at exit, final archive path)
        self._cds_pending: tuple[Path, Path] | None = None
        old_port, old_controller = _read_ports(self.properties_file)
        self._repick_port = port is None
        self._repick_controller = controller_port is None
        self.port = port or (old_port if old_port and _port_is_free(old_port) else free_port())
        self.controller_port = controller_port or (
            old_controller if old_controller and _port_is_free(old_controller) else 0
        )
        if not self.controller_port or self.controller_port == self.port:
            self.controller_port = self._other_free_port()

    # -- paths and addresses

    @property
    def bootstrap(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def stdout_file(self) -> Path:
        return self.data_dir / "broker.stdout.log"

    @property
    def kafka_data_dir(self) -> Path:
        return self.data_dir / "data"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<LocalKafka {self.bootstrap} {state} data_dir={self.data_dir}>"

    # -- configuration

    def server_properties(self) -> dict[str, str]:
        """The broker config this object writes; `extra_properties` win over these."""
        props = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            # Static quorum: must not be combined with `storage format --standalone`.
            "controller.quorum.voters": f"{_NODE_ID}@{_HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{_HOST}:{self.port},CONTROLLER://{_HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.kafka_data_dir),
            # The processor declares its own topics; a typo must fail, not create a topic.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Internal topics default to replication 3, impossible on one broker.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # 50 partitions each by default; creating them slows the first group join and
            # the first InitProducerId by a second or two, and one broker gains nothing.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            # Default 3 s delay before the first rebalance only slows tests down.
            "group.initial.rebalance.delay.ms": "0",
            # After a hard kill the restarted broker's registration is refused until the
            # controller fences the old incarnation, i.e. until this session times out
            # (default 9 s, heartbeats every 2 s). Both JVM parts share one process, so
            # a short session cannot be cut by network trouble.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            # Default 6 s floor; tests use short session timeouts to see failover fast.
            "group.min.session.timeout.ms": "1000",
            # Transactions left open by a killed producer are aborted once their timeout
            # expires; check every second instead of every 10 s so that happens promptly.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
            # Default 128 MiB of heap for compaction (faust changelogs are compacted);
            # too much for a 512 MiB heap and far more than local data needs.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        props.update(self._extra)
        return props

    def _write_properties(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Written by processor/dev/kafka_local.py on every start; edits are overwritten.",
            "# Pass extra_properties to LocalKafka instead.",
        ]
        lines += [f"{k}={_escape_property(v)}" for k, v in self.server_properties().items()]
        tmp = self.properties_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.properties_file)

    def _log4j_config(self) -> Path:
        root = _checkout_root()
        shipped = root / "deploy" / "kafka" / "log4j2.yaml" if root is not None else None
        if shipped is not None and shipped.is_file():
            return shipped
        written = self.data_dir / "log4j2.yaml"
        written.write_text(_FALLBACK_LOG4J2)
        return written

    def _cds_flags(self, java: str, libs: Path, *, may_create: bool) -> list[str]:
        """Use the CDS archive if there is one, else (maybe) have this JVM write it.

        The archive is written when the JVM exits cleanly, so only brokers this
        object will stop itself create one; `stop()` moves it into place.
        """
        if os.environ.get(CDS_ENV, "1") == "0":
            return []
        archive = _cds_archive(java, libs)
        if archive.is_file():
            return [f"-XX:SharedArchiveFile={archive}"]
        if not may_create or not os.access(archive.parent, os.W_OK):
            return []
        _remove_stale_cds_temps(archive.parent)
        tmp = archive.with_name(f"{archive.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._cds_pending = (tmp, archive)
        return [f"-XX:ArchiveClassesAtExit={tmp}"]

    def _finish_cds(self, clean_exit: bool) -> None:
        pending, self._cds_pending = self._cds_pending, None
        if pending is None:
            return
        tmp, archive = pending
        if clean_exit and tmp.is_file() and tmp.stat().st_size > 0:
            os.replace(tmp, archive)  # atomic: concurrent starts see all of it or none
            # Archives for replaced jars or JDKs are dead weight (~50 MB each); JVMs
            # still mapping one keep their mapping after the unlink.
            for old in archive.parent.glob("kafka-cds-*.jsa"):
                if old != archive:
                    old.unlink(missing_ok=True)
        else:
            tmp.unlink(missing_ok=True)  # a killed JVM may have left half an archive

    def _java_command(
        self, java: str, libs: Path, jvm_opts: str, *args: str, create_cds: bool = False
    ) -> list[str]:
        return [
            java,
            *jvm_opts.split(),
            *_JVM_FLAGS,
            *self._cds_flags(java, libs, may_create=create_cds),
            f"-Dlog4j2.configurationFile={self._log4j_config()}",
            f"-Dmeter.kafka.logFile={self.log_file}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format_if_needed(self, java: str, libs: Path) -> None:
        if (self.kafka_data_dir / "meta.properties").is_file():
            return  # formatted before: keep the data (restarts must not lose it)
        log_offset = _size(self.log_file)
        cmd = self._java_command(
            java,
            libs,
            "-Xmx256m -XX:TieredStopAtLevel=1",
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            _new_cluster_id(),
            "--config",
            str(self.properties_file),
            *self._format_args,
        )
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                cmd, capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"formatting {self.kafka_data_dir} timed out") from exc
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise LocalKafkaError(
                f"kafka-storage format of {self.kafka_data_dir} failed ({proc.returncode}):\n"
                f"{output}\n{_tail(self.log_file, 20, log_offset)}"
            )

    def _other_free_port(self) -> int:
        while True:
            port = free_port()
            if port not in (self.port, self.controller_port):
                return port

    # -- lifecycle

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start the broker and return once it answers; no-op if already running.

        Raises `LocalKafkaError` with the tail of broker.log if the JVM exits or the
        broker does not answer within `timeout` seconds. A port taken between
        picking and binding is retried with fresh ports (only for picked ports).
        """
        if self.is_running():
            return
        libs = self._libs_dir or ensure_jars()
        java = java_executable()
        attempts = 3 if (self._repick_port or self._repick_controller) else 1
        for attempt in range(1, attempts + 1):
            self._write_properties()
            self._format_if_needed(java, libs)
            log_offset, out_offset = _size(self.log_file), _size(self.stdout_file)
            self._spawn(java, libs)
            try:
                wait_ready_blocking(self.bootstrap, timeout, check_alive=self._check_alive)
            except LocalKafkaError as exc:
                self.kill()
                output = _tail(self.log_file, 40, log_offset)
                stdout = _tail(self.stdout_file, 20, out_offset)
                problems = _problems(self.log_file, log_offset)
                everything = _read_from(self.log_file, log_offset) + stdout
                if attempt < attempts and self._repick_clashed_port(everything):
                    continue
                raise LocalKafkaError(
                    f"{exc}"
                    + (f"\n--- errors in {self.log_file} ---\n{problems}" if problems else "")
                    + f"\n--- {self.log_file} (tail) ---\n{output}"
                    + (f"\n--- {self.stdout_file} (tail) ---\n{stdout}" if stdout else "")
                ) from None
            except BaseException:
                self.kill()  # e.g. Ctrl-C while waiting: don't leave a half-started JVM
                raise
            # From now on the ports are part of this broker's identity: clients that
            # reconnect after a restart must find it at the same address.
            self._repick_port = self._repick_controller = False
            return

    def _repick_clashed_port(self, output: str) -> bool:
        """After a failed bind, swap the clashing port if we picked it (not if given)."""
        clashed = {int(p) for p in re.findall(r"failed to bind to [^\s]*:(\d+)", output)}
        if self._repick_port and self.port in clashed:
            self.port = self._other_free_port()
        elif self._repick_controller and self.controller_port in clashed:
            self.controller_port = self._other_free_port()
        else:
            return False
        return True

    def _spawn(self, java: str, libs: Path) -> None:
        cmd = self._java_command(
            java,
            libs,
            self._jvm_opts,
            "kafka.Kafka",
            str(self.properties_file),
            create_cds=self.owned,
        )
        with self.stdout_file.open("ab") as out:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Own session and process group: Ctrl-C in a terminal or a signal to the
                # test runner's group doesn't reach it, and `kill()` can hit just it.
                start_new_session=True,
            )
        if self.owned:
            _OWNED.add(self)

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise LocalKafkaError(
                f"the broker process exited with code {self._proc.returncode} before answering"
            )

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Graceful shutdown: SIGTERM, then SIGKILL if it has not exited in `timeout` s."""
        proc = self._proc
        if proc is None:
            return
        in_time = _terminate(proc.pid, _exited(proc), timeout)
        returncode = proc.wait()
        _OWNED.discard(self)
        self._proc = None
        # A negative code means death by signal (SIGKILL): no complete CDS archive then.
        self._finish_cds(clean_exit=in_time and returncode >= 0)

    def kill(self) -> None:
        """SIGKILL right away: simulates a crashed broker (no clean shutdown marker)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        _OWNED.discard(self)
        self._proc = None
        self._finish_cds(clean_exit=False)

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT, *, hard: bool = False) -> None:
        """Stop (or with `hard=True`, SIGKILL) and start again on the same data and ports."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start(timeout)

    # Async variants run the blocking calls in a thread so that code under test sharing
    # the event loop (heartbeats, producers) keeps running during the seconds they take.

    async def astart(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:  # noqa: ASYNC109
        await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:  # noqa: ASYNC109
        await asyncio.to_thread(self.stop, timeout)

    async def arestart(
        self,
        timeout: float = DEFAULT_START_TIMEOUT,  # noqa: ASYNC109
        *,
        hard: bool = False,
    ) -> None:
        await asyncio.to_thread(self.restart, timeout, hard=hard)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()


# ----------------------------------------------------------------- background mode


class BrokerStatus(TypedDict):
    running: bool
    answering: bool
    pid: int
    bootstrap: str
    data_dir: str
    log_file: str
    started_at: str


def _state_file(state_dir: Path) -> Path:
    return state_dir / "kafka.json"


def _pid_is_broker(pid: int, properties: str) -> bool:
    """True if `pid` is alive and is the broker of that data dir (not a reused pid)."""
    # Reap it if it is our own child (start_background and stop_background called from
    # one process, as in tests); otherwise a dead broker would linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    proc_dir = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat = (proc_dir / "stat").read_text()
            cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return False
        return b"kafka.Kafka" in cmdline and properties.encode() in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_state_file(state_dir).read_text())
    except (OSError, ValueError):
        return None
    required = {"pid": int, "bootstrap": str, "data_dir": str, "properties": str}
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), t) for k, t in required.items()
    ):
        return None
    return data


def _quick_probe(bootstrap: str) -> bool:
    try:
        host, port = _endpoints(bootstrap)[0]
        return _is_ready(_probe_blocking(host, port, 1.0))
    except (OSError, ValueError, LocalKafkaError):
        return False


def status(state_dir: Path | None = None) -> BrokerStatus | None:
    """What `<state dir>/kafka.json` says, checked against the live process.

    None when no background broker was recorded there. `running` is whether that
    pid is still the broker; `answering` whether it replies to metadata right now.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    data = _read_state(state_dir)
    if data is None:
        return None
    running = _pid_is_broker(data["pid"], data["properties"])
    return BrokerStatus(
        running=running,
        answering=running and _quick_probe(data["bootstrap"]),
        pid=data["pid"],
        bootstrap=data["bootstrap"],
        data_dir=data["data_dir"],
        log_file=str(Path(data["data_dir"]) / "broker.log"),
        started_at=str(data.get("started_at", "")),
    )


def start_background(
    state_dir: Path | None = None,
    port: int | None = None,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    extra_properties: Mapping[str, str] | None = None,
) -> str:
    """Start a broker that outlives this process; return its bootstrap address.

    Idempotent: if the broker recorded in `<state dir>/kafka.json` is still running,
    waits until it answers and returns its address without starting another. The
    state dir doubles as the broker's data dir, so data persists across stop/start.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # Two CLI calls at once must not both decide "nothing is running" and start two.
    with _file_lock(state_dir / "kafka.lock"):
        current = status(state_dir)
        if current is not None and current["running"]:
            wait_ready_blocking(current["bootstrap"], timeout)
            return current["bootstrap"]
        broker = LocalKafka(state_dir, port=port, extra_properties=extra_properties)
        broker.owned = False  # not stopped at our exit: that is the point
        broker.start(timeout)
        assert broker.pid is not None
        record = {
            "pid": broker.pid,
            "bootstrap": broker.bootstrap,
            "port": broker.port,
            "controller_port": broker.controller_port,
            "data_dir": str(broker.data_dir),
            "properties": str(broker.properties_file),
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        tmp = _state_file(state_dir).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, _state_file(state_dir))
        return broker.bootstrap


def stop_background(state_dir: Path | None = None, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
    """Stop the background broker (SIGTERM, SIGKILL after `timeout` s).

    Returns True if a running broker was stopped, False if none was running. The
    data dir is kept; only the kafka.json record is removed.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    if not _state_file(state_dir).exists():
        return False
    with _file_lock(state_dir / "kafka.lock"):
        data = _read_state(state_dir)
        if data is None:
            return False
        pid, properties = data["pid"], data["properties"]
        was_running = _pid_is_broker(pid, properties)
        if was_running:
            _terminate(pid, lambda: not _pid_is_broker(pid, properties), timeout)
        _state_file(state_dir).unlink(missing_ok=True)
        return was_running
