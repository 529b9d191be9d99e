"""Built-in file streaming actions: ``file.view``, ``file.find`` and ``dir.tree``.

All three read in large blocks in worker threads (``anyio.to_thread.run_sync``), so the
event loop never waits on the disk, and stream their results in batches: memory stays
constant whatever the size of the file or of the tree. Each checks ``ctx.cancelled``
between blocks and closes what it opened in a ``finally``.

This package is the ``headwater.files`` plugin; each action has its module
(:mod:`.view`, :mod:`.find`, :mod:`.tree`), the last two sharing the tree walk of
:mod:`.walk`.
"""

from __future__ import annotations

from typing import Any

import headwater

from .find import FileFindParams, file_find
from .tree import DirTreeParams, dir_tree
from .view import FileViewParams, file_view

__all__ = [
    "DirTreeParams",
    "FileFindParams",
    "FileViewParams",
    "dir_tree",
    "file_find",
    "file_view",
    "register_actions",
]


@headwater.hookimpl
def register_actions(register: Any) -> None:
    """Register the file streaming actions."""
    register(file_view)
    register(file_find)
    register(dir_tree)
