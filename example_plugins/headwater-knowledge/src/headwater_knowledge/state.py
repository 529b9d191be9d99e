"""What the knowledge plugin keeps per engine: sessions and enrichment totals.

Components reach their engine through :class:`~headwater.StreamContext`, which offers no
place for a plugin's own per-engine state; so it is kept in a weak mapping keyed by the
engine's metrics registry (one per engine, shared by all its runs): two engines in one
process never see each other's sessions, and an engine's state goes with it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import headwater

__all__ = ["EngineState", "Sessions"]


@dataclass(eq=False)
class _Claim:
    cancel: Callable[[str], None]


class Sessions:
    """The query going on in each session; a new one cancels the one before.

    A session is named by the client; sessions of different principals never meet
    (the key is ``(principal, session)``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[tuple[str | None, str], _Claim] = {}

    def claim(self, key: tuple[str | None, str], cancel: Callable[[str], None]) -> object:
        """Make the caller the session's current query; cancel the previous one (with a
        reason) if it is still going. Returns a token for :meth:`release`."""
        claim = _Claim(cancel)
        with self._lock:
            previous = self._current.get(key)
            self._current[key] = claim
        if previous is not None:
            previous.cancel(f"superseded by a newer query in session {key[1]!r}")
        return claim

    def release(self, key: tuple[str | None, str], token: object) -> None:
        """The query holding ``token`` ended: forget it unless a newer one took over."""
        with self._lock:
            if self._current.get(key) is token:
                del self._current[key]

    def __len__(self) -> int:
        return len(self._current)


@dataclass(eq=False)
class EngineState:
    """Sessions and counters of one engine."""

    sessions: Sessions = field(default_factory=Sessions)
    totals: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: float) -> None:
        """Add to the engine's totals (shown under ``knowledge`` in its metrics)."""
        with self.lock:
            for key, value in counts.items():
                self.totals[key] = self.totals.get(key, 0) + value

    def figures(self) -> dict[str, Any]:
        """The totals and the number of sessions with a query going on."""
        with self.lock:
            return {**self.totals, "active_sessions": len(self.sessions)}

    @classmethod
    def of(cls, ctx: headwater.StreamContext) -> EngineState:
        """The state of the engine running ``ctx``'s stage (created on first use)."""
        registry = ctx.metrics
        with _LOCK:
            state = _STATES.get(registry)
            if state is None:
                state = _STATES[registry] = cls()
                registry.add_source("knowledge", state.figures)
        return state


_LOCK = threading.Lock()
_STATES: weakref.WeakKeyDictionary[Any, EngineState] = weakref.WeakKeyDictionary()
