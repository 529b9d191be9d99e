"""headwater-knowledge: ask several search providers at once and answer as results arrive.

An example of a *search aggregator* plugin, and a showcase of incremental streaming. It
contributes:

``knowledge.fts``, ``knowledge.files``, ``knowledge.web`` (actions)
    Providers, each streaming its hits with progress and its own timeout: a local SQLite
    FTS5 index (BM25), a folder searched with headwater's ``file.find``, and a web search
    API with the Brave Search answer shape.
``knowledge.search`` (action)
    One query to every configured provider at once, their events merged; sessions (a new
    query in a session cancels the one before).
``knowledge.enrich``, ``knowledge.rank``, ``knowledge.synthesize`` (stream transformers)
    Fetch and split each hit's content (batched, concurrency-limited, with metrics);
    deduplicate and rank incrementally (reciprocal rank fusion); stream an extractive
    answer with citations.
``/plugins/knowledge/`` (a page, through ``register_routes``)
    Type a query and watch the statuses, the results re-ordering and the answer grow.

The events a query streams are the pydantic models of :mod:`headwater_knowledge.events`.
Everything is imported when a hook is called, keeping plugin discovery cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import headwater

if TYPE_CHECKING:
    from headwater import Register
    from headwater.types import RouteRegister

__all__ = ["register_actions", "register_routes", "register_transformers"]

HEADWATER_PLUGIN_API = ">=1,<2"


@headwater.hookimpl
def register_actions(register: Register) -> None:
    """The providers and the query fan-out."""
    from .providers.files import files
    from .providers.fts import fts
    from .providers.web import web
    from .search import search

    for component in (fts, files, web, search):
        register(component)


@headwater.hookimpl
def register_transformers(register: Register) -> None:
    """The enricher, the ranker and the synthesizer."""
    from .enrich import enrich
    from .rank import rank
    from .synthesize import synthesize

    for component in (enrich, rank, synthesize):
        register(component)


@headwater.hookimpl
def register_routes(register: RouteRegister) -> None:
    """The search page and its assets, under ``/plugins/knowledge/``."""
    from .page import routes

    for route in routes():
        register(route)
