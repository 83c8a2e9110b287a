"""Long-lived streaming responses (watch, follow logs) and how they end when the node stops.

uvicorn's graceful shutdown waits for in-flight responses and only cancels them after
`timeout_graceful_shutdown`, and it gives the application no signal in between; an open
`accord watch` would therefore hold every node stop for the whole grace period and then see its
connection cut.  So the app keeps one `StreamCloser` (`app.state.streams`); the node calls
`close_streams(app)` when it begins to stop, and every stream ends at once in a well-formed way: a
watch with a final `ERROR` line (code 11112, "the node is shutting down"), a followed log by simply
ending.

`relay` is the one loop both streams use: it pulls the next item in its own task (so neither the
idle timer nor the close signal ever cancels the source iterator mid-step, which would kill an async
generator), reports `IDLE` after `idle_seconds` of silence (watch heartbeats) and `CLOSING` once the
closer fires, and always closes the source when the consumer goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from enum import Enum
from typing import TypeVar

T = TypeVar("T")


class Signal(Enum):
    IDLE = "idle"
    CLOSING = "closing"


class StreamCloser:
    """Ends every stream of one app; set once, when the node starts to stop."""

    def __init__(self) -> None:
        self._closing = asyncio.Event()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        self._closing.set()

    async def wait(self) -> None:
        await self._closing.wait()


async def relay(
    source: AsyncIterator[T], closer: StreamCloser, *, idle_seconds: float | None = None
) -> AsyncIterator[T | Signal]:
    """Items of `source`, interleaved with IDLE after each silent `idle_seconds`, ending with CLOSING."""

    async def next_item() -> T:
        return await anext(source)

    closing = asyncio.create_task(closer.wait())
    pending: asyncio.Task[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(next_item())
            done, _ = await asyncio.wait(
                {pending, closing}, timeout=idle_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                finished, pending = pending, None
                try:
                    item = finished.result()
                except StopAsyncIteration:
                    return
                yield item
            elif closing in done:
                yield Signal.CLOSING
                return
            else:
                yield Signal.IDLE
    finally:
        for task in (pending, closing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
