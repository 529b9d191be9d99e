"""Checkpoints: what a resumable run persists, and the built-in SQLite store.

A :class:`Checkpoint` holds, for one pipeline, the position of its source and the state
of its stateful steps at a point where every sink had acknowledged every item before it.
Stores are contributed by plugins through ``register_checkpoint_stores``; the built-in one
keeps checkpoints in an SQLite file (WAL mode, no set-up), ``.headwater/checkpoints.db``
in the working directory by default.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import HeadwaterError

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "SQLiteCheckpointStore",
]

SCHEMA_VERSION = 1
DEFAULT_PATH = Path(".headwater") / "checkpoints.db"


class CheckpointError(HeadwaterError):
    """A checkpoint could not be read, written or used; the message says what to do."""


@dataclass(slots=True)
class Checkpoint:
    """The committed progress of one pipeline."""

    pipeline: str
    fingerprint: str
    """Hash of the parts of the definition a checkpoint depends on (sources and steps)."""
    seq: int
    """Checkpoint number within the pipeline's history, from 1."""
    positions: dict[str, Any] = field(default_factory=dict)
    """Source name -> the position to resume from (JSON-serialisable)."""
    states: dict[str, Any] = field(default_factory=dict)
    """Stage name -> the snapshot of a stateful step."""
    items: int = 0
    """Items the source had produced up to this checkpoint (across resumes)."""
    completed: bool = False
    """True when the run reached the end of its source: there is nothing left to resume."""
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """Serialise (raises CheckpointError if a position or state is not JSON)."""
        try:
            return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint of pipeline {self.pipeline!r} is not JSON-serialisable: {exc}; "
                "source positions and step states must be JSON values"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse what :meth:`to_json` wrote."""
        data = json.loads(text)
        return cls(**data)


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoints live. Methods are synchronous; the runtime calls them in threads."""

    def load(self, pipeline: str) -> Checkpoint | None:
        """The latest checkpoint of ``pipeline``, or None."""

    def save(self, checkpoint: Checkpoint) -> None:
        """Persist ``checkpoint`` durably, replacing older ones of its pipeline."""

    def list(self) -> list[Checkpoint]:
        """Every pipeline's latest checkpoint."""

    def reset(self, pipeline: str) -> bool:
        """Forget ``pipeline``'s checkpoint; False when there was none."""

    def close(self) -> None:
        """Release resources."""


class SQLiteCheckpointStore:
    """Checkpoints in one SQLite file (WAL). Safe for several processes on one machine.

    A corrupt file, a file locked by another process or one written by a newer
    headwater raises :class:`CheckpointError` naming the file and what to do; nothing is
    ever overwritten silently.
    """

    def __init__(self, path: str | Path = DEFAULT_PATH, *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot open checkpoint database {self.path}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._check_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._translate(exc) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS headwater_meta (key TEXT PRIMARY KEY, value)")
            row = conn.execute(
                "SELECT value FROM headwater_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO headwater_meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise CheckpointError(
                    f"checkpoint database {self.path} has schema version {row[0]}, written by "
                    f"a newer headwater (this one reads version {SCHEMA_VERSION}); upgrade "
                    "headwater or point the pipeline at another checkpoint file"
                )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS headwater_checkpoints ("
                " pipeline TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, seq INTEGER NOT NULL,"
                " data TEXT NOT NULL, updated REAL NOT NULL)"
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _translate(self, exc: sqlite3.Error) -> CheckpointError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return CheckpointError(
                f"checkpoint database {self.path} is locked by another process; wait for it "
                "to finish or use another checkpoint file"
            )
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return CheckpointError(
                f"checkpoint database {self.path} is corrupt ({text}); move it away to start "
                "over (its checkpoints are lost) or restore it from a backup"
            )
        return CheckpointError(f"checkpoint database {self.path}: {text}")

    def load(self, pipeline: str) -> Checkpoint | None:
        """The latest checkpoint of ``pipeline``, or None."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT data FROM headwater_checkpoints WHERE pipeline = ?", (pipeline,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        if row is None:
            return None
        return self._parse(pipeline, row[0])

    def _parse(self, pipeline: str, data: str) -> Checkpoint:
        try:
            return Checkpoint.from_json(data)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint of {pipeline!r} in {self.path} is unreadable ({exc}); run "
                f"`headwater checkpoints reset {pipeline}` to start over"
            ) from None

    def save(self, checkpoint: Checkpoint) -> None:
        """Persist ``checkpoint`` (durably: synchronous=FULL)."""
        data = checkpoint.to_json()
        conn = self._connect()
        try:
            conn.execute(
                "INSERT OR REPLACE INTO headwater_checkpoints VALUES (?, ?, ?, ?, ?)",
                (checkpoint.pipeline, checkpoint.fingerprint, checkpoint.seq, data, time.time()),
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from None

    def list(self) -> list[Checkpoint]:
        """Every pipeline's latest checkpoint, by name."""
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT pipeline, data FROM headwater_checkpoints ORDER BY pipeline"
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        return [self._parse(name, data) for name, data in rows]

    def reset(self, pipeline: str) -> bool:
        """Forget ``pipeline``'s checkpoint."""
        conn = self._connect()
        try:
            cur = conn.execute("DELETE FROM headwater_checkpoints WHERE pipeline = ?", (pipeline,))
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        return cur.rowcount > 0

    def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
