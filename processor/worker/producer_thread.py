"""The transactional publisher on a thread of its own, with its own event loop.

A round's transaction is a few requests in a row (AddPartitionsToTxn, the produce, then
EndTxn), each sent once the one before is answered. On the worker's loop each answer
waited until the loop was free, and under load the loop is mostly busy staging the next
round's records: a round lasted its requests' time divided by the loop's idle share, and
each record waits for the round in flight and then its own (docs/performance.md, "The
producers on a thread of their own"). Here the producers' answers are read as they come,
the way the Java client's sender thread works: the worker's loop stages records while
this thread waits on the broker, and the interpreter hands the lock over within
`SWITCH_INTERVAL_SECONDS`.

Everything of the publisher runs on this thread (its producers, its lock, the fallback
and the tests' hooks); the worker's loop hands it a round's records, which it no longer
touches, and awaits the outcome.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Final, TypeVar

from processor.config.settings import EventLoop
from processor.worker.publisher import TransactionalPublisher
from processor.worker.records import Out

T = TypeVar("T")

# The interpreter's switch interval for a worker with a producer thread: how long the
# worker's loop may keep the interpreter lock while the producer thread waits with a
# broker's answer (Python's default is 5 ms, a round's requests take about 1 ms each).
SWITCH_INTERVAL_SECONDS: Final = 0.001


def new_loop(kind: EventLoop) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind `METER_EVENT_LOOP` names."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


class ThreadedPublisher:
    """`inner`'s coroutines, each run on the producer thread's loop and awaited here.

    The thread starts with the first call and ends with `stop` (a later call starts
    another), so a worker that is stopped leaves no thread behind.
    """

    def __init__(
        self,
        inner: TransactionalPublisher,
        new_event_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        name: str = "meter-producers",
    ) -> None:
        self._inner = inner
        self._new_event_loop = new_event_loop
        self._name = name
        self.atomic = inner.atomic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def partitions(self) -> frozenset[int]:
        return self._inner.partitions

    @property
    def routes(self) -> dict[int, str]:
        return self._inner.routes

    @property
    def thread(self) -> threading.Thread | None:
        """The producer thread, while it runs."""
        return self._thread

    async def assign(self, partitions: Iterable[int], generation: int | None = None) -> None:
        await self._call(self._inner.assign(frozenset(partitions), generation))

    async def release(self, partitions: Iterable[int]) -> None:
        await self._call(self._inner.release(frozenset(partitions)))

    async def publish(self, records: Sequence[Out]) -> None:
        await self._call(self._inner.publish(records))

    async def stop(self) -> None:
        """Stop the producers, then the thread."""
        if self._loop is None:
            return  # never started: no producer runs
        try:
            await self._call(self._inner.stop())
        finally:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                await asyncio.to_thread(thread.join)

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._running()))

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = self._new_event_loop()
            thread = threading.Thread(target=_serve, args=(loop,), name=self._name, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The producer thread: run `loop` until stopped, then close it cleanly."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
