"""The built-in ``sqlite`` sink: batches into a SQLite table, transactional with checkpoints.

Its sync methods run in a worker thread (see :mod:`headwater.builtin_plugins.sinks`,
which registers it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.policy import SandboxError

from ._checks.databases import check_sqlite_sink
from ._sandbox import IN_MEMORY_DB, check_db_path_param, make_parents, param_of, policy_in
from ._values import column_rows
from ._values import fspath as _fspath
from ._values import type_name as _type_name

if TYPE_CHECKING:
    import sqlite3

__all__ = ["SqliteParams", "SqliteSink"]


# ---------------------------------------------------------------------------------------
# sqlite
# ---------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_identifier(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is a plain SQL identifier; raise ``ValueError`` otherwise."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a valid SQL identifier "
            "(letters, digits and _, not starting with a digit)"
        )
    return value


def _quote(identifier: str) -> str:
    """Quote an identifier already checked by :func:`_check_identifier`."""
    return f'"{identifier}"'


class SqliteParams(BaseModel):
    """Params of ``sqlite``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        description="SQLite database file (created if missing); it must lie inside the "
        "operator's file roots (':memory:' is no file)."
    )
    table: str = Field(description="Table to write to (letters, digits and _).")
    columns: list[str] | None = Field(
        None,
        min_length=1,
        description="Column names, in order. Default: the keys of the first item (a dict). "
        "When given, dict items may carry extra keys (ignored) and sequence items must "
        "have exactly this many values.",
    )
    primary_key: list[str] | None = Field(
        None,
        min_length=1,
        description="Columns of the PRIMARY KEY of a table this sink creates (useful with "
        "mode: replace).",
    )
    create: bool = Field(
        True, description="CREATE TABLE IF NOT EXISTS with untyped columns before writing."
    )
    mode: Literal["insert", "replace"] = Field(
        "insert", description="insert (INSERT) or replace (INSERT OR REPLACE, an upsert)."
    )
    timeout: float = Field(
        5.0, ge=0, description="Seconds to wait for a lock held by another connection."
    )

    _path = field_validator("path", mode="before")(_fspath)
    _path_allowed = field_validator("path")(check_db_path_param)

    @field_validator("table")
    @classmethod
    def _table_ok(cls, value: str) -> str:
        return _check_identifier(value, "table")

    @field_validator("columns", "primary_key")
    @classmethod
    def _names_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for name in value:
            _check_identifier(name, "column")
        if len(set(value)) != len(value):
            raise ValueError("column names must be unique")
        return value

    @model_validator(mode="after")
    def _key_in_columns(self) -> SqliteParams:
        if self.primary_key and self.columns:
            missing = [k for k in self.primary_key if k not in self.columns]
            if missing:
                raise ValueError(f"primary_key names unknown column(s) {', '.join(missing)}")
        return self


@headwater.sink("sqlite", params=SqliteParams, delivery="transactional", check=check_sqlite_sink)
class SqliteSink:
    """Insert items as rows of an SQLite table, one transaction per batch.

    Items are dicts (keyed by column) or sequences of values in column order. Each batch
    is written with ``executemany`` inside ``BEGIN IMMEDIATE`` / ``COMMIT``: a batch is
    either entirely in the table or not at all, and committed batches stay when the run
    later fails. The database uses WAL journaling, so readers are never blocked. The
    output is ``{"path": ..., "table": ..., "rows": n}``.

    In a checkpointed run the sink is transactional: rows stay in one open transaction
    until the next checkpoint, which is committed in the same transaction (table
    ``headwater_sink_checkpoints``). Rows and checkpoint are durable together or not at
    all, so a run killed at any point and resumed writes every item exactly once.
    """

    def __init__(self, params: SqliteParams, ctx: StreamContext) -> None:
        self.params = params
        self.rows = 0
        self.columns: list[str] | None = list(params.columns) if params.columns else None
        self._conn: sqlite3.Connection | None = None
        self._sql: str | None = None
        self._ignore_extra = params.columns is not None
        self._deferred = bool(getattr(ctx, "checkpointing", False))
        """In a checkpointed run, rows stay in an open transaction until the checkpoint
        that covers them commits with them (exactly-once)."""
        self._pipeline: str | None = getattr(ctx, "pipeline", None)
        self._policy = policy_in(ctx)
        self._param = param_of(ctx)

    def open(self) -> None:
        """Connect, switch to WAL, and create the table when the columns are known."""
        import sqlite3

        path = self.params.path
        if path not in IN_MEMORY_DB:
            path = self._checked_path(path)
        # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT ourselves.
        # check_same_thread=False: each call may run on another worker thread; the runtime
        # never calls two methods of a sink concurrently.
        conn = sqlite3.connect(
            path, timeout=self.params.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            if self._deferred:
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS headwater_sink_checkpoints ("
                    " pipeline TEXT NOT NULL, sink_table TEXT NOT NULL, seq INTEGER NOT NULL,"
                    " data TEXT NOT NULL, PRIMARY KEY (pipeline, sink_table))"
                )
            if self.columns is not None:
                self._prepare(conn, self.columns)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _checked_path(self, path: str) -> str:
        """The real path of the database once the policy allowed it, created through a
        descriptor that follows no symlink; SQLite's own files beside it (``-wal``,
        ``-shm``, ``-journal``) must not be symlinks either. Missing folders are made."""
        make_parents(self._policy, path, self._param)
        with self._policy.open_file(path, "ab", buffering=0, param=self._param):
            pass
        real = str(self._policy.check_path(path, param=self._param))
        for suffix in ("-wal", "-shm", "-journal"):
            if os.path.islink(real + suffix) and not self._policy.unrestricted:
                raise SandboxError(
                    f"{self._param}: {real + suffix!r} is a symbolic link; SQLite would "
                    "write through it"
                )
        return real

    def _prepare(self, conn: sqlite3.Connection, columns: list[str]) -> None:
        """Create the table (if asked) and build the INSERT statement."""
        table = _quote(self.params.table)
        names = ", ".join(_quote(c) for c in columns)
        if self.params.create:
            key = self.params.primary_key
            if key:
                missing = [k for k in key if k not in columns]
                if missing:
                    raise ValueError(
                        f"primary_key names column(s) not in the items: {', '.join(missing)}"
                    )
            pk = f", PRIMARY KEY ({', '.join(_quote(k) for k in key)})" if key else ""
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({names}{pk})")
        verb = "INSERT OR REPLACE" if self.params.mode == "replace" else "INSERT"
        marks = ", ".join("?" * len(columns))
        self._sql = f"{verb} INTO {table} ({names}) VALUES ({marks})"

    def _infer_columns(self, first: Any) -> list[str]:
        """The keys of the first item, which must be a dict."""
        if not isinstance(first, Mapping):
            raise TypeError(
                f"sqlite: item 0 is a {_type_name(first)}; without the columns param, "
                "items must be dicts (their keys name the columns)"
            )
        if not first:
            raise ValueError("sqlite: item 0 is an empty dict; cannot infer the columns")
        for key in first:
            _check_identifier(key, "column (a key of item 0)")
        return list(first)

    def _to_rows(self, batch: list[Any]) -> list[Sequence[Any]]:
        """Turn items into value sequences in column order; errors name the item."""
        assert self.columns is not None
        return column_rows(
            batch,
            self.columns,
            table=self.params.table,
            first_index=self.rows,
            strict=not self._ignore_extra,
            sink="sqlite",
        )

    def write(self, batch: list[Any]) -> None:
        """Insert the batch in one transaction (runs in a worker thread)."""
        if not batch:
            return
        conn = self._conn
        if conn is None:
            raise RuntimeError("sqlite: write() before open()")
        if self._sql is None:
            self.columns = self._infer_columns(batch[0])
            self._prepare(conn, self.columns)
        assert self._sql is not None
        rows = self._to_rows(batch)
        if self._deferred:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.executemany(self._sql, rows)  # committed by commit_checkpoint()
            self.rows += len(rows)
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.rows += len(rows)

    def commit_checkpoint(self, checkpoint: Any) -> None:
        """Commit the rows written since the last checkpoint together with ``checkpoint``."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("sqlite: commit_checkpoint() before open()")
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR REPLACE INTO headwater_sink_checkpoints VALUES (?, ?, ?, ?)",
                (checkpoint.pipeline, self.params.table, checkpoint.seq, checkpoint.to_json()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def load_checkpoint(self) -> str | None:
        """The checkpoint committed with this table's rows (JSON), for resuming."""
        conn = self._conn
        if conn is None or not self._deferred:
            return None
        row = conn.execute(
            "SELECT data FROM headwater_sink_checkpoints WHERE pipeline = ? AND sink_table = ?",
            (self._pipeline, self.params.table),
        ).fetchone()
        return None if row is None else str(row[0])

    def close(self, error: BaseException | None) -> dict[str, Any]:
        """Roll back an unfinished transaction, close; returns ``{"path", "table", "rows"}``."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                conn.close()
        return {"path": self.params.path, "table": self.params.table, "rows": self.rows}
