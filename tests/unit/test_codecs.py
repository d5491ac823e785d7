"""aiokafka's fetches and their answers, coded by hand where the broker takes v11."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from aiokafka.protocol.fetch import (
    FetchRequest,
    FetchRequest_v10,
    FetchRequest_v11,
    FetchResponse_v11,
)

from processor.kafka.glue.codecs import FetchedV11, FetchV11, QuickFetch, quick_fetches

FETCH = 1
TOPICS = [("usage.calls", [(0, 41, 1_048_576), (7, 3, 1_048_576)]), ("timer", [(2, 0, 1024)])]


def planned() -> FetchRequest:
    # As aiokafka's fetcher plans one (`_get_actions_per_node`).
    return FetchRequest(20, 32_768, 52_428_800, 1, TOPICS, rack_id="")


def test_a_fetch_to_a_broker_taking_v11_is_coded_by_hand() -> None:
    request = QuickFetch.of(planned()).prepare({FETCH: (0, 16)})
    assert isinstance(request, FetchV11)
    assert request.API_VERSION == 11
    assert request.encode() == planned().build(FetchRequest_v11).encode()


def test_its_answer_reads_as_aiokafka_reads_it() -> None:
    topics = [
        (
            "usage.calls",
            [(0, 0, 44, 43, 0, [(9, 41)], -1, b"BATCH"), (7, 1, -1, -1, -1, None, -1, None)],
        ),
    ]
    wire = FetchResponse_v11(0, 0, 0, topics).encode()
    request = QuickFetch.of(planned()).prepare({FETCH: (0, 11)})
    ours = request.RESPONSE_TYPE.decode(BytesIO(wire))
    assert isinstance(ours, FetchedV11)
    assert ours.API_VERSION == 11
    assert ours.topics == FetchResponse_v11.decode(BytesIO(wire)).topics == topics


def test_an_older_broker_gets_aiokafka_s_own_request() -> None:
    request = QuickFetch.of(planned()).prepare({FETCH: (0, 10)})
    assert type(request) is FetchRequest_v10
    assert request.encode() == planned().build(FetchRequest_v10).encode()


class Planner:
    """A fetcher's planning step, as aiokafka's returns it."""

    def _get_actions_per_node(self, assignment: Any) -> Any:
        return [(1, planned())], {"reset": assignment}, 0.5, False, set()


def test_every_planned_fetch_becomes_quick() -> None:
    fetcher = Planner()
    quick_fetches(fetcher)
    requests, resets, backoff, invalid, resumed = fetcher._get_actions_per_node("a")  # noqa: SLF001 (the wrapped one)
    [(node, request)] = requests
    assert node == 1
    assert isinstance(request, QuickFetch)
    assert request.topics == TOPICS  # what the fetcher reads back from its request
    assert (resets, backoff, invalid, resumed) == ({"reset": "a"}, 0.5, False, set())
