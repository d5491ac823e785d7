"""The worker's own name in Kafka: its transactional id, kept across its restarts.

A restarted worker that comes back under the same transactional id fences its previous
self at once and aborts the transaction it left open; under a new id that transaction
would hold back every read_committed reader of its partitions until the broker timed
it out. So the id is kept in the worker's data directory (METER_DATA_DIR), locked while
the worker runs: a second worker started on the same directory takes a new id rather
than fence the first one in turn.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import uuid
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

FILE_NAME = "worker-id"


class WorkerIdentity:
    """This worker's id (`value`), held in `<data dir>/worker-id` while it runs."""

    def __init__(self, data_dir: Path) -> None:
        self._held: IO[str] | None = None
        self.value = self._claim(data_dir / FILE_NAME)

    def _claim(self, path: Path) -> str:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            held = path.open("a+", encoding="utf-8")
        except OSError as exc:
            log.warning("worker id not kept (%s): a restart will not fence its last run", exc)
            return uuid.uuid4().hex
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.close()
            log.warning("%s is held by another worker: this one takes an id of its own", path)
            return uuid.uuid4().hex
        held.seek(0)
        value = held.read().strip()
        if not value:
            value = uuid.uuid4().hex
            held.write(value)
            held.flush()
        self._held = held
        return value

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(OSError):
                held.close()
