"""The names the migration page's mapping tables give exist in headwater.

The page's code blocks run with every other page (tests/test_docs.py); its tables are
prose, so the names they promise are checked here.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

from headwater.core.streaming.config import SendErrorPolicy
from headwater.server import StreamingConfig, StreamingManager

PAGE = Path(__file__).resolve().parent.parent / "docs" / "migration.md"


def rows(heading: str) -> list[list[str]]:
    """The body rows of the first table whose header row starts with ``heading``."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = next(
        i
        for i, line in enumerate(lines[:-1])
        if line.startswith(f"| {heading}") and lines[i + 1].startswith("|---")
    )
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    assert table, f"the table under {heading!r} is empty"
    return table


def first_code(cell: str) -> str:
    """The name in the first backquotes of a table cell."""
    found = re.match(r"`(\w+)`", cell)
    assert found, f"no `name` at the start of {cell!r}"
    return found.group(1)


def test_streaming_manager_methods_exist() -> None:
    named = set()
    for _, ours in rows("AgentOS |"):
        named |= set(re.findall(r"mgr\.(\w+)\(", ours))
        named |= set(re.findall(r"`(\w+)\(client_id\)`", ours))
    assert len(named) >= 10, named
    assert not {n for n in named if not callable(getattr(StreamingManager, n, None))}


def test_config_fields_and_send_error_values_exist() -> None:
    fields = {first_code(ours) for _, ours, _ in rows("AgentOS `StreamingManagerConfig`")}
    assert fields == {
        "max_streams",
        "max_clients_per_stream",
        "inactivity_timeout",
        "on_send_error",
    }
    assert fields <= set(StreamingConfig.model_fields)
    for old, ours in rows("`onClientSendErrorBehavior` value"):
        value = first_code(ours)
        assert value in typing.get_args(SendErrorPolicy)
        assert StreamingConfig(on_send_error=old.strip("`'")).on_send_error == value
