"""How the tasks of a run end: the internal stop signal, the clean-up grace, the producer
wrapper every producing task (source, composition, stage) runs in."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..channels import DownstreamClosed

if TYPE_CHECKING:
    from .run import _Run
    from .sinks import _Output

CLEANUP_GRACE = 10.0
"""Seconds a generator's ``finally`` or a sink's ``close`` may take after cancellation."""


class _Stop(Exception):
    """Internal: a stage failed; the run is being torn down.

    Raised right after the failure was recorded with :meth:`_Run.fail` (which cancels the
    run's scope), so whoever catches it only has to stop quietly.
    """


class _FallBack(Exception):
    """Internal: a source that has a fallback failed before its first item.

    Raised by the pumps instead of recording the failure, so that the source can run its
    fallback in its place; ``error`` is what the source raised.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def _producer(run: _Run, out: _Output, body: Callable[..., Any], *args: Any) -> None:
    """Run a producing task in its own scope, so its consumer can stop it.

    The scope is registered with ``out``: when the consumer closes its reader (``take``
    got enough, ``zip``'s shortest input ended), the scope is cancelled and the body's
    ``finally`` blocks run; that, like :class:`DownstreamClosed`, counts as a clean end.

    The end of the stream is signalled downstream only when the producer finished
    cleanly (or was stopped by its consumer), never when the run is failing: a sink
    must not mistake a failure for a complete stream. After :class:`_Stop` (the body
    recorded its failure) nothing is signalled; a cancellation of the run propagates.
    """
    with anyio.CancelScope() as scope:
        out.add_producer_scope(scope)
        try:
            await body(*args)
        except DownstreamClosed:
            pass
        except _Stop:
            return
    if not run.errors:
        out.close_writer()
