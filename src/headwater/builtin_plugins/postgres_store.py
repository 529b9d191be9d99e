"""The ``postgres`` checkpoint store: one row per pipeline in a PostgreSQL table.

Registered by :mod:`.postgres` (the ``headwater.postgres`` plugin). Its methods are
synchronous (the runtime calls them in threads), on a ``psycopg_pool.ConnectionPool``.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.checkpoints import Checkpoint, CheckpointError
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, BrokerUnavailable, Link, retry_sync

from . import _postgres as pg
from ._addresses import check_dsn_param
from ._checks.databases import check_postgres_store
from .postgres_sink import DSN_HELP

__all__ = ["PostgresCheckpointStore", "PostgresStoreParams"]

log = logging.getLogger("headwater.postgres")


class PostgresStoreParams(BaseModel):
    """Params of the ``postgres`` checkpoint store."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    dsn: str = Field("", description=DSN_HELP)
    table: str = Field(
        "headwater_checkpoints",
        description="Table of the checkpoints (created if missing): `table` or `schema.table`.",
    )
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the server may stay unreachable (reconnecting with backoff) "
        "before a load or save fails.",
    )

    _table_ok = field_validator("table")(pg.check_table_name)
    _table_allowed = field_validator("table")(pg.check_table_param)
    _dsn_allowed = field_validator("dsn")(check_dsn_param)


@headwater.checkpoint_store("postgres", params=PostgresStoreParams, check=check_postgres_store)
class PostgresCheckpointStore:
    """Checkpoints in a PostgreSQL table, one row per pipeline (JSON text).

    Shared by every process that reaches the server: a pipeline resumed on another
    machine continues from the same checkpoint. Each save is one committed statement.
    """

    def __init__(self, params: PostgresStoreParams | None = None) -> None:
        self.params = params if params is not None else PostgresStoreParams()
        pool_mod = pg.pool_module("the postgres checkpoint store")
        pg.psycopg("the postgres checkpoint store")
        self._table = pg.table_sql(self.params.table)
        self.link = Link(
            "postgres checkpoint store",
            pg.display_dsn(self.params.dsn),
            deadline=self.params.outage_deadline,
            log=log,
        )
        self._pool = pool_mod.ConnectionPool(
            self.params.dsn,
            min_size=1,
            max_size=2,
            open=False,
            kwargs={"autocommit": True},
            check=pool_mod.ConnectionPool.check_connection,
            name="headwater-checkpoints",
        )
        self._ready = False

    def _call(self, what: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def once() -> list[tuple[Any, ...]]:
            if not self._ready:
                self._pool.open(wait=True, timeout=10.0)
                with self._pool.connection() as conn:
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self._table} (pipeline text PRIMARY KEY,"
                        " fingerprint text NOT NULL, seq bigint NOT NULL, data text NOT NULL,"
                        " updated timestamptz NOT NULL DEFAULT now())"
                    )
                self._ready = True
            with self._pool.connection() as conn:
                cur = conn.execute(sql, args)
                return cur.fetchall() if cur.description is not None else [(cur.rowcount,)]

        try:
            return retry_sync(self.link, once, transient=pg.transient)
        except BrokerUnavailable as exc:
            raise CheckpointError(f"cannot {what} a checkpoint: {exc}") from None
        except Exception as exc:
            raise CheckpointError(
                f"postgres checkpoint store at {self.link.address} ({self.params.table}): "
                f"cannot {what}: {exc}"
            ) from None

    def load(self, pipeline: str) -> Checkpoint | None:
        """The latest checkpoint of ``pipeline``, or None."""
        rows = self._call(
            "read", f"SELECT data FROM {self._table} WHERE pipeline = %s", (pipeline,)
        )
        return self._parse(pipeline, rows[0][0]) if rows else None

    def _parse(self, pipeline: str, data: str) -> Checkpoint:
        try:
            return Checkpoint.from_json(data)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint of {pipeline!r} in {self.params.table} is unreadable ({exc}); run "
                f"`headwater checkpoints reset {pipeline}` to start over"
            ) from None

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace ``checkpoint.pipeline``'s checkpoint (committed when this returns)."""
        self._call(
            "write",
            f"INSERT INTO {self._table} (pipeline, fingerprint, seq, data) VALUES "
            "(%s, %s, %s, %s) ON CONFLICT (pipeline) DO UPDATE SET fingerprint = "
            "EXCLUDED.fingerprint, seq = EXCLUDED.seq, data = EXCLUDED.data, updated = now()",
            (checkpoint.pipeline, checkpoint.fingerprint, checkpoint.seq, checkpoint.to_json()),
        )

    def list(self) -> list[Checkpoint]:
        """Every pipeline's checkpoint, by name."""
        rows = self._call("list", f"SELECT pipeline, data FROM {self._table} ORDER BY pipeline")
        return [self._parse(name, data) for name, data in rows]

    def reset(self, pipeline: str) -> bool:
        """Forget ``pipeline``'s checkpoint."""
        rows = self._call("delete", f"DELETE FROM {self._table} WHERE pipeline = %s", (pipeline,))
        return bool(rows and rows[0][0])

    def close(self) -> None:
        """Close the connection pool."""
        self._pool.close(timeout=5.0)
