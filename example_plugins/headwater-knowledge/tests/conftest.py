"""Fixtures of headwater-knowledge's tests: a fixed corpus and its index, the stand-in
search API, an engine with the plugin, and a server on a real socket."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import headwater
import pytest
from headwater.testing import make_plugins

import headwater_knowledge
from headwater_knowledge.collect import folder_documents
from headwater_knowledge.index import IndexWriter
from headwater_knowledge.standin import StandIn

sys.path.insert(0, str(Path(__file__).parent))

CORPUS = {
    "rivers.md": "# Rivers\n\nA river is a natural stream of water flowing toward an ocean, "
    "a lake or another river. Rivers carry sediment from their source to their delta.\n\n"
    "The source of a river is called its headwater. Headwater streams are small and cold.\n",
    "deltas.md": "# Deltas\n\nA delta forms where a river meets the sea and drops its "
    "sediment. The Nile delta is one of the largest deltas of the world.\n",
    "lakes.txt": "Lakes are bodies of water surrounded by land. Some lakes are fed by a "
    "river and drained by another river.\n",
    "streams.html": "<html><head><title>Streaming data</title></head><body><nav>menu</nav>"
    "<p>A data stream is a sequence of items delivered over time. Stream processing "
    "handles each item as it arrives, like water in a river.</p></body></html>",
    "notes/glaciers.md": "# Glaciers\n\nGlaciers are rivers of ice. Meltwater from "
    "glaciers feeds the headwater of many rivers in spring.\n",
    "notes/unrelated.txt": "Bread is made of flour, water, salt and yeast.\n",
}
"""A fixed corpus: rankings over it are deterministic."""


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding :data:`CORPUS` and its index (``knowledge.db``)."""
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    for name, text in CORPUS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    with IndexWriter(root / "knowledge.db") as writer:
        writer.replace_source(str(docs), folder_documents(docs))
    return root


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """The stand-in web search API on 127.0.0.1 (fresh settings per test)."""
    with StandIn() as api:
        yield api


@pytest.fixture
def plugins() -> headwater.PluginManager:
    """A strict plugin manager with the built-ins and this plugin."""
    return make_plugins(headwater_knowledge)


@pytest.fixture
def engine(plugins: headwater.PluginManager, corpus: Path) -> headwater.Engine:
    """An engine with this plugin whose sandbox holds the corpus folder."""
    policy = headwater.SandboxPolicy(roots=(corpus,))
    return headwater.Engine(plugin_manager=plugins, policy=policy)


@pytest.fixture
def anyio_backend() -> str:
    """headwater's server runs on asyncio; the trio test asks for trio itself."""
    return "asyncio"
