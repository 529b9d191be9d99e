"""Helpers of the tests (no tests here): pipelines over the fixed corpus, running them,
and the ranking a client builds from ``result`` events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import headwater
from headwater.server import Server, ServerConfig

from headwater_knowledge.pipeline import pipeline, server_config


def corpus_pipeline(
    corpus: Path, web_url: str | None = None, *, query: str = "river headwater", **search: Any
) -> dict[str, Any]:
    """The query pipeline over the corpus (and the stand-in when ``web_url``)."""
    pipe = pipeline(
        index=str(corpus / "knowledge.db"), folder=str(corpus / "docs"), web_url=web_url
    )
    params = pipe["sources"]["search"]["params"]
    params["query"] = query
    for name, settings in search.items():
        if settings is None:
            params.pop(name, None)
        elif isinstance(settings, dict) and isinstance(params.get(name), dict):
            params[name].update(settings)
        else:
            params[name] = settings
    return pipe


async def collect(engine: headwater.Engine, pipe: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item the pipeline streams."""
    async with engine, engine.stream(pipe) as items:
        return [item async for item in items]


def ranking(events: list[dict[str, Any]]) -> list[str]:
    """The result ids in order, as a client applying the ``result`` events has them."""
    shown: list[str] = []
    for event in events:
        if event.get("type") != "result":
            continue
        if event["id"] in shown:
            shown.remove(event["id"])
        if event["change"] != "removed":
            shown.insert(event["position"] - 1, event["id"])
    return shown


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The events of one type."""
    return [e for e in events if e.get("type") == kind]


class ServerThread:
    """A headwater server on 127.0.0.1 (a free port) in a thread of its own, for tests
    driving a browser or blocking clients from the test's thread."""

    def __init__(self, engine: headwater.Engine, config: dict[str, Any]) -> None:
        self.engine = engine
        self.config = ServerConfig.model_validate({**config, "port": 0})
        self.url = ""
        self.ws_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self.engine, Server(self.config, engine=self.engine) as server:
                self.url, self.ws_url = server.http_url, server.url
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@contextmanager
def serving(
    engine: headwater.Engine, pipe: dict[str, Any], **pipelines: Any
) -> Iterator[ServerThread]:
    """A server offering ``pipe`` as ``knowledge`` (and ``pipelines``, name -> entry)."""
    config = server_config(pipe)
    config["pipelines"].update(pipelines)
    server = ServerThread(engine, config).start()
    try:
        yield server
    finally:
        server.stop()
