"""A local stand-in for a Brave-shaped web search API, and the pages its results link to.

For tests, benchmarks and trying the page without an API key: ``GET
/res/v1/web/search?q=...&count=N&offset=P`` answers in the Brave Search shape (see
:mod:`headwater_knowledge.providers.brave`) with results linking to ``/pages/...``, which
it also serves (HTML, deterministic text about the query's words). Settings, changeable
while it runs (:meth:`StandIn.configure`):

``latency``, ``page_latency``
    Seconds before each search answer, each page.
``error_rate``, ``fail_next``
    The share of search calls answered ``500`` (random, seeded), and a number of next
    calls that fail for sure.
``hang_rate``, ``hang_seconds``
    The share of search calls that hang (answer nothing for ``hang_seconds``).
``slow_pages``
    Pages trickle out in pieces over ``page_latency`` instead of waiting first.
``duplicates``
    Results include the same URL twice and two URLs with the same page text.
``key``
    When set, calls without ``X-Subscription-Token: KEY`` get ``401``.

``headwater-knowledge standin --port 8766 --latency 0.2`` runs one from the shell.
"""

from __future__ import annotations

import contextlib
import html
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .providers.brave import SEARCH_PATH
from .text import terms

__all__ = ["StandIn", "StandInSettings"]

FILLER = [
    "river",
    "source",
    "stream",
    "current",
    "delta",
    "basin",
    "channel",
    "spring",
    "flow",
    "water",
    "tide",
    "bank",
    "valley",
    "rain",
    "delta",
    "ocean",
    "lake",
    "brook",
    "creek",
    "harbor",
    "inlet",
    "estuary",
    "meadow",
    "forest",
    "stone",
    "bridge",
    "signal",
    "index",
    "record",
    "answer",
    "passage",
    "summary",
    "method",
    "engine",
    "search",
    "reading",
    "archive",
    "library",
    "catalog",
    "journal",
]


@dataclass(frozen=True)
class StandInSettings:
    """How the stand-in behaves (see the module's documentation)."""

    latency: float = 0.0
    page_latency: float = 0.0
    error_rate: float = 0.0
    fail_next: int = 0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    slow_pages: bool = False
    duplicates: bool = False
    results: int = 50
    key: str | None = None
    seed: int = 7


def _slug(query: str) -> str:
    return "-".join(terms(query)) or "query"


def page_text(slug: str, n: int) -> tuple[str, list[str]]:
    """Title and paragraphs of page ``n`` about ``slug``'s words (deterministic)."""
    rng = random.Random(f"{slug}/{n}")
    words = slug.split("-")
    title = f"{' '.join(words).title()}: source {n}"
    paragraphs = []
    for p in range(4):
        sentences = []
        for s in range(3):
            topic = words[(p + s + n) % len(words)]
            other = words[(p + 2 * s + 1) % len(words)]
            a, b, c = rng.sample(FILLER, 3)
            sentences.append(
                f"{topic.capitalize()} relates to {a} and {b} in source {n}, "
                f"section {p + 1}, where {other} meets the {c}."
            )
        paragraphs.append(" ".join(sentences))
    return title, paragraphs


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == SEARCH_PATH:
            self._search(parse_qs(parts.query))
        elif parts.path.startswith("/pages/"):
            self._page(parts.path.removeprefix("/pages/"))
        else:
            self._send(404, b'{"error": "not found"}', "application/json")

    def _search(self, query: dict[str, list[str]]) -> None:
        standin = self.server.standin
        settings, failing, hanging = standin.call()
        if settings.key is not None and self.headers.get("X-Subscription-Token") != settings.key:
            self._send(
                401,
                b'{"type": "ErrorResponse", "error": {"code": "UNAUTHORIZED"}}',
                "application/json",
            )
            return
        if hanging:
            time.sleep(settings.hang_seconds)
        elif settings.latency:
            time.sleep(settings.latency)
        if failing:
            self._send(
                500, b'{"type": "ErrorResponse", "error": {"code": "INTERNAL"}}', "application/json"
            )
            return
        q = (query.get("q") or [""])[0]
        count = int((query.get("count") or ["10"])[0])
        offset = int((query.get("offset") or ["0"])[0])
        body = json.dumps(standin.answer(q, count, offset, settings)).encode()
        self._send(200, body, "application/json")

    def _page(self, rest: str) -> None:
        settings = self.server.standin.settings
        slug, _, number = unquote(rest).rpartition("/")
        if not slug or not number.isdigit():
            self._send(404, b"not found", "text/plain")
            return
        n = int(number)
        with self.server.standin.page():
            self._serve_page(slug, n, settings)

    def _serve_page(self, slug: str, n: int, settings: StandInSettings) -> None:
        if settings.duplicates and n == 5:
            n = 2  # a mirror: another URL, the same text
        title, paragraphs = page_text(slug, n)
        body = "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs)
        markup = (
            f"<!doctype html><html><head><title>{html.escape(title)}</title>"
            "<style>p{margin:1em}</style><script>var tracking = 1;</script></head>"
            f"<body><nav>Home | About</nav><main><h1>{html.escape(title)}</h1>\n{body}"
            "</main><footer>stand-in</footer></body></html>"
        ).encode()
        if not settings.slow_pages:
            if settings.page_latency:
                time.sleep(settings.page_latency)
            self._send(200, markup, "text/html; charset=utf-8")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(markup)))
        self.end_headers()
        pieces = 5
        step = -(-len(markup) // pieces)
        for i in range(0, len(markup), step):
            self.wfile.write(markup[i : i + step])
            self.wfile.flush()
            time.sleep(settings.page_latency / pieces)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: StandIn


class StandIn:
    """The stand-in server, on ``127.0.0.1`` and a free port (or ``port``), in a thread.

    Use it as a context manager (``with StandIn(latency=0.2) as api: api.url``) or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", **settings: Any) -> None:
        self.settings = StandInSettings(**settings)
        self._rng = random.Random(self.settings.seed)
        self._lock = threading.Lock()
        self.calls = 0
        self.failed = 0
        self.hung = 0
        self.pages_at_once = 0
        self.max_pages_at_once = 0
        """The most pages served at the same time (the enricher's concurrency)."""
        self._server = _Server((host, port), _Handler)
        self._server.standin = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the search API's base URL)."""
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}"

    def configure(self, **settings: Any) -> None:
        """Change settings while running (unknown names raise ``TypeError``)."""
        known = {f.name for f in fields(StandInSettings)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown stand-in settings: {', '.join(unknown)}")
        with self._lock:
            self.settings = replace(self.settings, **settings)
            if "seed" in settings:
                self._rng = random.Random(self.settings.seed)

    def call(self) -> tuple[StandInSettings, bool, bool]:
        """Count a search call and decide its fate: ``(settings, fails, hangs)``."""
        with self._lock:
            self.calls += 1
            settings = self.settings
            failing = settings.fail_next > 0 or self._rng.random() < settings.error_rate
            if settings.fail_next > 0:
                self.settings = replace(settings, fail_next=settings.fail_next - 1)
            hanging = not failing and self._rng.random() < settings.hang_rate
            self.failed += failing
            self.hung += hanging
        return settings, failing, hanging

    @contextlib.contextmanager
    def page(self) -> Iterator[None]:
        """Count a page being served."""
        with self._lock:
            self.pages_at_once += 1
            self.max_pages_at_once = max(self.max_pages_at_once, self.pages_at_once)
        try:
            yield
        finally:
            with self._lock:
                self.pages_at_once -= 1

    def answer(self, q: str, count: int, offset: int, settings: StandInSettings) -> dict[str, Any]:
        """The Brave-shaped answer for page ``offset`` of ``count`` results."""
        slug = _slug(q)
        results = []
        first = offset * count + 1
        for n in range(first, min(first + count, settings.results + 1)):
            target = 1 if settings.duplicates and n == 3 else n  # the same URL twice
            url = f"{self.url}/pages/{quote(slug)}/{target}"
            title, paragraphs = page_text(slug, target)
            results.append(
                {
                    "type": "search_result",
                    "title": title.replace(
                        slug.split("-")[0], f"<strong>{slug.split('-')[0]}</strong>", 1
                    ),
                    "url": url,
                    "description": paragraphs[0][:200],
                    "age": "2 days ago",
                    "language": "en",
                    "family_friendly": True,
                    "extra_snippets": [paragraphs[1][:150]],
                    "profile": {"name": "Stand-in", "url": self.url, "long_name": "stand-in"},
                    "meta_url": {
                        "scheme": "http",
                        "netloc": urlsplit(self.url).netloc,
                        "hostname": "127.0.0.1",
                        "path": f"› pages › {slug}",
                    },
                }
            )
        return {
            "type": "search",
            "query": {"original": q, "more_results_available": first + count <= settings.results},
            "web": {"type": "search", "results": results},
        }

    def start(self) -> StandIn:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (hanging calls are abandoned: their threads are daemons)."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
