"""Run history: every run a client starts, kept after its end and across restarts.

* :class:`RunHistory` (``server.history``) records runs as they start and end, with the
  last chunks of their streams, in a run store;
* :class:`RunStore` is what a store implements; the built-in stores are
  :class:`SQLiteRunStore` (``sqlite``, the default: ``.headwater/runs.db``) and
  :class:`MemoryRunStore` (``memory``); plugins contribute others through the
  ``register_run_stores`` hook;
* :class:`HistoryConfig` is the ``history`` section of the server configuration
  (which store, and the retention by count, bytes and age);
* :mod:`headwater.server.history.api` answers ``GET /api/runs`` and
  ``GET /api/runs/{id}``;
* :class:`headwater.server.history.local.LocalRecorder` records the runs of a process
  that serves nothing (``headwater run --history``, jobs files) into the same stores.
"""

from __future__ import annotations

from .config import HistoryConfig
from .recorder import BUILTIN_STORES, RunHistory
from .records import (
    LIVE_STATES,
    MemoryRunStore,
    Retention,
    RunPage,
    RunQuery,
    RunRecord,
    RunStore,
)
from .sqlite import DEFAULT_PATH, SQLiteRunStore

__all__ = [
    "BUILTIN_STORES",
    "DEFAULT_PATH",
    "LIVE_STATES",
    "HistoryConfig",
    "MemoryRunStore",
    "Retention",
    "RunHistory",
    "RunPage",
    "RunQuery",
    "RunRecord",
    "RunStore",
    "SQLiteRunStore",
]
