"""`LocalKafka`: one broker owned by the calling process (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from processor.dev.kafka_local.host import (
    DEFAULT_JVM_OPTS,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    HOST,
    JVM_OPTS_ENV,
    NODE_ID,
    LocalKafkaError,
    checkout_root,
    file_size,
    free_port,
    java_executable,
    log_problems,
    log_tail,
    port_is_free,
    read_from,
)
from processor.dev.kafka_local.jars import ensure_jars
from processor.dev.kafka_local.jvm import (
    CDS_ENV,
    FALLBACK_LOG4J2,
    JVM_FLAGS,
    cds_archive,
    escape_property,
    new_cluster_id,
    read_ports,
    remove_stale_cds_temps,
    signal_group,
    terminate,
)
from processor.dev.kafka_local.probe import wait_ready_blocking

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
        old_port, old_controller = read_ports(self.properties_file)
        self._repick_port = port is None
        self._repick_controller = controller_port is None
        self.port = port or (old_port if old_port and port_is_free(old_port) else free_port())
        self.controller_port = controller_port or (
            old_controller if old_controller and port_is_free(old_controller) else 0
        )
        if not self.controller_port or self.controller_port == self.port:
            self.controller_port = self._other_free_port()

    # -- paths and addresses

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

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
            "node.id": str(NODE_ID),
            # Static quorum: must not be combined with `storage format --standalone`.
            "controller.quorum.voters": f"{NODE_ID}@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
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
            # Under transactions v2 a produce adds its partition to the transaction, and
            # the broker retries that itself while the last transaction's markers are
            # still being written (about a millisecond on one broker): every 20 ms by
            # default, which a worker's next round nearly always met
            # (docs/performance.md, "Transactions v2").
            "add.partitions.to.txn.retry.backoff.ms": "1",
        }
        props.update(self._extra)
        return props

    def _write_properties(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Written by processor/dev/kafka_local on every start; edits are overwritten.",
            "# Pass extra_properties to LocalKafka instead.",
        ]
        lines += [f"{k}={escape_property(v)}" for k, v in self.server_properties().items()]
        tmp = self.properties_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.properties_file)

    def _log4j_config(self) -> Path:
        root = checkout_root()
        shipped = root / "deploy" / "kafka" / "log4j2.yaml" if root is not None else None
        if shipped is not None and shipped.is_file():
            return shipped
        written = self.data_dir / "log4j2.yaml"
        written.write_text(FALLBACK_LOG4J2)
        return written

    def _cds_flags(self, java: str, libs: Path, *, may_create: bool) -> list[str]:
        """Use the CDS archive if there is one, else (maybe) have this JVM write it.

        The archive is written when the JVM exits cleanly, so only brokers this
        object will stop itself create one; `stop()` moves it into place.
        """
        if os.environ.get(CDS_ENV, "1") == "0":
            return []
        archive = cds_archive(java, libs)
        if archive.is_file():
            return [f"-XX:SharedArchiveFile={archive}"]
        if not may_create or not os.access(archive.parent, os.W_OK):
            return []
        remove_stale_cds_temps(archive.parent)
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
            *JVM_FLAGS,
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
        log_offset = file_size(self.log_file)
        cmd = self._java_command(
            java,
            libs,
            "-Xmx256m -XX:TieredStopAtLevel=1",
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
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
                f"{output}\n{log_tail(self.log_file, 20, log_offset)}"
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
            log_offset, out_offset = file_size(self.log_file), file_size(self.stdout_file)
            self._spawn(java, libs)
            try:
                wait_ready_blocking(self.bootstrap, timeout, check_alive=self._check_alive)
            except LocalKafkaError as exc:
                self.kill()
                output = log_tail(self.log_file, 40, log_offset)
                stdout = log_tail(self.stdout_file, 20, out_offset)
                problems = log_problems(self.log_file, log_offset)
                everything = read_from(self.log_file, log_offset) + stdout
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
        in_time = terminate(proc.pid, _exited(proc), timeout)
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
            signal_group(proc.pid, signal.SIGKILL)
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
