"""hw-raising: a plugin whose hook raises (test data)."""

from __future__ import annotations

import headwater
from headwater.hookspecs import Register


@headwater.hookimpl
def register_sinks(register: Register) -> None:
    raise RuntimeError("hw-raising could not reach its sink backend")
