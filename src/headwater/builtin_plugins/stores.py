"""Built-in checkpoint store: SQLite (embedded, no set-up)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.checkpoints import DEFAULT_PATH, Checkpoint, SQLiteCheckpointStore

from ._checks.databases import check_sqlite_store
from ._sandbox import check_path_param


class SQLiteStoreParams(BaseModel):
    """Params of the ``sqlite`` checkpoint store."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        str(DEFAULT_PATH),
        description="Database file; relative paths start at the working directory. A path "
        "set in a pipeline must lie inside the operator's file roots; the default is the "
        "operator's own.",
    )
    timeout: float = Field(5.0, ge=0, description="Seconds to wait for another process's lock.")

    # runs only on a path the pipeline sets (pydantic does not validate defaults)
    _path_allowed = field_validator("path")(check_path_param)


@headwater.checkpoint_store("sqlite", params=SQLiteStoreParams, check=check_sqlite_store)
class SQLiteStore(SQLiteCheckpointStore):
    """Checkpoints in an SQLite file (WAL mode), ``.headwater/checkpoints.db`` by default."""

    def __init__(self, params: SQLiteStoreParams) -> None:
        super().__init__(params.path, timeout=params.timeout)


@headwater.checkpoint_store("memory")
class MemoryStore:
    """Checkpoints in process memory, lost at exit.

    For pipelines whose source keeps its own progress (a broker's consumer group): the
    commit protocol still runs, so sources acknowledge upstream only what every sink
    committed, but nothing is written to disk.
    """

    def __init__(self) -> None:
        self._data: dict[str, Checkpoint] = {}

    def load(self, pipeline: str) -> Checkpoint | None:
        """The latest checkpoint of ``pipeline`` in this process."""
        return self._data.get(pipeline)

    def save(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint``."""
        self._data[checkpoint.pipeline] = checkpoint

    def list(self) -> list[Checkpoint]:
        """Every checkpoint kept."""
        return list(self._data.values())

    def reset(self, pipeline: str) -> bool:
        """Forget ``pipeline``'s checkpoint."""
        return self._data.pop(pipeline, None) is not None

    def close(self) -> None:
        """Nothing to release."""
