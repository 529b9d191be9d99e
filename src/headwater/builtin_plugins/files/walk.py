"""Walking a directory tree, shared by ``file.find`` and ``dir.tree``.

The walk is a blocking iterator, run in a worker thread a batch at a time: depth first,
in name order, safe from symlink loops, in memory bounded by the depth of the tree.

It stays inside the operator's sandbox (:class:`~headwater.SandboxPolicy`) by holding
each folder open while it lists it: entries are examined and folders entered and files
opened *relative to that descriptor* and with ``O_NOFOLLOW``, so renaming a folder or
swapping in a symlink while the walk goes on cannot lead it out of the tree it started
in. With ``follow_symlinks`` a symlink is followed only when its real target is allowed
by the policy; one pointing out of the roots is reported (``error``) and not followed.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

from headwater.core.policy import FORBIDDEN_PATHS, SandboxError, SandboxPolicy, open_nofollow

from .paths import _where

_BATCH_SECONDS = 0.1
"""Longest a worker-thread call of ``file.find`` / ``dir.tree`` runs before it reports."""

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
"""Files are opened non-blocking so that one swapped for a FIFO cannot hang the walk."""

OUTSIDE_ROOTS: Final = "points outside the allowed roots: not followed"
"""The ``error`` of a symlink that ``follow_symlinks`` does not follow."""

NEVER_OPENED: Final = "the file tools never open this folder: not entered"
"""The ``error`` of ``/proc``, ``/sys`` and ``/dev`` met in a walk (of ``/``, say)."""

_GUARDED: Final = frozenset(str(path.parent) for path in FORBIDDEN_PATHS)
"""Real folders holding a forbidden one: only their entries need the policy's check."""


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
    dir_fd: int = -1
    """The open folder holding the entry (valid until the walk moves on)."""
    target: str | None = None
    """The real path of a followed symlink's target."""

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


@dataclass(slots=True)
class _Folder:
    """A folder being listed: its open descriptor and where it is."""

    entries: Iterator[os.DirEntry[str]]
    path: str
    rel: str
    depth: int
    key: tuple[int, int]
    fd: int
    real: str


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
    is its own ancestor (a loop) is reported with ``loop`` set and not entered, and a
    symlink whose target the policy does not allow is reported with an ``error`` and not
    followed (counted in :attr:`refused`). Memory is one directory listing and one open
    descriptor per level of the current path. ``param`` names the root's param in errors.
    """

    def __init__(
        self,
        root: str,
        *,
        policy: SandboxPolicy,
        param: str,
        max_depth: int | None,
        follow_symlinks: bool,
        exclude: list[str],
        hidden: bool,
    ) -> None:
        self.root = root
        self.policy = policy
        self.param = param
        self.max_depth = max_depth
        self.follow = follow_symlinks
        self.exclude = exclude
        self.hidden = hidden
        self.errors = 0
        self.entries = 0
        self.refused = 0
        """Entries not followed or entered: symlinks whose target is outside the roots,
        and ``/proc``, ``/sys`` and ``/dev``."""

    @staticmethod
    def _list(fd: int) -> tuple[list[os.DirEntry[str]], str | None]:
        try:
            with os.scandir(fd) as it:
                return sorted(it, key=lambda e: e.name), None
        except OSError as exc:
            return [], exc.strerror or str(exc)

    def _classify(self, entry: os.DirEntry[str], folder: _Folder, path: str, rel: str) -> _Entry:
        depth, name = folder.depth, entry.name
        link: str | None = None
        try:
            if entry.is_symlink():
                link = os.readlink(name, dir_fd=folder.fd)
                if not self.follow:
                    info = entry.stat(follow_symlinks=False)
                    return _Entry(path, rel, name, "symlink", depth, info.st_size, link)
                target = os.path.realpath(os.path.join(folder.real, name))
                if not self.policy.allows_path(target):
                    self.refused += 1
                    return _Entry(path, rel, name, "symlink", depth, 0, link, error=OUTSIDE_ROOTS)
                info = os.stat(target)
                kind = _kind(info.st_mode)
                return _Entry(path, rel, name, kind, depth, info.st_size, link, target=target)
            info = entry.stat(follow_symlinks=False)
        except OSError as exc:
            kind = "symlink" if link is not None else "other"
            message = "broken link" if link is not None else (exc.strerror or str(exc))
            return _Entry(path, rel, name, kind, depth, 0, link, error=message)
        return _Entry(path, rel, name, _kind(info.st_mode), depth, info.st_size, link)

    def _open_root(self) -> tuple[int, str]:
        where = _where(os.path.expanduser(self.root))
        try:
            fd, real = self.policy.open_dir(self.root, param=self.param)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such directory: {self.root!r}{where}") from None
        except NotADirectoryError:
            raise NotADirectoryError(f"{self.root!r} is not a directory{where}") from None
        return fd, str(real)

    def _enter(self, entry: _Entry, folder: _Folder) -> int:
        """Open a folder met in ``folder`` (or a followed symlink's target) for listing."""
        if entry.target is not None:
            return open_nofollow(entry.target, _DIR_FLAGS, shown=repr(entry.path))
        return os.open(entry.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=folder.fd)

    def __iter__(self) -> Iterator[_Entry | None]:
        """Yield entries in pre-order (a directory before its content); None: heartbeat."""
        fd, real = self._open_root()
        stack: list[_Folder] = []
        try:
            info = os.fstat(fd)
            children, error = self._list(fd)
            if error is not None:
                raise PermissionError(f"cannot list {self.root!r}: {error}")
            root_key = (info.st_dev, info.st_ino)
            stack.append(_Folder(iter(children), self.root, "", 1, root_key, fd, real))
            fd = -1
            active = {root_key}
            while stack:
                folder = stack[-1]
                entry = next(folder.entries, None)
                if entry is None:
                    stack.pop()
                    os.close(folder.fd)
                    active.discard(folder.key)
                    yield None
                    continue
                name = entry.name
                if not self.hidden and name.startswith("."):
                    continue
                rel = f"{folder.rel}/{name}" if folder.rel else name
                if self.exclude and _matches(self.exclude, name, rel):
                    continue
                item = self._classify(entry, folder, os.path.join(folder.path, name), rel)
                item.dir_fd = folder.fd
                if folder.real in _GUARDED and self._forbidden(item, folder):
                    item.error = NEVER_OPENED
                    self.refused += 1
                self.entries += 1
                descend: _Folder | None = None
                deeper = self.max_depth is None or folder.depth < self.max_depth
                if item.kind == "dir" and item.error is None and deeper:
                    descend = self._descend(item, folder, active)
                if item.error is not None and item.error not in (OUTSIDE_ROOTS, NEVER_OPENED):
                    self.errors += 1
                yield item
                if descend is not None:
                    active.add(descend.key)
                    stack.append(descend)
        finally:
            if fd >= 0:
                os.close(fd)
            for folder in stack:
                os.close(folder.fd)

    def _forbidden(self, item: _Entry, folder: _Folder) -> bool:
        """Is a plain entry of ``folder`` one the policy never opens (``/proc``, ...)?"""
        if item.target is not None or item.error is not None:
            return False  # a followed link's target was checked; an error stops it anyway
        return not self.policy.allows_path(os.path.join(folder.real, item.name))

    def _descend(
        self, item: _Entry, folder: _Folder, active: set[tuple[int, int]]
    ) -> _Folder | None:
        """The folder to walk next for a directory entry, or None (error or loop set)."""
        try:
            fd = self._enter(item, folder)
        except (OSError, SandboxError) as exc:
            item.error = str(exc) if isinstance(exc, SandboxError) else exc.strerror or str(exc)
            return None
        try:
            info = os.fstat(fd)
            key = (info.st_dev, info.st_ino)
            if key in active:
                item.loop = True
            else:
                listing, error = self._list(fd)
                if error is not None:
                    item.error = error
                else:
                    real = item.target or os.path.join(folder.real, item.name)
                    found = _Folder(
                        iter(listing), item.path, item.rel, folder.depth + 1, key, fd, real
                    )
                    fd = -1
                    return found
        finally:
            if fd >= 0:
                os.close(fd)
        return None

    def open_file(self, entry: _Entry) -> IO[bytes]:
        """Open a file entry just yielded, for unbuffered binary reading; raises
        ``OSError`` when it is gone or no longer a regular file."""
        if entry.target is not None:
            fd = open_nofollow(entry.target, _FILE_FLAGS, shown=repr(entry.path))
        else:
            fd = os.open(entry.name, _FILE_FLAGS | os.O_NOFOLLOW, dir_fd=entry.dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{entry.path!r} is no longer a regular file")
            return open(fd, "rb", buffering=0, closefd=True)
        except BaseException:
            os.close(fd)
            raise


def _close_iterator(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()
