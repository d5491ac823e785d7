"""`meter worker`'s event loop: uvloop by default, asyncio's own when asked for."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from prometheus_client import generate_latest

from processor.config.settings import EventLoop, Settings
from processor.observability import metrics
from processor.ops.service_commands import new_event_loop


def test_the_default_setting_is_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METER_EVENT_LOOP", raising=False)
    assert Settings().event_loop == "uvloop"


@pytest.mark.parametrize(("kind", "expected"), [("uvloop", uvloop.Loop), ("asyncio", None)])
def test_the_loop_is_the_one_asked_for_and_the_metric_says_so(
    kind: EventLoop, expected: type | None
) -> None:
    loop = new_event_loop(kind)
    try:
        if expected is None:
            assert not isinstance(loop, uvloop.Loop)
            assert isinstance(loop, asyncio.BaseEventLoop)
        else:
            assert isinstance(loop, expected)
        # It runs coroutines like any loop.
        assert loop.run_until_complete(asyncio.sleep(0, result=kind)) == kind
    finally:
        loop.close()
    exposed = generate_latest(metrics.REGISTRY).decode().splitlines()
    assert f'meter_event_loop_info{{loop="{kind}"}} 1.0' in exposed
    # The tests run the checkout's sources, never a build.
    assert 'meter_record_path_info{path="interpreted"} 1.0' in exposed
