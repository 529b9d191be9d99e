"""Concurrent work behind an async generator component, safely.

headwater drives an action or a ``stream`` transformer as an async generator and closes
it with ``aclose()`` inside a shielded cancel scope. A task group (or any cancel scope)
held open across a ``yield`` would then be exited out of order, and a child's failure
would cancel the runtime's own code while the generator is suspended. So the concurrent
part of a component runs in a task of its own, outside the generator's frame, with an
ordinary structured task group inside it; the generator only receives what that task
sends through a bounded memory stream (backpressure included) and yields it::

    async def work(send):
        async with anyio.create_task_group() as tg:   # structured, as usual
            ...
            await send.send(item)

    async with contextlib.aclosing(stream_from(work)) as items:
        async for item in items:
            yield item

Closing the generator (the run ends, is cancelled, or the consumer stops) cancels the
task and waits for it, so nothing outlives the stage. The task is an ``asyncio`` task or
a trio system task: the one thing anyio does not offer is a task not tied to a task
group, and this is that, kept to one place.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.abc import ObjectSendStream

__all__ = ["Send", "stream_from"]

T = TypeVar("T")
Send = ObjectSendStream[Any]
"""Where the background work puts the items the generator yields."""


class _Detached:
    """A task running ``work`` in its own cancel scope, outside any task group."""

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self._work = work
        self._task: Any = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio
            import trio.lowlevel

            trio.lowlevel.spawn_system_task(self._run, name="headwater-knowledge worker")
        else:
            self._task = loop.create_task(self._run())  # keep a reference: tasks are weak

    async def _run(self) -> None:
        try:
            with self.scope:
                await self._work()
        except Exception as exc:  # noqa: BLE001 - handed to the generator, which re-raises it
            self.error = exc
        finally:
            self.done.set()

    async def stop(self) -> None:
        """Cancel the work and wait until it ended."""
        self.scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.done.wait()


async def stream_from(
    work: Callable[[Send], Awaitable[None]], *, buffer: int = 256
) -> AsyncGenerator[Any, None]:
    """Run ``work(send)`` in a task of its own and yield what it sends, in order.

    The stream ends when ``work`` returns; an exception of ``work`` is raised here after
    the items it sent before. Closing this generator cancels ``work`` and waits for it.
    Use it with :func:`contextlib.aclosing` so that it is closed with its consumer.
    """
    send, receive = anyio.create_memory_object_stream[Any](math.inf if buffer <= 0 else buffer)

    async def run() -> None:
        async with send:
            await work(send)

    task = _Detached(run)
    try:
        async with receive:
            async for item in receive:
                yield item
        await task.done.wait()
        if task.error is not None:
            raise task.error
    finally:
        await task.stop()
