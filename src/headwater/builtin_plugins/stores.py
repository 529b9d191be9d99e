"""Built-in checkpoint store: SQLite (embedded, no set-up)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.checkpoints import DEFAULT_PATH, SQLiteCheckpointStore


class SQLiteStoreParams(BaseModel):
    """Params of the ``sqlite`` checkpoint store."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        str(DEFAULT_PATH),
        description="Database file; relative paths start at the working directory.",
    )
    timeout: float = Field(5.0, ge=0, description="Seconds to wait for another process's lock.")


@headwater.checkpoint_store("sqlite", params=SQLiteStoreParams)
class SQLiteStore(SQLiteCheckpointStore):
    """Checkpoints in an SQLite file (WAL mode), ``.headwater/checkpoints.db`` by default."""

    def __init__(self, params: SQLiteStoreParams) -> None:
        super().__init__(params.path, timeout=params.timeout)


@headwater.hookimpl
def register_checkpoint_stores(register: Any) -> None:
    """Register the built-in checkpoint store."""
    register(SQLiteStore)
