"""PostgreSQL: an incremental ``postgres.query`` source, an exactly-once ``postgres`` sink
and a ``postgres`` checkpoint store.

Installed with ``pip install 'headwater[postgres]'`` (``psycopg`` 3 and ``psycopg_pool``).
This module imports without them; a component reports the missing package when used.
The source and the sink use psycopg's asyncio API, so they run on asyncio.

* ``postgres.query`` (source) reads a table (or, when the operator allows free queries,
  a query) in the order of a **cursor column** (or several, compared as a row), one
  ``SELECT ... WHERE cursor > last ORDER BY cursor LIMIT batch`` at a time, and reports
  the last cursor value as its checkpoint position: a resumed run goes on after it. With
  ``follow: true`` it then waits for new rows, polling every ``poll_interval`` seconds
  and woken at once by ``NOTIFY`` on its ``channel`` when the operator installed the
  trigger that :func:`notify_trigger_sql` prints.
* ``postgres`` (sink) and ``postgres`` (checkpoint store): see :mod:`.postgres_sink` and
  :mod:`.postgres_store`.

Delivery: the source resumes from the last committed cursor (rows after it are read
again after a crash: at-least-once into an at-least-once sink, exactly-once into the
transactional ``postgres`` or ``sqlite`` sink).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Link, retry

from . import _postgres as pg
from ._addresses import check_dsn, check_dsn_param
from ._brokers import stage_logger, track
from ._checks.databases import check_postgres_source
from ._connectors import connector
from .postgres_sink import DSN_HELP, PostgresSink, PostgresSinkParams
from .postgres_store import PostgresCheckpointStore, PostgresStoreParams

__all__ = [
    "PostgresCheckpointStore",
    "PostgresQueryParams",
    "PostgresSink",
    "PostgresSinkParams",
    "PostgresStoreParams",
    "default_channel",
    "notify_trigger_sql",
    "postgres_query_source",
]

_CURSOR_ALIAS = "__headwater_cursor_{}"
_WAKE_SECONDS = 0.5
"""Longest wait of a following source between two looks at its drain and stop flags."""


def _table_name(value: str | None) -> str | None:
    return None if value is None else pg.check_table_name(value)


def default_channel(table: str) -> str:
    """The ``NOTIFY`` channel of ``table`` when none is given: ``headwater_TABLE``
    (dots become ``_``; at most 63 characters, PostgreSQL's limit)."""
    return ("headwater_" + pg.check_table_name(table).replace(".", "_"))[:63]


def notify_trigger_sql(table: str, channel: str | None = None) -> str:
    """The SQL an operator runs once so that ``postgres.query`` with ``follow: true``
    wakes up as soon as rows are inserted into or updated in ``table`` (instead of at
    its next poll).

    One statement-level trigger per table sends an empty ``NOTIFY`` on ``channel``
    (default: :func:`default_channel`). Notifications are delivered when the writing
    transaction commits, so the source never wakes before the rows are visible::

        python -c "from headwater.builtin_plugins.postgres import notify_trigger_sql; \\
                   print(notify_trigger_sql('events'))" | psql
    """
    name = pg.table_sql(table)
    channel = pg.check_column_name(channel or default_channel(table), "channel")
    function = pg.identifier(f"{channel}_notify"[:63])
    return (
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n  PERFORM pg_notify('{channel}', '');\n  RETURN NULL;\nEND $$;\n"
        f"DROP TRIGGER IF EXISTS headwater_notify ON {name};\n"
        f"CREATE TRIGGER headwater_notify AFTER INSERT OR UPDATE ON {name}\n"
        f"  FOR EACH STATEMENT EXECUTE FUNCTION {function}();\n"
    )


class PostgresQueryParams(BaseModel):
    """Params of the ``postgres.query`` source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    dsn: str = Field("", description=DSN_HELP)
    table: str | None = Field(
        None,
        description="Table to read: `table` or `schema.table`; it must be among the "
        "operator's allowed tables, when those are listed. Give table or query.",
    )
    query: str | None = Field(
        None,
        description="A SELECT to read instead of a table (used as a subquery); refused when "
        "the operator lists allowed tables, since a query may read any table.",
    )
    columns: list[str] | None = Field(
        None, min_length=1, description="Columns to emit (default: all of them)."
    )
    cursor: list[str] = Field(
        min_length=1,
        description="Column(s) whose values only grow as rows are added (a bigserial id; "
        "a timestamp with the id as tie-breaker): rows are read in their order, and the "
        "last value read is the checkpoint position.",
    )
    start: list[Any] | None = Field(
        None,
        description="Read only rows after this cursor value (one value per cursor column); "
        "default: from the first row. A resumed run starts after its checkpoint instead.",
    )
    batch: int = Field(1000, ge=1, le=1_000_000, description="Most rows per SELECT.")
    follow: bool = Field(
        False,
        description="After the last row, wait for new ones (poll, and LISTEN on channel) "
        "until cancelled or drained. False: end after the last row.",
    )
    poll_interval: float = Field(
        1.0, gt=0, description="Seconds between two looks for new rows when following."
    )
    channel: str | None = Field(
        None,
        description="NOTIFY channel that wakes a following source early (default: "
        "headwater_TABLE, the one notify_trigger_sql installs). Without the trigger the "
        "source still polls.",
    )
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the server may stay unreachable (reconnecting with backoff) "
        "before the run fails.",
    )

    _table_ok = field_validator("table")(_table_name)
    _table_allowed = field_validator("table")(pg.check_table_param)
    _dsn_allowed = field_validator("dsn")(check_dsn_param)

    @field_validator("columns", "cursor")
    @classmethod
    def _names_ok(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            pg.check_column_name(name)
        return value

    @field_validator("channel")
    @classmethod
    def _channel_ok(cls, value: str | None) -> str | None:
        return None if value is None else pg.check_column_name(value, "channel")

    @field_validator("query")
    @classmethod
    def _query_allowed(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            from headwater.core.policy import policy_of

            pg.check_query_allowed(policy_of(info.context))
        return value

    @model_validator(mode="after")
    def _one_relation(self) -> PostgresQueryParams:
        if (self.table is None) == (self.query is None):
            raise ValueError("give either `table` or `query`")
        if self.start is not None and len(self.start) != len(self.cursor):
            raise ValueError(
                f"start has {len(self.start)} value(s) for {len(self.cursor)} cursor column(s)"
            )
        return self


class _Reader:
    """The source's connection and statements; its methods are what :func:`retry` runs."""

    def __init__(self, params: PostgresQueryParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.log = stage_logger("headwater.postgres", ctx)
        self.link = Link(
            "postgres.query source",
            pg.display_dsn(params.dsn),
            deadline=params.outage_deadline,
            log=self.log,
        )
        self.conn: Any = None
        self.listener: Any = None
        self.channel: str | None = None
        if params.follow:
            self.channel = params.channel or (
                default_channel(params.table) if params.table else None
            )
        relation = (
            pg.table_sql(params.table) if params.table is not None else f"({params.query}) AS q"
        )
        cursor = [pg.identifier(c) for c in params.cursor]
        shown = "*" if params.columns is None else ", ".join(map(pg.identifier, params.columns))
        as_text = ", ".join(f"{c}::text AS {_CURSOR_ALIAS.format(i)}" for i, c in enumerate(cursor))
        order = ", ".join(cursor)
        head = f"SELECT {shown}, {as_text} FROM {relation}"
        tail = f"ORDER BY {order} LIMIT {params.batch}"
        marks = ", ".join(["%s"] * len(cursor))
        self.first_sql = f"{head} {tail}"
        self.next_sql = f"{head} WHERE ({order}) > ({marks}) {tail}"
        self.width = len(cursor)

    async def connect(self) -> None:
        mod = pg.psycopg("postgres.query")
        await self.close()
        self.conn = await mod.AsyncConnection.connect(self.params.dsn, autocommit=True)
        if self.channel is not None:
            self.listener = await mod.AsyncConnection.connect(self.params.dsn, autocommit=True)
            await self.listener.execute(f"LISTEN {pg.identifier(self.channel)}")

    async def reconnect(self) -> None:
        conns = [self.conn] if self.channel is None else [self.conn, self.listener]
        if any(c is None or c.closed or c.broken for c in conns):
            await self.connect()

    async def fetch(self, last: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
        """The next rows after ``last`` (as dicts) and the cursor of the last one."""
        if last is None:
            cur = await self.conn.execute(self.first_sql)
        else:
            cur = await self.conn.execute(self.next_sql, last)
        rows = await cur.fetchall()
        names = [d.name for d in cur.description]
        keep = len(names) - self.width
        shown = names[:keep]
        items = [dict(zip(shown, row[:keep], strict=True)) for row in rows]
        cursor = list(rows[-1][keep:]) if rows else []
        return items, cursor

    async def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a notification; True when one came."""
        if self.listener is None:
            await anyio.sleep(seconds)
            return False
        async for _ in self.listener.notifies(timeout=seconds, stop_after=1):
            return True
        return False

    async def close(self) -> None:
        for name in ("conn", "listener"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await conn.close()


def _start_cursor(params: PostgresQueryParams, ctx: StreamContext) -> list[str] | None:
    """Where to start: after the committed cursor, else after ``start``, else first."""
    position = ctx.resume_position
    if isinstance(position, dict) and isinstance(position.get("cursor"), list):
        return [str(v) for v in position["cursor"]]
    if params.start is not None:
        return [str(v) for v in params.start]
    return None


@headwater.action(
    "postgres.query",
    params=PostgresQueryParams,
    output="one dict per row (column -> value), in cursor order",
    capabilities=("streaming", "resumable"),
    batched=True,
    check=check_postgres_source,
)
async def postgres_query_source(
    params: PostgresQueryParams, ctx: StreamContext
) -> AsyncIterator[list[dict[str, Any]]]:
    """Read a PostgreSQL table or query incrementally by a cursor column; resumable;
    optionally follow new rows (poll, woken early by LISTEN/NOTIFY).

    The checkpoint position is ``{"cursor": [VALUE, ...]}`` (the values as text). Rows
    are read ``batch`` at a time with ``WHERE (cursor) > (last) ORDER BY cursor``, so the
    cursor must be unique (add the primary key as a last cursor column otherwise). When
    following, a row whose cursor value is lower than one already read (a sequence value
    taken by a transaction that committed after a later one) is not seen: use a cursor
    that grows in commit order, or a single writer.
    """
    pg.psycopg("postgres.query")
    if params.table is not None:
        ctx.policy.check_table(params.table, param=f"{ctx.stage}.params.table")
    else:
        pg.check_query_allowed(ctx.policy, f"{ctx.stage}.params.query")
    check_dsn(ctx.policy, params.dsn, param=f"{ctx.stage}.params.dsn")
    reader = _Reader(params, ctx)
    link = reader.link
    untrack = track(ctx, link, "source")
    last = _start_cursor(params, ctx)
    read = 0
    try:
        await retry(link, reader.connect, transient=pg.transient)
        where = params.table or "query"
        ctx.status(f"reading {where} after {last}" if last else f"reading {where}")
        due = True  # read now: at start, after a full batch, when notified or polled
        next_poll = 0.0
        while not ctx.cancelled and not ctx.draining:
            if due or time.monotonic() >= next_poll:
                items, cursor = await retry(
                    link,
                    lambda: reader.fetch(last),  # noqa: B023 - awaited at once
                    transient=pg.transient,
                    reconnect=reader.reconnect,
                )
                if items:
                    last = cursor
                    read += len(items)
                    yield items
                    ctx.checkpoint({"cursor": last})
                    ctx.progress(read, message=f"cursor {', '.join(last)}")
                due = len(items) == params.batch  # more may be there already
                if due:
                    continue
                if not params.follow:
                    break
                next_poll = time.monotonic() + params.poll_interval
            # caught up: report again, so that a checkpoint due by time still happens
            ctx.checkpoint({"cursor": last})
            wait = min(_WAKE_SECONDS, max(0.0, next_poll - time.monotonic()))
            due = await retry(
                link,
                lambda: reader.wait(wait),  # noqa: B023 - awaited at once
                transient=pg.transient,
                reconnect=reader.reconnect,
            )
        ctx.checkpoint({"cursor": last})
    finally:
        untrack()
        with anyio.CancelScope(shield=True):
            await reader.close()


connector(
    postgres_query_source,
    extra="postgres",
    guarantee="exactly-once into a transactional sink (`postgres`, `sqlite`); at-least-once "
    "into others: the rows after the committed cursor are read again",
    ack="the checkpoint commit (the cursor is saved once every sink committed the rows)",
    ordering="cursor order",
    backpressure="one SELECT of `batch` rows at a time, as fast as the pipeline takes them",
    resume="from the committed cursor (`--resume`); `follow` then waits for new rows, "
    "polling, woken by LISTEN/NOTIFY",
)
