"""The ``history`` section of the server configuration: where finished runs are kept.

::

    history:
      store: sqlite                       # a run store (register_run_stores); default sqlite
      params: {path: .headwater/runs.db}  # given to the store's factory
      max_runs: 1000                      # retention by count ...
      max_bytes: 67108864                 # ... by size (records and their chunks) ...
      max_age: 604800                     # ... and by age (seconds; null: no limit)
      chunks_per_run: 200                 # the last chunks of each run's stream kept
      chunk_bytes_per_run: 262144         # ... and at most this many bytes of them
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HistoryConfig"]


class HistoryConfig(BaseModel):
    """Run history: every run a client starts is recorded, with the last chunks of its
    stream, so that its page, ``GET /api/runs`` and a ``subscribe`` with ``since: 0``
    work after the run ended and across restarts."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Record runs (false: nothing is written).")
    store: str = Field(
        "sqlite",
        min_length=1,
        description="The run store, by name: `sqlite` (built in, a file), `memory` (built "
        "in, lost at exit) or one a plugin contributes through `register_run_stores`.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the store's factory. `sqlite`: `path` (default "
        "`.headwater/runs.db`, relative to the working directory) and `timeout`.",
    )
    max_runs: int = Field(1000, ge=1, description="Runs kept; the oldest go first.")
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4096,
        description="Bytes kept: records and chunks together; the oldest runs go first.",
    )
    max_age: float | None = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Seconds a finished run is kept (null: no age limit).",
    )
    chunks_per_run: int = Field(
        200, ge=0, description="The last chunks of each run's stream kept (0: none)."
    )
    chunk_bytes_per_run: int = Field(
        256 * 1024,
        ge=0,
        description="Bytes of chunk data kept per run; older chunks go first.",
    )
