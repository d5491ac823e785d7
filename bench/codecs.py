"""The worker's two busiest requests coded by aiokafka's schemas and by hand.

    python -m bench.codecs [--repeat N]

A fetch as the worker's names its partitions (five topics of 12: the three usage
topics, the re-route and the timer topics), with records in a fifth of them as in the
latency phase; a round's produce writes its three topics' 12 partitions each (ledger,
state, marks). Each is encoded, and its answer decoded, by aiokafka's generic `Schema`
and by processor/kafka/protocol.py, in alternation, and the median microseconds of
each are printed with their ratio. Run it from the compiled build's copy
(`PYTHONSAFEPATH=1 PYTHONPATH=.build/compiled`) to time what the worker runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v11, FetchResponse_v11

from processor.kafka import protocol
from processor.kafka.glue.transactions_v2 import ProduceRequestV12, ProduceResponseV12

PARTITIONS = 12
FETCH_TOPICS = ["usage.calls", "usage.tollfree", "usage.conference", "reroute", "timer"]
ROUND_TOPICS = ["ledger", "state", "marks"]


def fetch_topics() -> list[tuple[str, list[tuple[int, int, int]]]]:
    return [(t, [(p, 1_000_000 + p, 1_048_576) for p in range(PARTITIONS)]) for t in FETCH_TOPICS]


def fetch_answer() -> bytes:
    topics: list[Any] = [
        (
            topic,
            [
                (p, 0, 2000 + p, 2000 + p, 0, [], -1, b"r" * 3000 if n < 3 and p % 4 == 0 else b"")
                for p in range(PARTITIONS)
            ],
        )
        for n, topic in enumerate(FETCH_TOPICS)
    ]
    encoded: bytes = FetchResponse_v11(0, 0, 0, topics).encode()
    return encoded


def produce_fields() -> list[Any]:
    topics: list[Any] = [
        (t, [(p, b"b" * 2000, {}) for p in range(PARTITIONS)], {}) for t in ROUND_TOPICS
    ]
    return ["txn-worker-1", -1, 30_000, topics, {}]


def produce_answer() -> bytes:
    topics: list[Any] = [
        (t, [(p, 0, 1000, -1, 0, [], None, {}) for p in range(PARTITIONS)], {})
        for t in ROUND_TOPICS
    ]
    encoded: bytes = ProduceResponseV12.SCHEMA.encode([topics, 0, {}])
    return encoded


def fields_of(struct: Any, wire: bytes) -> list[object]:
    """The fields of `wire` as the struct's schema decodes them (the class's own
    `decode` is the hand-written one)."""
    buffer = BytesIO(wire)
    return [field.decode(buffer) for field in struct.SCHEMA.fields]


def cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Each coding: (aiokafka's schema, by hand)."""
    topics = fetch_topics()
    request = FetchRequest(20, 32_768, 52_428_800, 1, topics)
    fetched = fetch_answer()
    fields = produce_fields()
    produced = produce_answer()
    schema = ProduceRequestV12.SCHEMA
    return {
        "fetch request": (
            lambda: request.build(FetchRequest_v11).encode(),
            lambda: protocol.encode_fetch_v11(20, 32_768, 52_428_800, 1, topics, ""),
        ),
        "fetch answer": (
            lambda: FetchResponse_v11.decode(BytesIO(fetched)),
            lambda: protocol.decode_fetch_v11(fetched),
        ),
        "produce request": (
            lambda: schema.encode(fields),
            lambda: protocol.encode_produce_v12(*fields),
        ),
        "produce answer": (
            lambda: fields_of(ProduceResponseV12, produced),
            lambda: protocol.decode_produce_v12(produced),
        ),
    }


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="alternations of the two")
    parser.add_argument("--calls", type=int, default=500, help="calls a timing")
    args = parser.parse_args(argv)
    print(f"protocol from {protocol.__file__}")
    for name, (theirs, ours) in cases().items():
        slow, fast = [], []
        for _ in range(args.repeat):
            slow.append(per_call_us(theirs, args.calls))
            fast.append(per_call_us(ours, args.calls))
        a, b = statistics.median(slow), statistics.median(fast)
        print(f"{name:16} schema {a:7.1f} us  by hand {b:6.1f} us  ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
