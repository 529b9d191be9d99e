"""Helpers of the dashboard's browser tests (this module has no tests of its own).

* :class:`ServeProcess`: a real ``headwater serve`` subprocess on 127.0.0.1 (``--port 0``;
  the port is read from its ``serving on`` line), with a configuration declaring named
  pipelines built only from built-in components: a slow one reporting progress, one that
  fails, and a fast one (10,000 chunks per second);
* :func:`browser_or_skip`: Chromium through Playwright for Python, or a skip with the
  reason (a failure when ``HEADWATER_REQUIRE_SERVICES=1``);
* :func:`artifacts_dir`: where screenshots go (``HEADWATER_ARTIFACTS`` or a pytest tmp dir).

Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final, NoReturn

import pytest

CHROMIUM_ENV: Final = "HEADWATER_CHROMIUM"
"""Environment variable naming the Chromium executable (default :data:`DEFAULT_CHROMIUM`)."""

DEFAULT_CHROMIUM: Final = "/usr/bin/chromium"
"""Where Debian's ``chromium`` package installs the browser."""

ARTIFACTS_ENV: Final = "HEADWATER_ARTIFACTS"
"""Directory for the screenshots (default: a pytest tmp dir)."""

REQUIRE_ENV: Final = "HEADWATER_REQUIRE_SERVICES"
"""``1``: a missing browser or Playwright fails the tests instead of skipping them."""

CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

WAIT: Final = 15.0
"""Upper bound (seconds) of the waits for the server."""

SERVE_CONFIG: Final = """\
host: 127.0.0.1
port: 0
pipelines:
  slow:
    description: Counts slowly, one item per chunk, reporting progress.
    pipeline:
      name: slow
      batch_size: 1
      buffer: 1
      sources: {n: {action: range, params: {stop: 40, chunk: 1}}}
      steps: [{transformer: throttle, params: {rate: 20}}]
      sinks: [{sink: websocket}]
    params:
      stop: sources.n.params.stop
      rate: steps[0].params.rate
  fails:
    description: Divides with one argument, which fails on the first item.
    pipeline:
      name: fails
      sources: {n: {action: range, params: {stop: 3}}}
      steps: [{transformer: map, params: {fn: "operator:truediv"}}]
      sinks: [{sink: websocket}]
  firehose:
    description: 10,000 chunks per second.
    pipeline:
      name: firehose
      sources: {n: {action: range, params: {stop: 25000, chunk: 250}}}
      steps: [{transformer: throttle, params: {rate: 10000, burst: 500}}]
      sinks: [{sink: websocket}]
    params:
      stop: sources.n.params.stop
      rate: steps[0].params.rate
"""
"""The server configuration of the browser tests (built-in components only)."""


def missing(reason: str) -> NoReturn:
    """Skip the test because ``reason`` (fail instead under ``HEADWATER_REQUIRE_SERVICES=1``)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (required: {REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    """The Chromium executable the tests drive."""
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def browser_or_skip(playwright: Any) -> Any:
    """Launch headless Chromium (the system's, never a downloaded one)."""
    path = chromium_path()
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        missing(f"no Chromium at {path} (install Debian's chromium, or set {CHROMIUM_ENV})")
    return playwright.chromium.launch(
        executable_path=path, headless=True, args=list(CHROMIUM_ARGS), timeout=30_000
    )


def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The screenshots' directory (created), announced on stdout."""
    configured = os.environ.get(ARTIFACTS_ENV)
    path = Path(configured) if configured else tmp_path_factory.mktemp("dashboard-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {path}")
    return path


class ServeProcess:
    """``python -m headwater serve --config FILE --port 0`` in a directory of its own."""

    def __init__(
        self, workdir: Path, config: str = SERVE_CONFIG, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.port = 0
        self._reader: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait (bounded) until it listens."""
        (self.workdir / "serve.yaml").write_text(self.config, encoding="utf-8")
        env = dict(os.environ)
        env.pop("HEADWATER_TOKENS", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["COLUMNS"] = "200"
        env.update(self.extra_env)
        self.lines = []
        # a restart listens on the port of the first start (the page reconnects there)
        port = str(self.port)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "headwater", "serve", "--config", "serve.yaml", "--port", port],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        pattern = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = pattern.search(line)
                if found:
                    self.port = int(found.group(1))
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("headwater serve did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def kill(self) -> None:
        """SIGKILL: the server dies without a word (its clients see the connection drop)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
        if self._reader is not None:
            self._reader.join(timeout=WAIT)

    def stop(self) -> int | None:
        """SIGINT (a clean shutdown), then kill if it takes too long; the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=WAIT)
        if self._reader is not None:
            self._reader.join(timeout=WAIT)
        return process.returncode
