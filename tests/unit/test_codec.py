"""Encodings of the processor's own records (processor/codec.py)."""

from __future__ import annotations

import tracemalloc

import orjson

from processor.codec import dump_mark, dumps, load_mark
from processor.core.stored import Mark, Position


def test_dumps_is_orjson_in_a_bytes_object_of_its_own_size() -> None:
    values = [{"e": 1_790_000_000 + i, "tp": "usage.calls:3", "o": i} for i in range(1000)]
    tracemalloc.start()
    try:
        held = [dumps(v) for v in values]
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held == [orjson.dumps(v) for v in values]
    # A batch holds its encoded records until it is produced: orjson's own result
    # would keep at least 4 KiB each.
    assert size < 1000 * 256


def test_a_mark_reads_back_as_written() -> None:
    mark = Mark(1_790_000_000, Position("usage.calls:3", 12))
    assert load_mark(dump_mark(mark)) == mark
