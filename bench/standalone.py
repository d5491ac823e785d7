"""A single-figure bench run on its own: a private broker in a temporary directory, the
result printed as JSON (`python -m bench.recovery`, `python -m bench.marks`), or
printed by the run itself (`python -m bench.txn_rounds`)."""

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


def on_private_broker(prefix: str, measure: Measure) -> Any:
    """Start a broker in a temporary directory, run `measure` against it, remove it all;
    returns what `measure` returned."""

    async def run(root: Path) -> Any:
        broker = LocalKafka(root / "kafka")
        await broker.astart()
        try:
            return await measure(broker, uuid.uuid4().hex[:6], root)
        finally:
            await broker.astop()

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return asyncio.run(run(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_on_private_broker(prefix: str, measure: Measure) -> int:
    """`on_private_broker`, its result printed as JSON; returns 0."""
    print(json.dumps(on_private_broker(prefix, measure), indent=2))
    return 0
