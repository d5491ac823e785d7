"""A single-figure bench run on its own: a private broker in a temporary directory, the
result printed as JSON (`python -m bench.recovery`, `python -m bench.marks`)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from processor.dev.kafka_local import LocalKafka

# (the started broker, a tag for this run's topic names, the run's directory)
Measure = Callable[[LocalKafka, str, Path], Awaitable[Any]]


def print_on_private_broker(prefix: str, measure: Measure) -> int:
    """Start a broker, run `measure` against it, print its result; returns 0."""

    async def run(root: Path) -> Any:
        broker = LocalKafka(root / "kafka")
        await broker.astart()
        try:
            return await measure(broker, uuid.uuid4().hex[:6], root)
        finally:
            await broker.astop()

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        print(json.dumps(asyncio.run(run(root)), indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0
