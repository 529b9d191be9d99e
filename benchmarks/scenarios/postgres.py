"""``postgres``: rows per second into PostgreSQL, exactly-once, against a hand-written
psycopg ``COPY`` loop measured in the same run.

**headwater**: ``range(N) -> map(record) -> postgres`` with ``checkpoint:`` at the
default interval (10,000 items or 5 s; SQLite checkpoint store in a temporary folder),
so the sink is transactional: its rows stay in one transaction until the checkpoint
that covers them, which is committed in the same transaction (``COPY`` per batch).

**hand-written**: the same records, made by the same function, written with psycopg's
asyncio ``COPY ... FROM STDIN`` (``write_row`` per row) and committed once per batch of
10,000 rows: the loop an engineer would write without a framework, with the same
number of commits and no checkpoint bookkeeping.

Each round writes into a fresh table, dropped afterwards; the rows are counted (outside
the timed part) and must be N. Needs a server (``HEADWATER_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``) and the ``postgres`` extra; without them
the rows are skipped with the reason.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..harness import (
    Column,
    Implementation,
    Measured,
    Sample,
    ScenarioReport,
    Settings,
    available,
    fmt_ns,
    fmt_rate,
    fmt_seconds,
    measure,
    timed,
)
from . import Progress

TITLE = "PostgreSQL sink, exactly-once: range -> map -> postgres vs a hand-written COPY loop"
DESCRIPTION = (
    "One process; the transactional postgres sink (rows and checkpoint in one transaction, "
    "default checkpoint interval) against psycopg's COPY committing every 10,000 rows, "
    "alternating within every round. Metrics: seconds, ns_per_item, rows_per_s."
)

DSN = os.environ.get("HEADWATER_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
FULL_N = 1_000_000
QUICK_N = 100_000
WARMUP_N = 20_000
COMMIT_EVERY = 10_000
"""Rows per commit of the hand-written loop: the default checkpoint interval."""
TARGET = 0.8
"""headwater's rows/s must be at least this share of the hand-written loop's."""


def record(x: int) -> dict[str, Any]:
    """The ``map`` step, and the hand-written loop's row maker: a small record."""
    return {"n": x, "name": f"row-{x}", "v": x * 0.5}


def _table() -> str:
    return f"hw_bench_{uuid.uuid4().hex[:12]}"


def _create(table: str) -> str:
    return f"CREATE TABLE {table} (n bigint, name text, v double precision)"


def _count_and_drop(table: str) -> int:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        cur = conn.execute(f"SELECT count(*), count(DISTINCT n) FROM {table}")
        total, distinct = cur.fetchone() or (0, 0)
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("DELETE FROM headwater_sink_checkpoints WHERE sink_table = %s", (table,))
    return int(total) if total == distinct else -1


def _prepare(table: str) -> None:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(_create(table))
        conn.execute(  # as the sink creates it, so that no round pays for it
            "CREATE TABLE IF NOT EXISTS headwater_sink_checkpoints (pipeline text NOT NULL,"
            " sink_table text NOT NULL, seq bigint NOT NULL, data text NOT NULL,"
            " PRIMARY KEY (pipeline, sink_table))"
        )


def headwater_round(n: int) -> Callable[[], Sample]:
    """One round of the pipeline into a fresh table."""
    import headwater

    # the operator of this benchmark allows its own record function as a callable
    policy = headwater.SandboxPolicy.from_environment(callables=(__name__,))
    engine = headwater.Engine(policy=policy)

    def run() -> Sample:
        table = _table()
        _prepare(table)
        with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
            spec = {
                "name": f"bench-{table}",
                "sources": {"numbers": {"action": "range", "params": {"stop": n}}},
                "steps": [
                    {
                        "transformer": "map",
                        "params": {"fn": "benchmarks.scenarios.postgres:record"},
                    }
                ],
                "sinks": [
                    {
                        "sink": "postgres",
                        "params": {"dsn": DSN, "table": table, "create": False},
                    }
                ],
                "checkpoint": {"params": {"path": str(Path(tmp) / "checkpoints.db")}},
            }
            sample = timed(lambda: headwater.run_sync(spec, engine=engine))
        sample.result = _count_and_drop(table)
        return sample

    return run


def handwritten_round(n: int) -> Callable[[], Sample]:
    """One round of the hand-written COPY loop into a fresh table."""

    def run() -> Sample:
        import asyncio

        import psycopg

        table = _table()
        _prepare(table)
        columns = ("n", "name", "v")

        async def main() -> None:
            async with await psycopg.AsyncConnection.connect(DSN) as conn:
                for start in range(0, n, COMMIT_EVERY):
                    async with conn.cursor() as cur:
                        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                        async with cur.copy(sql) as copy:
                            for x in range(start, min(start + COMMIT_EVERY, n)):
                                row = record(x)
                                await copy.write_row([row[c] for c in columns])
                    await conn.commit()

        sample = timed(lambda: asyncio.run(main()))
        sample.result = _count_and_drop(table)
        return sample

    return run


def _derive(n: int) -> Callable[[dict[str, float]], dict[str, float]]:
    def derive(metrics: dict[str, float]) -> dict[str, float]:
        seconds = metrics["seconds"]
        return {
            "seconds": seconds,
            "ns_per_item": seconds * 1e9 / n,
            "rows_per_s": n / seconds,
            "cpu_seconds": metrics["cpu_seconds"],
        }

    return derive


def _problem() -> str | None:
    """Why the scenario cannot run here, or None."""
    for module in ("psycopg", "psycopg_pool"):
        if not available(module):
            return f"not installed: {module} (pip install 'headwater[postgres]')"
    parts = urlsplit(DSN)
    address = (parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        with socket.create_connection(address, 2):
            return None
    except OSError as exc:
        return f"no PostgreSQL server at {address[0]}:{address[1]} ({exc.strerror or exc})"


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure both; target: headwater's rows/s >= 0.8x the hand-written loop's."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=5, quick=2)
    warmup = settings.pick_warmup(1)
    impls = [
        Implementation(
            "handwritten_copy",
            run=handwritten_round(n),
            warmup=handwritten_round(min(n, WARMUP_N)),
            description=f"psycopg async COPY, write_row per row, commit every {COMMIT_EVERY:,}",
        ),
        Implementation(
            "headwater_exactly_once",
            run=headwater_round(n),
            warmup=headwater_round(min(n, WARMUP_N)),
            description="postgres sink, checkpointed: rows + checkpoint in one transaction",
        ),
    ]
    problem = _problem()
    if problem is None:
        measured = measure(
            impls, rounds=rounds, warmup=warmup, derive=_derive(n), expected=n, progress=progress
        )
    else:
        measured = Measured({}, {}, {impl.name: problem for impl in impls})
    report = ScenarioReport(
        name="postgres",
        title=TITLE,
        params={"N": n, "rounds": rounds, "warm-up": warmup},
        measured=measured,
        columns=[
            Column("seconds", "seconds", fmt_seconds),
            Column("ns_per_item", "ns/row", fmt_ns, spread=False),
            Column("rows_per_s", "rows/s", fmt_rate, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="handwritten_copy",
        ratio_metric="seconds",
        ratio_header="time vs handwritten_copy",
    )
    report.targets = [
        report.target_ratio(
            "headwater_exactly_once", "handwritten_copy", "rows_per_s", TARGET, also="cpu_seconds"
        )
    ]
    report.notes.append(
        f"every round wrote exactly {n:,} distinct rows into a fresh table (counted after "
        "the timed part); the hand-written loop has no checkpoint and no resume"
    )
    return report
