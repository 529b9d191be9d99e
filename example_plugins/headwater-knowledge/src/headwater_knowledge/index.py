"""The full-text index: one SQLite file with an FTS5 table, ranked by BM25.

``headwater-knowledge index`` fills it (:class:`IndexWriter`); the ``fts`` provider
reads it (:func:`open_index`, :func:`search_rows`). Each document has a title, a body, a
URL (what the ranker deduplicates by) and a source (the folder or package it came from,
so that indexing a source again replaces its documents).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = ["Document", "IndexWriter", "open_index", "search_rows"]

SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(
    title, body, url UNINDEXED, source UNINDEXED, tokenize = 'porter unicode61'
);
"""

TITLE_WEIGHT = 4.0
"""How much more a query word in the title counts than one in the body (BM25 weights)."""


@dataclass(frozen=True, slots=True)
class Document:
    """One document of the index."""

    url: str
    title: str
    body: str
    source: str


class IndexWriter:
    """Adds documents to an index file (created if missing), one source at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.executescript(SCHEMA)

    def replace_source(self, source: str, documents: Iterable[Document]) -> int:
        """Replace every document of ``source`` with ``documents``; returns how many."""
        count = 0
        with self.conn:
            self.conn.execute("DELETE FROM docs WHERE source = ?", (source,))
            batch: list[tuple[str, str, str, str]] = []
            for doc in documents:
                batch.append((doc.title, doc.body, doc.url, doc.source))
                if len(batch) >= 500:
                    self.conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", batch)
                    count += len(batch)
                    batch.clear()
            self.conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", batch)
            count += len(batch)
        return count

    def optimize(self) -> None:
        """Merge the index's segments (faster queries after a large build)."""
        with self.conn:
            self.conn.execute("INSERT INTO docs(docs) VALUES ('optimize')")

    def count(self) -> int:
        """Documents in the index."""
        row = self.conn.execute("SELECT count(*) FROM docs").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the file."""
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_index(path: str | Path) -> sqlite3.Connection:
    """Open an index read-only (usable from one worker thread at a time)."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no index at {str(path)!r}: build one with `headwater-knowledge index`"
        )
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def search_rows(
    conn: sqlite3.Connection, match: str, limit: int, content_chars: int
) -> Iterator[tuple[str, str, str, float, str]]:
    """``(url, title, snippet, score, body)`` of the best ``limit`` documents for an FTS5
    ``match`` expression, best first (``score`` is BM25: higher is better)."""
    cursor = conn.execute(
        "SELECT url, title, snippet(docs, 1, '', '', ' … ', 24), "
        f"-bm25(docs, {TITLE_WEIGHT}, 1.0) AS score, substr(body, 1, ?) "
        "FROM docs WHERE docs MATCH ? ORDER BY bm25(docs, ?, 1.0) LIMIT ?",
        (content_chars, match, TITLE_WEIGHT, limit),
    )
    while rows := cursor.fetchmany(25):
        yield from rows
