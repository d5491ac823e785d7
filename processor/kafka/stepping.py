"""Running a coroutine up to its first suspension, without a task.

The fetch loop (processor/kafka/glue/) hands most records over this way: a hand-over
almost never blocks, and a task per record cost more than the hand-over itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from typing import Any


def step(awaitable: Awaitable[Any]) -> Awaitable[Any] | None:
    """Run a coroutine up to its first suspension: None if it finished, else the rest."""
    if not isinstance(awaitable, Coroutine):
        return awaitable
    coro = awaitable
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return _Rest(coro, waiting)


class _Rest:
    """The rest of a coroutine already stepped once: awaits what it was waiting on
    (handed up to the task, as the coroutine itself would), then carries on."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, Any]:
        waiting = self._waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:  # cancelled (or thrown into) while waiting
                try:
                    waiting = self._coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                waiting = self._coro.send(None)
            except StopIteration as stop:
                return stop.value
