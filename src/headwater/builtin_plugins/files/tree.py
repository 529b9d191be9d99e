"""``dir.tree``: the entries of a directory tree, depth first, in name order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext

from .._sandbox import check_path_param, param_of
from .._textio import pull
from .._values import fspath as _fspath
from .walk import _BATCH_SECONDS, _close_iterator, _Entry, _Walker


class DirTreeParams(BaseModel):
    """Params of ``dir.tree``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        ".",
        description="Directory to walk (relative to the working dir); it must lie inside "
        "the operator's file roots.",
    )
    max_depth: int | None = Field(
        None, ge=1, description="Deepest level to show: 1 is the directory's own entries."
    )
    follow_symlinks: bool = Field(
        False,
        description="Enter symlinked directories (loops are detected and not entered); a "
        "symlink whose target is outside the file roots is listed with an error and not "
        "followed. Otherwise symlinks are listed as type symlink.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns of entries to leave out (a directory's content too); a "
        "pattern with a / matches the path relative to the root, others the name.",
    )
    hidden: bool = Field(True, description="Include entries whose name starts with a dot.")
    dirs_only: bool = Field(False, description="Only list directories.")

    _path = field_validator("path", mode="before")(_fspath)
    _path_allowed = field_validator("path")(check_path_param)


def _tree_batch(walk: Iterator[_Entry | None], dirs_only: bool) -> tuple[list[Any], bool]:
    items, done = pull(walk, 1000, _BATCH_SECONDS)
    return [e.to_item() for e in items if not dirs_only or e.kind == "dir"], done


@headwater.action(
    "dir.tree",
    params=DirTreeParams,
    output="{path, name, type (file|dir|symlink|other), size, depth[, link, loop, error]}",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def dir_tree(params: DirTreeParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """Stream the entries of a directory tree, depth first, in name order.

    Each entry has its path (the root joined with the relative path), name, type, size
    and depth (1 for the root's own entries). Symlinks are not followed unless asked,
    and a symlink loop is never entered. Progress counts the entries seen.

    The walk stays inside the operator's file roots (see the Security page): the
    directory must lie inside them, and with ``follow_symlinks`` a symlink pointing out
    of them is listed with an ``error`` and not followed.
    """
    walker = _Walker(
        params.path,
        policy=ctx.policy,
        param=param_of(ctx),
        max_depth=params.max_depth,
        follow_symlinks=params.follow_symlinks,
        exclude=params.exclude,
        hidden=params.hidden,
    )
    walk = iter(walker)
    try:
        done = False
        while not done:
            if ctx.cancelled:
                return
            items, done = await anyio.to_thread.run_sync(_tree_batch, walk, params.dirs_only)
            ctx.progress(walker.entries, None)
            if items:
                yield items
        notes = []
        if walker.errors:
            notes.append(f"{walker.errors} entries could not be read")
        if walker.refused:
            notes.append(f"{walker.refused} entries out of the file roots not entered")
        if notes:
            ctx.status("; ".join(notes))
    finally:
        # never running in a worker thread here: run_sync waits for the thread to return
        _close_iterator(walk)
