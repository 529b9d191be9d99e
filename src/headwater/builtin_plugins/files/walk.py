"""Walking a directory tree, shared by ``file.find`` and ``dir.tree``.

The walk is a blocking iterator, run in a worker thread a batch at a time: depth first,
in name order, safe from symlink loops, in memory bounded by the depth of the tree.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .paths import _where

_BATCH_SECONDS = 0.1
"""Longest a worker-thread call of ``file.find`` / ``dir.tree`` runs before it reports."""


@dataclass(slots=True)
class _Entry:
    """One entry met while walking a tree."""

    path: str
    rel: str
    name: str
    kind: str
    depth: int
    size: int
    link: str | None = None
    loop: bool = False
    error: str | None = None

    def to_item(self) -> dict[str, Any]:
        """The ``dir.tree`` item: optional keys only when they say something."""
        item: dict[str, Any] = {
            "path": self.path,
            "name": self.name,
            "type": self.kind,
            "size": self.size,
            "depth": self.depth,
        }
        if self.link is not None:
            item["link"] = self.link
        if self.loop:
            item["loop"] = True
        if self.error is not None:
            item["error"] = self.error
        return item


def _matches(patterns: list[str], name: str, rel: str) -> bool:
    """Does a glob match the entry? Patterns with a ``/`` match the relative path."""
    for pattern in patterns:
        target = rel if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern):
            return True
    return False


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


class _Walker:
    """Depth-first, name-ordered walk of a directory tree; safe from symlink loops.

    Symlinks are not followed unless ``follow_symlinks``; when they are, a directory that
    is its own ancestor (a loop) is reported with ``loop`` set and not entered. Memory is
    one directory listing per level of the current path.
    """

    def __init__(
        self,
        root: str,
        *,
        max_depth: int | None,
        follow_symlinks: bool,
        exclude: list[str],
        hidden: bool,
    ) -> None:
        self.root = root
        self.max_depth = max_depth
        self.follow = follow_symlinks
        self.exclude = exclude
        self.hidden = hidden
        self.errors = 0
        self.entries = 0

    @staticmethod
    def _list(path: str) -> tuple[list[os.DirEntry[str]], str | None]:
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name), None
        except OSError as exc:
            return [], exc.strerror or str(exc)

    def _classify(self, entry: os.DirEntry[str], path: str, rel: str, depth: int) -> _Entry:
        link: str | None = None
        try:
            if entry.is_symlink():
                link = os.readlink(path)
                if not self.follow:
                    info = entry.stat(follow_symlinks=False)
                    return _Entry(path, rel, entry.name, "symlink", depth, info.st_size, link)
            info = entry.stat(follow_symlinks=True)
        except OSError as exc:
            kind = "symlink" if link is not None else "other"
            message = "broken link" if link is not None else (exc.strerror or str(exc))
            return _Entry(path, rel, entry.name, kind, depth, 0, link, error=message)
        return _Entry(path, rel, entry.name, _kind(info.st_mode), depth, info.st_size, link)

    def __iter__(self) -> Iterator[_Entry | None]:
        """Yield entries in pre-order (a directory before its content); None: heartbeat."""
        root = os.path.expanduser(self.root)
        try:
            info = os.stat(root)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such directory: {self.root!r}{_where(root)}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(f"{self.root!r} is not a directory{_where(root)}")
        children, error = self._list(root)
        if error is not None:
            raise PermissionError(f"cannot list {self.root!r}: {error}")
        root_key = (info.st_dev, info.st_ino)
        active = {root_key}
        stack: list[tuple[Iterator[os.DirEntry[str]], str, str, int, tuple[int, int]]] = [
            (iter(children), self.root, "", 1, root_key)
        ]
        while stack:
            it, dir_path, dir_rel, depth, key = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                active.discard(key)
                yield None
                continue
            name = entry.name
            if not self.hidden and name.startswith("."):
                continue
            rel = f"{dir_rel}/{name}" if dir_rel else name
            if self.exclude and _matches(self.exclude, name, rel):
                continue
            item = self._classify(entry, os.path.join(dir_path, name), rel, depth)
            self.entries += 1
            descend: tuple[list[os.DirEntry[str]], tuple[int, int]] | None = None
            if item.kind == "dir" and (self.max_depth is None or depth < self.max_depth):
                try:
                    sub = os.stat(item.path)
                    sub_key = (sub.st_dev, sub.st_ino)
                except OSError as exc:
                    item.error = exc.strerror or str(exc)
                    sub_key = None
                if sub_key is not None and sub_key in active:
                    item.loop = True
                elif sub_key is not None:
                    listing, error = self._list(item.path)
                    if error is not None:
                        item.error = error
                    else:
                        descend = (listing, sub_key)
                if item.error is not None:
                    self.errors += 1
            yield item
            if descend is not None:
                active.add(descend[1])
                stack.append((iter(descend[0]), item.path, rel, depth + 1, descend[1]))


def _close_iterator(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()
