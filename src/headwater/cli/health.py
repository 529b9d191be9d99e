"""The HTTP endpoint of ``headwater worker --metrics-port``: probes and metrics.

* ``/healthz``: 200 while the process works: its event loop is not blocked for longer
  than the stall limit (a supervisor restarts a worker stuck in blocking code);
* ``/readyz``: 200 once the source and the sinks are connected to their brokers, 503
  before and during an outage (with the reason in the body);
* ``/metrics``: the engine's metrics in the Prometheus text format (needs
  ``prometheus-client``), the broker connections and the event loop's lag included.

Served by a thread (the standard library's HTTP server), so that the probes answer
even while the event loop is busy, and say so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Check", "HealthServer"]

Check = Callable[[], tuple[bool, str]]
"""A probe: ``(ok, reason)``."""


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` (see the module)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        live: Check,
        ready: Check,
        metrics: Callable[[str | None], tuple[bytes, str]] | None = None,
    ) -> None:
        checks: dict[str, Check] = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            server_version = "headwater-worker"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in checks:
                    ok, reason = checks[path]()
                    self._send(200 if ok else 503, f"{reason}\n".encode(), "text/plain")
                elif path == "/metrics" and metrics is not None:
                    try:
                        body, content_type = metrics(self.headers.get("Accept"))
                    except ImportError as exc:
                        self._send(501, f"{exc}\n".encode(), "text/plain")
                        return
                    self._send(200, body, content_type)
                else:
                    self._send(404, b"not found: /healthz, /readyz, /metrics\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # probes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the port actually bound, when 0 was asked)."""
        host, port = self._server.server_address[:2]
        host = str(host)
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="headwater-health", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
