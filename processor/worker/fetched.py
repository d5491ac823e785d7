"""A fetch's input records into the pipeline: Faust's messages as plain `Record`s, each
staged and held in turn.

Every input record passes through here, so the module is compiled with the rest of the
per-record path (processor/ops/compiled.py); interpreted, turning a message into a
record and the loop around it cost a few percent of the worker's time a record
(docs/performance.md, "The fetch's records staged in compiled code").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from processor.worker.flusher import Flusher
from processor.worker.intake import Intake
from processor.worker.records import Record, Source


def record_of(m: Any) -> Record:
    """The plain record the worker's parts take, for a message Faust fetched."""
    headers = m.headers
    # aiokafka hands headers over as a tuple or a list; the ABC check is the rare case.
    if type(headers) is not tuple:
        if not headers:
            headers = ()
        elif isinstance(headers, Mapping):
            headers = tuple(headers.items())
        else:
            headers = tuple(headers)
    return Record(
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        key=m.key,
        value=m.value,
        headers=headers,
        generation=m.generation_id or 0,
    )


def input_bytes(m: Any) -> int:
    """A fetched record's size, key and value (a null one is -1 to the client)."""
    key: int = m.serialized_key_size
    value: int = m.serialized_value_size
    return (key if key > 0 else 0) + (value if value > 0 else 0)


class FetchedStager:
    """Stages the input topics' records the fetch loop hands over, and holds each (its
    message, unacknowledged) for the round that lands it."""

    def __init__(self, sources: Mapping[str, Source], intake: Intake, flusher: Flusher) -> None:
        self.sources: Final = dict(sources)
        self.intake: Final = intake
        self.flusher: Final = flusher

    def stage(self, messages: list[Any], generation: int | None, consumer: Any) -> None:
        """Stage and hold each of `messages` fetched in `generation` (None: the flow is
        stopped for a rebalance, and none is). A record not staged has its ack refused
        (`message.ack(consumer)` before it was taken), so that nothing is committed past
        it before the rebalance's seek reads it again. The records staged are counted in
        flight (`consumer.staged`) however the loop ends."""
        sources, intake, flusher = self.sources, self.intake, self.flusher
        held = 0
        try:
            for message in messages:
                if generation is None or message.generation_id != generation:
                    message.ack(consumer)
                    continue
                intake.stage(sources[message.topic], record_of(message))
                flusher.hold(message, input_bytes(message))
                held += 1
        finally:
            # Counted in flight, the records keep a rebalance waiting until they are
            # settled (`Meter._landed`).
            consumer.staged(held)
