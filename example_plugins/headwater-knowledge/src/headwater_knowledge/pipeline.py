"""The query pipeline, and a server configuration that serves it to the page.

``knowledge.search`` fans out to the providers; ``knowledge.enrich`` fetches the hits'
content; ``knowledge.rank`` deduplicates and ranks; ``knowledge.synthesize`` answers;
the server appends its ``websocket`` sink. Clients may set ``query`` and ``session``
only (the server's ``params``), so the providers' settings stay the operator's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PARAMS", "pipeline", "server_config"]

PARAMS = {"query": "sources.search.params.query", "session": "sources.search.params.session"}
"""The params a client's ``run`` may set."""


def pipeline(
    *,
    index: str | None = None,
    folder: str | None = None,
    web_url: str | None = None,
    web_key: str | None = None,
    name: str = "knowledge",
    max_sentences: int = 5,
) -> dict[str, Any]:
    """The query pipeline with the providers given (at least one)."""
    search: dict[str, Any] = {"query": "headwater"}
    if index is not None:
        search["fts"] = {"index": index}
    if folder is not None:
        search["files"] = {"path": folder}
    if web_url is not None:
        search["web"] = {"base_url": web_url, **({"api_key": web_key} if web_key else {})}
    if len(search) == 1:
        raise ValueError("give at least one provider: an index, a folder or a web search URL")
    return {
        "name": name,
        "timeouts": {"total": 120},
        "sources": {"search": {"action": "knowledge.search", "params": search}},
        "steps": [
            {"transformer": "knowledge.enrich"},
            {"transformer": "knowledge.rank"},
            {"transformer": "knowledge.synthesize", "params": {"max_sentences": max_sentences}},
        ],
    }


def server_config(pipe: dict[str, Any], *, port: int = 8765) -> dict[str, Any]:
    """A ``headwater serve`` configuration offering ``pipe`` to clients (by its name); its
    output goes to the run's stream (a ``websocket`` sink is added if it has no sink)."""
    pipe = {**pipe, "sinks": pipe.get("sinks") or [{"sink": "websocket"}]}
    return {
        "host": "127.0.0.1",
        "port": port,
        "pipelines": {
            pipe["name"]: {
                "description": "Search the providers, rank, and answer as results arrive.",
                "pipeline": pipe,
                "params": dict(PARAMS),
            }
        },
    }
