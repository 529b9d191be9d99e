"""The ``postgres`` sink: ``COPY`` or upserts, transactional with checkpoints.

Registered by :mod:`.postgres` (the ``headwater.postgres`` plugin), which also holds the
``postgres.query`` source. Installed with ``pip install 'headwater[postgres]'``
(``psycopg`` 3 and ``psycopg_pool``); the sink uses psycopg's asyncio API, so it runs on
asyncio.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import operator
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import headwater
from headwater.core.checkpoints import Checkpoint
from headwater.core.context import StreamContext
from headwater.core.reconnect import (
    DEFAULT_OUTAGE_DEADLINE,
    Link,
    retry,
)

from . import _postgres as pg
from ._addresses import check_dsn, check_dsn_param
from ._brokers import stage_logger, track
from ._checks.databases import check_postgres_sink
from ._connectors import connector
from ._values import column_rows, type_name

__all__ = ["DSN_HELP", "PostgresSink", "PostgresSinkParams"]

DSN_HELP = (
    "Connection string (postgresql://USER@HOST:PORT/DB or key=value pairs); empty: "
    "libpq's defaults and PG* environment variables. Put a password in ${VAR}."
)

_SQL_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_ ]*(\(\s*\d+(\s*,\s*\d+)?\s*\))?(\[\])?")

_PY_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "bigint"),
    (float, "double precision"),
    (decimal.Decimal, "numeric"),
    (str, "text"),
    (bytes, "bytea"),
    (dt.datetime, "timestamptz"),
    (dt.date, "date"),
    (dt.time, "time"),
    (uuid.UUID, "uuid"),
    (dict, "jsonb"),
    (list, "jsonb"),
)
"""The column type a created table gets for the first non-null value of a column."""


_JSON_OIDS = frozenset({114, 3802})
"""``json`` and ``jsonb``: dicts and lists going there are wrapped for psycopg."""


def _sql_type_of(value: Any) -> str:
    for kind, name in _PY_TYPES:
        if isinstance(value, kind):
            return name
    return "text"


class PostgresSinkParams(BaseModel):
    """Params of the ``postgres`` sink."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    dsn: str = Field("", description=DSN_HELP)
    table: str = Field(
        description="Table to write to: `table` or `schema.table` (plain identifiers); it "
        "must be among the operator's allowed tables, when those are listed."
    )
    columns: list[str] | None = Field(
        None,
        min_length=1,
        description="Column names, in order. Default: the keys of the first item (a dict). "
        "When given, dict items may carry extra keys (ignored) and sequence items must "
        "have exactly this many values.",
    )
    mode: Literal["insert", "upsert"] = Field(
        "insert",
        description="insert (COPY, the fastest) or upsert (INSERT ... ON CONFLICT (key) DO "
        "UPDATE: the last item of a key wins).",
    )
    key: list[str] | None = Field(
        None,
        min_length=1,
        description="Columns of the conflict key of mode: upsert (a PRIMARY KEY or UNIQUE "
        "constraint; a table this sink creates gets it as its PRIMARY KEY).",
    )
    create: bool = Field(
        True,
        description="CREATE TABLE IF NOT EXISTS before writing, with column types taken "
        "from the first item's values (int: bigint, float: double precision, str: text, "
        "dict/list: jsonb, ...) unless column_types names them.",
    )
    column_types: dict[str, str] = Field(
        default_factory=dict,
        description="SQL types of columns of a created table (e.g. {ts: timestamptz}).",
    )
    transactional: bool = Field(
        True,
        description="In a checkpointed run, keep the rows in one transaction until the "
        "checkpoint that covers them commits with them (exactly-once). False: commit each "
        "batch on its own (at-least-once; shorter transactions).",
    )
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the server may stay unreachable (reconnecting with backoff) "
        "before the run fails. A transaction lost with its connection is not retried: the "
        "run fails, and --resume writes its rows again exactly once.",
    )

    _table_ok = field_validator("table")(pg.check_table_name)
    _table_allowed = field_validator("table")(pg.check_table_param)
    _dsn_allowed = field_validator("dsn")(check_dsn_param)

    @field_validator("columns", "key")
    @classmethod
    def _names_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for name in value:
            pg.check_column_name(name)
        if len(set(value)) != len(value):
            raise ValueError("column names must be unique")
        return value

    @field_validator("column_types")
    @classmethod
    def _types_ok(cls, value: dict[str, str]) -> dict[str, str]:
        for name, sql_type in value.items():
            pg.check_column_name(name)
            if not _SQL_TYPE.fullmatch(sql_type.strip()):
                raise ValueError(f"column_types.{name}: {sql_type!r} is not a SQL type name")
        return value

    @model_validator(mode="after")
    def _key_fits(self) -> PostgresSinkParams:
        if self.mode == "upsert" and not self.key:
            raise ValueError("mode: upsert needs `key` (the columns of the conflict key)")
        if self.key and self.columns:
            missing = [k for k in self.key if k not in self.columns]
            if missing:
                raise ValueError(f"key names column(s) not in columns: {', '.join(missing)}")
        return self


@headwater.sink(
    "postgres",
    params=PostgresSinkParams,
    delivery="transactional",
    check=check_postgres_sink,
)
class PostgresSink:
    """Write items as rows of a PostgreSQL table with COPY (or upserts), one transaction
    per checkpoint.

    Items are dicts (keyed by column) or sequences of values in column order. In a
    checkpointed run the rows stay in one open transaction until the next checkpoint,
    which is committed in the same transaction (table ``headwater_sink_checkpoints``):
    rows and checkpoint are durable together or not at all, so a run killed at any point
    and resumed writes every item exactly once. Without checkpoints (or with
    ``transactional: false``) each batch is committed on its own, and a batch
    interrupted by an outage is written again once the server is back (at-least-once;
    ``mode: upsert`` makes the repeat harmless). The output is ``{"table", "rows"}``.
    """

    def __init__(self, params: PostgresSinkParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.rows = 0
        self.columns: list[str] | None = list(params.columns) if params.columns else None
        self._ignore_extra = params.columns is not None
        self._deferred = bool(ctx.checkpointing) and params.transactional
        self._pool: Any = None
        self._conn: Any = None
        """The connection holding the open transaction (transactional mode)."""
        self._sql: str | None = None
        self._json_at: list[int] = []
        self._getter: Callable[[Any], Any] | None = None
        self._copy: Any = None
        """The COPY streaming the open transaction's rows (transactional insert mode)."""
        self._copy_stack: contextlib.AsyncExitStack | None = None
        self.log = stage_logger("headwater.postgres", ctx)
        self.link = Link(
            "postgres sink",
            pg.display_dsn(params.dsn),
            deadline=params.outage_deadline,
            log=self.log,
        )
        self._untrack: Callable[[], None] = lambda: None

    async def open(self) -> None:
        """Check the table against the policy, connect (through an outage) and create the
        checkpoint table of a transactional run."""
        pool_mod = pg.pool_module("postgres sink")
        pg.psycopg("postgres sink")
        stage = self.ctx.stage
        self.ctx.policy.check_table(self.params.table, param=f"{stage}.params.table")
        check_dsn(self.ctx.policy, self.params.dsn, param=f"{stage}.params.dsn")
        self._untrack = track(self.ctx, self.link, "sink")
        self._pool = pool_mod.AsyncConnectionPool(
            self.params.dsn, min_size=1, max_size=1, open=False, name="headwater-sink"
        )
        await retry(self.link, self._open_pool, transient=pg.transient)
        if self._deferred:
            conn = await self._held()
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {pg.CHECKPOINT_TABLE} (pipeline text NOT NULL,"
                " sink_table text NOT NULL, seq bigint NOT NULL, data text NOT NULL,"
                " PRIMARY KEY (pipeline, sink_table))"
            )
            await conn.commit()

    async def _open_pool(self) -> None:
        await self._pool.open(wait=True, timeout=10.0)

    async def _held(self) -> Any:
        """The connection of the open transaction (taken from the pool once)."""
        if self._conn is None:
            self._conn = await retry(self.link, self._pool.getconn, transient=pg.transient)
        return self._conn

    # -- preparing the statement ------------------------------------------------------------

    async def _prepare(self, conn: Any, first: Any) -> None:
        """Settle the columns, create the table if asked, find its json columns and build
        the statement."""
        params = self.params
        if self.columns is None:
            self.columns = self._infer_columns(first)
        columns = self.columns
        table = pg.table_sql(params.table)
        names = ", ".join(pg.identifier(c) for c in columns)
        if params.create:
            await conn.execute(self._create_sql(table, columns, first))
        cur = await conn.execute(f"SELECT {names} FROM {table} LIMIT 0")
        self._json_at = [
            i for i, d in enumerate(cur.description or ()) if d.type_code in _JSON_OIDS
        ]
        if params.mode == "upsert":
            key = params.key or []
            missing = [k for k in key if k not in columns]
            if missing:
                raise ValueError(
                    f"postgres: key column(s) {', '.join(missing)} not among the columns "
                    f"{', '.join(columns)}"
                )
            keys = ", ".join(pg.identifier(k) for k in key)
            updates = ", ".join(
                f"{pg.identifier(c)} = EXCLUDED.{pg.identifier(c)}" for c in columns if c not in key
            )
            action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
            marks = ", ".join(["%s"] * len(columns))
            self._sql = (
                f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({keys}) {action}"
            )
        else:
            self._sql = f"COPY {table} ({names}) FROM STDIN"

    def _create_sql(self, table: str, columns: list[str], first: Any) -> str:
        """``CREATE TABLE IF NOT EXISTS`` with types from ``column_types`` or the values."""
        types = self.params.column_types
        values = self._to_rows([first])[0] if first is not None else [None] * len(columns)
        parts = [
            f"{pg.identifier(c)} {types.get(c) or _sql_type_of(v)}"
            for c, v in zip(columns, values, strict=True)
        ]
        if self.params.key:
            parts.append(f"PRIMARY KEY ({', '.join(pg.identifier(k) for k in self.params.key)})")
        return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)})"

    def _infer_columns(self, first: Any) -> list[str]:
        """The keys of the first item, which must be a dict."""
        if not isinstance(first, Mapping):
            raise TypeError(
                f"postgres: item 0 is a {type_name(first)}; without the columns param, "
                "items must be dicts (their keys name the columns)"
            )
        if not first:
            raise ValueError("postgres: item 0 is an empty dict; cannot infer the columns")
        for key in first:
            pg.check_column_name(key, "column (a key of item 0)")
        return list(first)

    def _to_rows(self, batch: list[Any]) -> list[Sequence[Any]]:
        """Turn items into value sequences in column order (the hot path: one C-level
        ``itemgetter`` pass when every item is a dict holding exactly the columns)."""
        rows = self._fast_rows(batch)
        if rows is None:
            rows = self._slow_rows(batch)
        if self._json_at:
            jsonb = pg.psycopg("postgres sink").types.json.Jsonb
            at = self._json_at
            for i, row in enumerate(rows):
                row = list(row)
                for j in at:
                    if row[j] is not None:
                        row[j] = jsonb(row[j])
                rows[i] = row
        return rows

    def _fast_rows(self, batch: list[Any]) -> list[Sequence[Any]] | None:
        """The rows when every item is a dict with every column (and, unless ``columns``
        was given, no other key); None otherwise (:meth:`_slow_rows` then decides)."""
        columns = self.columns
        assert columns is not None
        if self._getter is None:
            self._getter = operator.itemgetter(*columns)
        try:
            values = list(map(self._getter, batch))
        except (KeyError, TypeError, IndexError):
            return None
        if not self._ignore_extra and sum(map(len, batch)) != len(columns) * len(batch):
            return None  # some item has more keys than columns
        if len(columns) == 1:
            return [(value,) for value in values]
        return values  # tuples from itemgetter

    def _slow_rows(self, batch: list[Any]) -> list[Sequence[Any]]:
        """Item by item, for sequences, missing keys (NULL) and errors naming the item."""
        assert self.columns is not None
        return column_rows(
            batch,
            self.columns,
            table=self.params.table,
            first_index=self.rows,
            strict=not self._ignore_extra,
            sink="postgres",
        )

    # -- writing ---------------------------------------------------------------------------

    async def _insert(self, conn: Any, batch: list[Any]) -> int:
        """Write ``batch`` through ``conn`` (in its current transaction)."""
        if self._sql is None:
            await self._prepare(conn, batch[0])
        assert self._sql is not None
        rows = self._to_rows(batch)
        if self._deferred and self.params.mode == "insert":
            # one COPY for every batch up to the checkpoint: a COPY costs round trips
            copy = await self._open_copy(conn)
            write_row = copy.write_row
            for row in rows:
                await write_row(row)
            return len(rows)
        async with conn.cursor() as cur:
            if self.params.mode == "upsert":
                await cur.executemany(self._sql, rows)
            else:
                async with cur.copy(self._sql) as copy:
                    write_row = copy.write_row
                    for row in rows:
                        await write_row(row)
        return len(rows)

    async def _open_copy(self, conn: Any) -> Any:
        """The COPY of the open transaction, started at its first batch."""
        if self._copy is None:
            assert self._sql is not None
            stack = contextlib.AsyncExitStack()
            try:
                cur = await stack.enter_async_context(conn.cursor())
                self._copy = await stack.enter_async_context(cur.copy(self._sql))
            except BaseException:
                await stack.aclose()
                raise
            self._copy_stack = stack
        return self._copy

    async def _end_copy(self, error: BaseException | None = None) -> None:
        """Finish the open COPY (its rows then wait for the commit); with ``error``,
        abort it (the server discards its rows)."""
        stack, self._copy_stack, self._copy = self._copy_stack, None, None
        if stack is None:
            return
        if error is None:
            await stack.aclose()
            return
        try:
            await stack.__aexit__(type(error), error, error.__traceback__)
        except Exception as exc:  # the COPY failed as asked; the rollback follows
            self.log.debug("postgres: aborting the COPY: %s", exc)

    async def write(self, batch: list[Any]) -> None:
        """Write the batch: inside the open transaction (transactional mode), else in a
        transaction of its own, again after an outage."""
        if not batch:
            return
        if self._deferred:
            conn = await self._held()
            try:
                self.rows += await self._insert(conn, batch)  # committed with the checkpoint
            except Exception as exc:
                raise self._lost(exc) from exc
            return

        async def once() -> int:
            async with self._pool.connection() as conn:  # commits at exit
                return await self._insert(conn, batch)

        self.rows += await retry(self.link, once, transient=pg.transient)

    def _lost(self, exc: Exception) -> Exception:
        """The error for a failure inside the open transaction."""
        if pg.transient(exc):
            return RuntimeError(
                f"postgres: the connection to {self.link.address} failed inside the open "
                f"transaction ({exc}); its rows were not committed: resume the run "
                "(headwater run --resume) to write them again exactly once"
            )
        return exc

    async def commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Commit the rows written since the last checkpoint together with ``checkpoint``."""
        if not self._deferred:
            return
        conn = await self._held()
        try:
            await self._end_copy()
            await conn.execute(
                f"INSERT INTO {pg.CHECKPOINT_TABLE} VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (pipeline, sink_table) DO UPDATE SET seq = EXCLUDED.seq, "
                "data = EXCLUDED.data",
                (checkpoint.pipeline, self.params.table, checkpoint.seq, checkpoint.to_json()),
            )
            await conn.commit()
        except Exception as exc:
            raise self._lost(exc) from exc

    async def load_checkpoint(self) -> str | None:
        """The checkpoint committed with this table's rows (JSON), for resuming."""
        if not self._deferred:
            return None
        conn = await self._held()
        cur = await conn.execute(
            f"SELECT data FROM {pg.CHECKPOINT_TABLE} WHERE pipeline = %s AND sink_table = %s",
            (self.ctx.pipeline, self.params.table),
        )
        row = await cur.fetchone()
        await conn.rollback()  # end the read's transaction: the rows get a fresh one
        return None if row is None else str(row[0])

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Roll back an unfinished transaction, close; returns ``{"table", "rows"}``."""
        self._untrack()
        conn, self._conn = self._conn, None
        pool, self._pool = self._pool, None
        try:
            if conn is not None:
                try:
                    await self._end_copy(error or RuntimeError("the run ended"))
                    await conn.rollback()
                except Exception as exc:  # a broken connection: nothing left to roll back
                    self.log.debug("postgres: rollback at close failed: %s", exc)
                await pool.putconn(conn)
        finally:
            if pool is not None:
                await pool.close(timeout=5.0)
        return {"table": self.params.table, "rows": self.rows}


connector(
    PostgresSink,
    extra="postgres",
    guarantee="exactly-once in a checkpointed run (rows and checkpoint in one transaction); "
    "at-least-once otherwise (`mode: upsert` makes a repeat harmless)",
    ack="the commit of the transaction holding the checkpoint (without checkpoints: each "
    "batch's commit)",
    ordering="batches in order, one COPY per checkpoint",
    backpressure="`write` returns once the rows are on the server: a slow server slows the "
    "pipeline",
    resume="the checkpoint committed with the rows wins over an older one in the store",
)
