"""Operating a running server: its readiness, its drain before a shutdown, its reload.

* :func:`readiness` is the answer of ``/readyz``: whether a load balancer should send
  this server new clients, and if not, what is not ready (``lifecycle``: starting,
  draining or shutting down; ``bridge``: Redis out of reach; ``brokers``: a broker
  connection of a run is down; ``plugins``: plugins failed to load in strict mode).
* :func:`drain_runs` lets the runs clients started end before a shutdown (a deploy, a
  scale-down): broker sources stop taking messages, other runs go on to their end, and
  whatever still runs at the deadline is cancelled (a checkpointed run then commits a
  final checkpoint).
* :func:`prepare_reload` checks a new configuration and says what it changes, so that
  the server takes it all or nothing (``headwater serve`` does on SIGHUP).

:class:`~headwater.server.base.BaseServer` calls these; they use its public API only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio

from headwater.core.errors import ValidationIssue
from headwater.core.streaming import Frame

from .config import RELOADED_KEYS, NamedPipeline, ServerConfig, ServerConfigError

if TYPE_CHECKING:
    from .auth import AuthSettings
    from .base import BaseServer
    from .runs import RunInfo

__all__ = [
    "CANCEL_TIMEOUT",
    "Readiness",
    "Reload",
    "drain_runs",
    "prepare_reload",
    "readiness",
]

log = logging.getLogger("headwater.server")

CANCEL_TIMEOUT: Final = 15.0
"""Seconds the runs cancelled at the end of a drain may take to stop (a checkpointed run
commits a final checkpoint within the runtime's clean-up grace, 10 s)."""


# -- readiness --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the server should get new clients; else, what is not ready, by check."""

    not_ready: dict[str, str] = field(default_factory=dict)
    """Check (``lifecycle``, ``bridge``, ``brokers``, ``plugins``) -> why it fails."""

    @property
    def ready(self) -> bool:
        """True when every check passes."""
        return not self.not_ready

    def to_dict(self) -> dict[str, Any]:
        """The body of ``/readyz``: ``{"status": "ready" | "not_ready", "not_ready": {...}}``."""
        return {"status": "ready" if self.ready else "not_ready", "not_ready": self.not_ready}


def readiness(server: BaseServer) -> Readiness:
    """The checks of ``/readyz`` on ``server`` (cheap enough for a probe every second)."""
    problems: dict[str, str] = {}
    state = server.lifecycle
    if state in ("new", "starting"):
        problems["lifecycle"] = "starting"
    elif state == "draining":
        going = len(server.runs)
        problems["lifecycle"] = (
            f"draining before a shutdown: new runs are refused; {going} run"
            f"{'' if going == 1 else 's'} going on"
        )
    elif state != "running":
        problems["lifecycle"] = "shutting down"
    bridge = server.bridge
    if bridge is not None and not bridge.link.connected:
        figures = bridge.link.figures()
        down = figures["disconnected_seconds"]
        since = f" for {down:.1f}s" if bridge.link.down else ""
        problems["bridge"] = f"stream bridge: Redis at {figures['address']} unreachable{since}"
    brokers = _brokers_down(server)
    if brokers:
        problems["brokers"] = "disconnected: " + ", ".join(brokers)
    if state not in ("new", "starting"):
        failed = _plugin_failures(server)
        if failed:
            problems["plugins"] = "failed to load (strict mode): " + "; ".join(failed)
    return Readiness(problems)


def _brokers_down(server: BaseServer) -> list[str]:
    """The broker connections of the engine's runs that are down (the bridge apart)."""
    entries = server.engine.metrics.snapshot().get("brokers") or ()
    down = []
    for entry in entries:
        if not isinstance(entry, Mapping) or "error" in entry or entry.get("role") == "bridge":
            continue
        if not entry.get("connected"):
            where = f"{entry.get('pipeline')}/{entry.get('stage')}"
            down.append(f"{entry.get('component')} ({entry.get('address')}) of {where}")
    return sorted(down)


def _plugin_failures(server: BaseServer) -> list[str]:
    """With strict plugins: every plugin (or plugin route) that failed to load."""
    try:
        plugins = server.plugins
    except RuntimeError:  # not started
        return []
    if not plugins.strict:
        return []
    return [str(f) for f in [*plugins.failures, *server.http.route_failures]]


# -- drain ------------------------------------------------------------------------------


class _Closings:
    """A stream observer, for the time of a drain: wakes the drain when a stream of the
    runs it waits for closes (their ``stream_complete`` is then on its way)."""

    def __init__(self, streams: Sequence[str]) -> None:
        self.streams = set(streams)
        self.changed = anyio.Event()

    def stream_opened(self, stream_id: str, epoch: str, metadata: Mapping[str, Any]) -> None:
        """Not watched."""

    def chunk_published(self, stream_id: str, epoch: str, seq: int, payload: bytes) -> None:
        """Not watched."""

    def message_broadcast(self, stream_id: str, frame: Frame) -> None:
        """Not watched."""

    def stream_closed(
        self,
        stream_id: str,
        reason: str,
        summary: Mapping[str, Any] | None,
        error: Frame | None,
    ) -> None:
        """One of the streams the drain waits for closed: wake it."""
        if stream_id in self.streams:
            self.streams.discard(stream_id)
            self.changed.set()


async def _ended(server: BaseServer, runs: Sequence[RunInfo]) -> None:
    """Wait until every run of ``runs`` has ended and its stream is closed."""
    manager = server.manager
    watch = _Closings([run.stream for run in runs])
    manager.add_observer(watch)
    try:
        for run in runs:
            await run.handle.wait()
        while True:
            watch.changed = anyio.Event()
            if not any(manager.has_stream(run.stream) for run in runs):
                return
            await watch.changed.wait()
    finally:
        manager.remove_observer(watch)


async def drain_runs(server: BaseServer, seconds: float) -> list[RunInfo]:
    """Let the runs clients started on ``server`` end, for up to ``seconds``.

    Their broker sources are asked to stop taking messages (what they handed on is
    committed and acknowledged, and the run ends normally, as ``headwater worker``'s on
    SIGTERM); the other runs go on to their end. At the deadline the runs still going
    are cancelled (checkpointed ones stop cleanly with a final checkpoint) and given
    :data:`CANCEL_TIMEOUT` seconds to stop. Returns the runs that had to be cancelled.
    The caller refuses new runs meanwhile.
    """
    runs = server.runs
    if not runs:
        return []
    log.info("draining: waiting up to %gs for %d runs to end", seconds, len(runs))
    for run in runs:
        run.handle.drain()
    with anyio.move_on_after(seconds):
        await _ended(server, runs)
    late = [run for run in runs if not run.handle.done or server.manager.has_stream(run.stream)]
    if not late:
        return []
    log.warning(
        "drain deadline (%gs) passed: cancelling %d runs (%s)",
        seconds,
        len(late),
        ", ".join(f"{run.run_id} of {run.pipeline!r}" for run in late),
    )
    for run in late:
        run.handle.cancel("server shutdown: drain deadline passed")
    with anyio.move_on_after(CANCEL_TIMEOUT):
        await _ended(server, late)
    return late


# -- reload -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reload:
    """What a new configuration changes (see :func:`prepare_reload`)."""

    config: ServerConfig
    """The configuration to run with: the new one's :data:`RELOADED_KEYS` sections, the
    running one's other sections."""
    auth: AuthSettings
    pipelines: dict[str, NamedPipeline]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    """Pipelines whose definition (or params, or description) changed."""
    ignored: tuple[str, ...] = ()
    """Sections that differ but are read at start only: a restart applies them."""

    def describe(self) -> str:
        """One line for the log: the pipelines added, removed and changed."""
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        count = len(self.pipelines)
        summary = f"{count} pipeline{'' if count == 1 else 's'}"
        return summary + (f" ({'; '.join(parts)})" if parts else "")


def prepare_reload(server: BaseServer, new: ServerConfig) -> Reload:
    """Check ``new`` against the running ``server``; nothing is applied here.

    The sections read at start only keep their running values (a difference is listed
    in :attr:`Reload.ignored`). Raises :class:`~headwater.server.ServerConfigError`
    naming every problem: the auth settings, the rules of the address the server is
    bound to (authentication beyond loopback, TLS with tokens), a pipeline that does not
    resolve against the installed components.
    """
    current = server.config
    kept = {
        key: getattr(current, key) for key in ServerConfig.model_fields if key not in RELOADED_KEYS
    }
    ignored = tuple(sorted(key for key, value in kept.items() if getattr(new, key) != value))
    config = new.model_copy(update=kept)
    auth = server.auth_settings(config)
    problem = server.unsafe_settings(config, auth)
    if problem is not None:
        raise ServerConfigError([ValidationIssue("auth", problem)])
    pipelines = server.validate_pipelines(config)
    before = server.pipelines
    return Reload(
        config,
        auth,
        pipelines,
        added=tuple(sorted(set(pipelines) - set(before))),
        removed=tuple(sorted(set(before) - set(pipelines))),
        changed=tuple(
            sorted(name for name in set(pipelines) & set(before) if pipelines[name] != before[name])
        ),
        ignored=ignored,
    )
