"""What a component may reach of the engine that runs it.

An :class:`~headwater.Engine` owns one :class:`EngineServices`; every run it starts hands
it (or a copy naming another publisher) to each stage through
:class:`~headwater.StreamContext`. Nothing here is module-level state: two engines in one
process hold two of everything, so they never see each other's streams, drain requests or
metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from .errors import HeadwaterError
from .metrics import MetricsRegistry
from .policy import SandboxPolicy
from .secrets import Secrets

__all__ = ["DrainSignal", "EngineServices", "NoServerRunning", "StreamPublisher"]

_ALL: Final = "*"


class NoServerRunning(HeadwaterError, LookupError):
    """The run's engine serves no stream to clients (no server is running on it)."""


class StreamPublisher(Protocol):
    """A server that publishes streams to its clients (what the ``websocket`` sink needs).

    :class:`headwater.server.Server` is one; the core only knows this shape.
    """

    @property
    def manager(self) -> Any:
        """The :class:`~headwater.core.streaming.StreamingManager` holding the streams."""

    def stream_of_run(self, run_id: str) -> str | None:
        """The stream the server created for a run it started, if any."""

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (sync or async) on the server's event loop and return its result."""


class DrainSignal:
    """Asks broker sources to stop reading and finish what they hold (SIGTERM of a worker).

    A request names one run, or every run of the engine (``None``). Thread-safe: a signal
    handler may request while sources poll.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: set[str] = set()

    def request(self, run_id: str | None = None) -> None:
        """Ask one run (or every run) of this engine to drain."""
        with self._lock:
            self._requests.add(_ALL if run_id is None else run_id)

    def draining(self, run_id: str) -> bool:
        """True when this run, or every run, has been asked to drain."""
        requests = self._requests
        return bool(requests) and (_ALL in requests or run_id in requests)

    def clear(self, run_id: str | None = None) -> None:
        """Forget a run's request (or every request)."""
        with self._lock:
            if run_id is None:
                self._requests.clear()
            else:
                self._requests.discard(run_id)


@dataclass(slots=True, eq=False)
class EngineServices:
    """An engine's shared services, as its components see them."""

    metrics: MetricsRegistry = field(default_factory=MetricsRegistry)
    drain: DrainSignal = field(default_factory=DrainSignal)
    publishers: list[StreamPublisher] = field(default_factory=list)
    """Servers running on the engine, oldest first (the engine's own list, shared)."""
    own_publisher: StreamPublisher | None = None
    """The server that started the run, when one did."""
    policy: SandboxPolicy = field(default_factory=SandboxPolicy.from_environment)
    """The operator's sandbox: what the engine's pipelines may run and read."""
    secrets: Secrets = field(default_factory=Secrets)
    """Values substituted into the engine's files (``${VAR}``): masked wherever shown."""

    @property
    def publisher(self) -> StreamPublisher:
        """The server a run publishes to: the one that started it, else the newest one
        running on the engine. Raises :class:`NoServerRunning` when there is none."""
        if self.own_publisher is not None:
            return self.own_publisher
        if self.publishers:
            return self.publishers[-1]
        raise NoServerRunning(
            "no headwater server is running on this engine: start one with `headwater "
            "serve` (a pipeline it runs can use the websocket sink) or, when embedding, "
            "`async with headwater.server.Server(config, engine=engine):` around the run"
        )

    def for_publisher(self, publisher: StreamPublisher) -> EngineServices:
        """The same services for a run started by ``publisher``."""
        return replace(self, own_publisher=publisher)
