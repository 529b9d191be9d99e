"""Connection checks of the PostgreSQL and SQLite connectors.

PostgreSQL: connect and log in, then, inside a READ ONLY transaction that is rolled
back, ``SELECT 1``, whether the table exists, and whether the user may read it (a
source), insert into it (a sink, a checkpoint store) or create it in its schema (when
the component creates missing tables); a source's ``query`` is planned with ``LIMIT 0``
(no row is read). SQLite: the database path is allowed by the sandbox and can be created
(its missing folders too); an existing database is opened read-only to look for the
table. Nothing is created: a missing table or file is reported as what the run creates.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from headwater.core.context import StreamContext
from headwater.core.errors import CheckFailed, CheckSkipped

from .network import unreachable

if TYPE_CHECKING:
    from ..postgres import PostgresQueryParams
    from ..postgres_sink import PostgresSinkParams
    from ..postgres_store import PostgresStoreParams
    from ..sqlite_sink import SqliteParams
    from ..stores import SQLiteStoreParams

__all__ = [
    "check_postgres_sink",
    "check_postgres_source",
    "check_postgres_store",
    "check_sqlite_sink",
    "check_sqlite_store",
]


# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------


async def _postgres(dsn: str, ctx: StreamContext, component: str) -> Any:
    """A connection in a READ ONLY transaction (closed by the caller), once the sandbox
    allowed every host of ``dsn``."""
    from .._addresses import check_dsn
    from .._postgres import display_dsn, psycopg

    pg = psycopg(component)
    check_dsn(ctx.policy, dsn, param=f"{ctx.stage}.params.dsn")
    address = display_dsn(dsn)
    try:
        conn = await pg.AsyncConnection.connect(dsn, connect_timeout=5)
    except pg.OperationalError as exc:
        raise CheckFailed(f"{address}: {_pg_reason(exc)}") from None
    except Exception as exc:
        raise unreachable(address, exc) from None
    try:
        await conn.set_read_only(True)
        await conn.execute("SELECT 1")
    except Exception:
        await conn.close()
        raise
    return conn


def _pg_reason(exc: BaseException) -> str:
    """libpq's reason, without the ``connection to server at ... failed:`` part that
    repeats the address."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = next((ln for ln in lines if " failed: " in ln), lines[0] if lines else "")
    text = text.rpartition(" failed: ")[2] or type(exc).__name__
    if "Connection refused" in text:
        return "connection refused (no server listens on that port)"
    return text


async def _one(conn: Any, sql: str, *args: Any) -> Any:
    cursor = await conn.execute(sql, args)
    row = await cursor.fetchone()
    return row[0] if row else None


async def _table(conn: Any, table: str, privilege: str, create: bool) -> str:
    """Whether ``table`` exists and the user has ``privilege`` on it; if it does not
    exist, whether the user may create it (when ``create``); CheckFailed otherwise."""
    from .._postgres import table_sql

    quoted = table_sql(table)
    if await _one(conn, "SELECT to_regclass(%s)", quoted) is not None:
        if not await _one(conn, "SELECT has_table_privilege(%s, %s)", quoted, privilege):
            raise CheckFailed(f"no {privilege} privilege on table {table!r}")
        return f"table {table!r} ({privilege} allowed)"
    if not create:
        raise CheckFailed(f"table {table!r} does not exist")
    schema = table.split(".")[0] if "." in table else await _one(conn, "SELECT current_schema()")
    if schema is None:
        raise CheckFailed(f"table {table!r} does not exist and no schema is on the search_path")
    if await _one(conn, "SELECT to_regnamespace(%s)", f'"{schema}"') is None:
        raise CheckFailed(f"table {table!r} does not exist, nor does schema {schema!r}")
    if not await _one(conn, "SELECT has_schema_privilege(%s, 'CREATE')", schema):
        raise CheckFailed(f"table {table!r} does not exist and may not be created in {schema!r}")
    return f"table {table!r} is created at the start"


async def _checked(dsn: str, ctx: StreamContext, component: str, check: Any) -> str:
    from .._postgres import display_dsn

    address = display_dsn(dsn)
    conn = await _postgres(dsn, ctx, component)
    try:
        said = await check(conn)
    except CheckFailed as exc:
        raise CheckFailed(f"{address}: {exc}") from None
    finally:
        await conn.rollback()
        await conn.close()
    return f"{address}: {said}"


async def check_postgres_source(params: PostgresQueryParams, ctx: StreamContext) -> str:
    """Connect; the table (SELECT privilege) or the query, with its columns, read as
    ``LIMIT 0``."""
    from .._postgres import identifier, table_sql

    async def check(conn: Any) -> str:
        said = "query planned"
        if params.table is not None:
            said = await _table(conn, params.table, "SELECT", create=False)
            relation = table_sql(params.table)
        else:
            relation = f"({params.query}) AS q"
        names = [*(params.columns or ()), *params.cursor]
        columns = ", ".join(identifier(c) for c in dict.fromkeys(names))
        try:
            await conn.execute(f"SELECT {columns} FROM {relation} LIMIT 0")
        except Exception as exc:
            raise CheckFailed(" ".join(str(exc).split())) from None
        return said

    return await _checked(params.dsn, ctx, "postgres.query", check)


async def check_postgres_sink(params: PostgresSinkParams, ctx: StreamContext) -> str:
    """Connect; the table (INSERT privilege), or that it may be created."""

    async def check(conn: Any) -> str:
        return await _table(conn, params.table, "INSERT", create=params.create)

    return await _checked(params.dsn, ctx, "postgres sink", check)


async def check_postgres_store(params: PostgresStoreParams, ctx: StreamContext) -> str:
    """Connect; the checkpoints table (INSERT privilege), or that it may be created."""

    async def check(conn: Any) -> str:
        return await _table(conn, params.table, "INSERT", create=True)

    return await _checked(params.dsn, ctx, "postgres checkpoint store", check)


# ---------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------


def _database_file(path: str, ctx: StreamContext, param: str, *, sandboxed: bool = True) -> str:
    """The real path of a database the sandbox allows (``sandboxed``: a path the
    pipeline set) and that can be created or written; CheckFailed otherwise."""
    from .._sandbox import output_path_problem

    path = os.path.expanduser(path)
    real = str(ctx.policy.check_path(path, param=param)) if sandboxed else os.path.realpath(path)
    problem = output_path_problem(real)
    if problem is not None:
        raise CheckFailed(problem)
    return real


def _sqlite_tables(real: str) -> set[str]:
    """The tables of an existing database, opened read-only."""
    import sqlite3
    from pathlib import Path

    uri = f"{Path(real).as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise CheckFailed(f"{real}: cannot open the database: {exc}") from None
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error as exc:
        raise CheckFailed(f"{real}: not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    return {str(r[0]) for r in rows}


def _folders_to_make(real: str) -> str:
    parent = os.path.dirname(real)
    return "" if os.path.isdir(parent) else f" (with its folder {parent})"


def check_sqlite_sink(params: SqliteParams, ctx: StreamContext) -> str:
    """The database can be created or written; an existing one has the table (or it
    will be created)."""
    from .._sandbox import IN_MEMORY_DB

    if params.path in IN_MEMORY_DB:
        raise CheckSkipped("an in-memory database: nothing to reach")
    real = _database_file(params.path, ctx, f"{ctx.stage}.params.path")
    if not os.path.exists(real):
        return f"{real}: the database is created at the start{_folders_to_make(real)}"
    if params.table in _sqlite_tables(real):
        return f"{real}: table {params.table!r}"
    if not params.create:
        raise CheckFailed(f"{real}: table {params.table!r} does not exist (and create is off)")
    return f"{real}: table {params.table!r} is created by the first batch"


def check_sqlite_store(params: SQLiteStoreParams, ctx: StreamContext) -> str:
    """The checkpoint database can be created or written (the sandbox applies to a path
    the pipeline sets, not to the operator's default)."""
    sandboxed = "path" in params.model_fields_set
    real = _database_file(params.path, ctx, "checkpoint.params.path", sandboxed=sandboxed)
    if not os.path.exists(real):
        return f"{real}: the database is created at the first checkpoint{_folders_to_make(real)}"
    _sqlite_tables(real)
    return f"{real}: writable"
