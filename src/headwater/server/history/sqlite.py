"""The built-in run store: one SQLite file, ``.headwater/runs.db`` by default.

Two tables: ``runs`` (one row per run: the columns lists filter and sort on, the rest of
the record as JSON) and ``chunks`` (the kept chunks of each run's stream). WAL mode, so
that readers (``GET /api/runs``) never wait for the writer. Listing is a keyset query on
``(started_at, run_id)`` through an index, so a page costs the same with ten runs or
a hundred thousand. Retention deletes the oldest finished runs beyond the count, the
size (a running sum over the newest first, a window function) and the age.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .records import MAX_PAGE, Retention, RunPage, RunQuery, RunRecord, process_alive

__all__ = ["DEFAULT_PATH", "SQLiteRunStore"]

DEFAULT_PATH: Final = Path(".headwater") / "runs.db"
"""Where the ``sqlite`` run store writes, relative to the working directory (beside the
checkpoints, ``.headwater/checkpoints.db``)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    stream TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    size INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at, run_id);
CREATE INDEX IF NOT EXISTS runs_pipeline ON runs (pipeline, started_at, run_id);
CREATE INDEX IF NOT EXISTS runs_stream ON runs (stream, started_at);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, started_at);
CREATE TABLE IF NOT EXISTS chunks (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""

_FIELDS: Final = frozenset(RunRecord.__dataclass_fields__)


def _record(text: str) -> RunRecord:
    data: dict[str, Any] = json.loads(text)
    return RunRecord(**{k: v for k, v in data.items() if k in _FIELDS})


class SQLiteRunStore:
    """Runs in an SQLite file (created with its folders on first use)."""

    def __init__(self, path: str | Path = DEFAULT_PATH, timeout: float = 5.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path), timeout=timeout, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def save(self, record: RunRecord, chunks: Sequence[tuple[int, bytes]] | None = None) -> None:
        """Insert or replace ``record``; with ``chunks``, replace its kept chunks."""
        from dataclasses import asdict

        text = json.dumps(asdict(record), default=str, separators=(",", ":"))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO runs (run_id, pipeline, stream, state, started_at,"
                    " ended_at, size, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.run_id,
                        record.pipeline,
                        record.stream,
                        record.state,
                        record.started_at,
                        record.ended_at,
                        record.size,
                        text,
                    ),
                )
                if chunks is not None:
                    db.execute("DELETE FROM chunks WHERE run_id = ?", (record.run_id,))
                    db.executemany(
                        "INSERT INTO chunks (run_id, seq, data) VALUES (?, ?, ?)",
                        [(record.run_id, seq, data) for seq, data in chunks],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def get(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or None."""
        with self._lock:
            row = self._db.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _record(row[0]) if row else None

    def by_stream(self, stream: str) -> RunRecord | None:
        """The newest run whose output went to ``stream``."""
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM runs WHERE stream = ? ORDER BY started_at DESC LIMIT 1",
                (stream,),
            ).fetchone()
        return _record(row[0]) if row else None

    def query(self, query: RunQuery) -> RunPage:
        """Runs matching ``query``, newest first (a keyset page)."""
        where: list[str] = []
        args: list[Any] = []
        if query.pipeline is not None:
            where.append("pipeline = ?")
            args.append(query.pipeline)
        if query.state is not None:
            where.append("state = ?")
            args.append(query.state)
        if query.since is not None:
            where.append("started_at >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("started_at < ?")
            args.append(query.until)
        if query.before is not None:
            where.append("(started_at < ? OR (started_at = ? AND run_id < ?))")
            args.extend((query.before[0], query.before[0], query.before[1]))
        limit = max(1, min(query.limit, MAX_PAGE))
        sql = "SELECT record FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        runs = [_record(r[0]) for r in rows[:limit]]
        cursor = (runs[-1].started_at, runs[-1].run_id) if len(rows) > limit and runs else None
        return RunPage(runs, cursor)

    def chunks(self, run_id: str, since: int = 0) -> list[tuple[int, bytes]]:
        """The kept chunks of ``run_id`` after ``since``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, data FROM chunks WHERE run_id = ? AND seq > ? ORDER BY seq",
                (run_id, since),
            ).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def prune(self, retention: Retention, now: float) -> int:
        """Delete the oldest finished runs beyond the count, the size and the age."""
        cutoff = now - retention.max_age if retention.max_age is not None else None
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                doomed = db.execute(
                    "SELECT run_id FROM ("
                    " SELECT run_id, started_at, ended_at,"
                    "  ROW_NUMBER() OVER w AS n, SUM(size) OVER w AS total"
                    " FROM runs WHERE state NOT IN ('running', 'pending')"
                    " WINDOW w AS (ORDER BY started_at DESC, run_id DESC))"
                    " WHERE n > ? OR total > ? OR (? IS NOT NULL AND"
                    "  COALESCE(ended_at, started_at) < ?)",
                    (retention.max_runs, retention.max_bytes, cutoff, cutoff),
                ).fetchall()
                ids = [(r[0],) for r in doomed]
                if ids:
                    db.executemany("DELETE FROM chunks WHERE run_id = ?", ids)
                    db.executemany("DELETE FROM runs WHERE run_id = ?", ids)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(ids)

    def interrupt(self, now: float) -> int:
        """Mark runs left ``running`` or ``pending`` by a process that is gone (killed) as
        ``interrupted``; the runs of processes still running are left alone."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM runs WHERE state IN ('running', 'pending')"
            ).fetchall()
        count = 0
        for (text,) in rows:
            record = _record(text)
            if process_alive(record.process):
                continue
            record.state = "interrupted"
            record.ended_at = now
            self.save(record)
            count += 1
        return count

    def stats(self) -> dict[str, int]:
        """Runs and chunks kept, and the file's size in bytes (pages in use)."""
        with self._lock:
            runs = self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return {"runs": int(runs), "chunks": int(chunks), "bytes": int(pages) * int(page_size)}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
