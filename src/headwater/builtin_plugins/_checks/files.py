"""Connection check of the file sinks: the file is inside the sandbox's roots and can be
created or written. Nothing is created, truncated or opened for writing: missing
folders are reported as what the run makes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from headwater.core.context import StreamContext
from headwater.core.errors import CheckFailed

if TYPE_CHECKING:
    from ..sinks import JsonlParams

__all__ = ["check_jsonl"]


def check_jsonl(params: JsonlParams, ctx: StreamContext) -> str:
    """The file is allowed and writable (or can be created, with its folders)."""
    from .._sandbox import output_path_problem

    path = os.path.expanduser(params.path)
    real = str(ctx.policy.check_path(path, param=f"{ctx.stage}.params.path"))
    problem = output_path_problem(real)
    if problem is not None:
        raise CheckFailed(problem)
    if os.path.exists(real):
        return f"{real}: writable ({'appended to' if params.append else 'replaced'} by the run)"
    parent = os.path.dirname(real)
    folder = "" if os.path.isdir(parent) else f" with its folder {parent}"
    return f"{real}: created by the run{folder}"
