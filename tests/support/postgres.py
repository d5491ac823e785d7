"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` package, started on
a free loopback port in a temporary directory, stopped (and deleted) at teardown.

`initdb` refuses to run as root, so as root the data directory is owned by the
`postgres` user and the server runs as that user (`runuser`). Authentication is
`trust` on 127.0.0.1 only. A missing package is an error, never a skip: `.ci/run`
installs it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from processor.dev.kafka_local import free_port

__all__ = ["LocalPostgres", "postgres_bindir"]


def postgres_bindir() -> Path:
    """The newest installed server's bin directory (/usr/lib/postgresql/<ver>/bin)."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install -y postgresql (.ci/run does)"
        )
    return found[-1]


class LocalPostgres:
    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        # Not under pytest's tmp dir: the postgres user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="meter-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *argv: str | Path) -> None:
        command = [str(a) for a in argv]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}\n"
                f"{self.log.read_text(errors='replace') if self.log.exists() else ''}"
            )

    def start(self) -> LocalPostgres:
        self.data.mkdir()
        self.sockets.mkdir()
        if self._as_postgres:
            for path in (self.root, self.data, self.sockets):
                shutil.chown(path, "postgres", "postgres")
        self._run(
            self.bindir / "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c max_connections=50"
        )
        self._run(
            self.bindir / "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
            "-w", "start",
        )  # fmt: skip
        return self

    def create_database(self) -> str:
        """A new empty database; its `postgresql://` URL."""
        name = f"meter_{uuid.uuid4().hex[:12]}"
        self._run(
            self.bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            name,
        )  # fmt: skip
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(self.bindir / "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
