"""The fetcher's and the rounds' requests coded by processor/kafka/protocol.py rather
than by aiokafka's generic schemas: the same bytes on the wire, the same values back.

aiokafka's connection calls a request's `prepare(versions)`, then the struct's
`build_request_header` and `encode()`, and decodes the answer with the struct's
`RESPONSE_TYPE.decode`. So a struct class with its own `encode` and an answer class
with its own `decode` are all it takes; the classes subclass aiokafka's (FetchRequest
v11 and its answer) or ours (Produce v12, in transactions_v2.py), so anything reading
their fields reads what it did. A broker that does not offer Fetch v11 gets aiokafka's
own request.

The fetcher builds its requests in `_get_actions_per_node`; `quick_fetches` wraps that
method on one fetcher so that each request it plans is a `QuickFetch`.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v11, FetchResponse_v11

from processor.kafka.protocol import decode_fetch_v11, encode_fetch_v11

_V11 = FetchRequest_v11.API_VERSION


def answer_fields(
    decode: Callable[[bytes, int], tuple[Any, ...]], data: BytesIO | bytes
) -> tuple[Any, ...]:
    """An answer's fields, read by a hand-written `decode` from where aiokafka's
    connection left the buffer (past the response header)."""
    if isinstance(data, bytes):
        return decode(data, 0)
    # getvalue() shares the answer's bytes: the connection made the BytesIO from them.
    return decode(data.getvalue(), data.tell())


class FetchedV11(FetchResponse_v11):  # type: ignore[misc]
    """FetchResponse v11, decoded by hand."""

    @classmethod
    def decode(cls, data: BytesIO | bytes) -> FetchedV11:
        return cls(*answer_fields(decode_fetch_v11, data))


class FetchV11(FetchRequest_v11):  # type: ignore[misc]
    """FetchRequest v11, encoded by hand from what the fetcher planned."""

    RESPONSE_TYPE = FetchedV11

    def __init__(self, planned: QuickFetch) -> None:
        # The fields the schema names are not set: nothing reads them but Struct's own
        # encode and repr, and both are replaced here.
        self.planned = planned

    def encode(self) -> bytes:
        p = self.planned
        return encode_fetch_v11(
            p._max_wait_ms, p._min_bytes, p._max_bytes, p._isolation_level, p.topics, p._rack_id
        )

    def __repr__(self) -> str:
        return f"FetchV11(topics={self.planned.topics!r})"


class QuickFetch(FetchRequest):  # type: ignore[misc]
    """aiokafka's fetch request, sent as `FetchV11` where the broker takes v11."""

    @classmethod
    def of(cls, request: Any) -> QuickFetch:
        return cls(
            request._max_wait_ms,
            request._min_bytes,
            request._max_bytes,
            request._isolation_level,
            request.topics,
            request._rack_id,
        )

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class.API_VERSION == _V11:
            return FetchV11(self)
        return super().build(request_struct_class)


def quick_fetches(fetcher: Any) -> None:
    """Make every fetch request `fetcher` plans a `QuickFetch`."""
    plan: Callable[..., Any] = fetcher._get_actions_per_node

    def planned(assignment: Any) -> Any:
        requests, *rest = plan(assignment)
        return ([(node, QuickFetch.of(request)) for node, request in requests], *rest)

    fetcher._get_actions_per_node = planned
