"""A broker that outlives the command that started it (`meter kafka start`).

Tracked through `<state dir>/kafka.json`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from processor.dev.kafka_local.broker import LocalKafka
from processor.dev.kafka_local.host import (
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    LocalKafkaError,
    default_state_dir,
    file_lock,
)
from processor.dev.kafka_local.jvm import terminate
from processor.dev.kafka_local.probe import (
    bootstrap_endpoints,
    is_ready,
    probe_blocking,
    wait_ready_blocking,
)


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
        host, port = bootstrap_endpoints(bootstrap)[0]
        return is_ready(probe_blocking(host, port, 1.0))
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
    with file_lock(state_dir / "kafka.lock"):
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
    with file_lock(state_dir / "kafka.lock"):
        data = _read_state(state_dir)
        if data is None:
            return False
        pid, properties = data["pid"], data["properties"]
        was_running = _pid_is_broker(pid, properties)
        if was_running:
            terminate(pid, lambda: not _pid_is_broker(pid, properties), timeout)
        _state_file(state_dir).unlink(missing_ok=True)
        return was_running
