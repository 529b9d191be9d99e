"""One line of status on stderr, for commands that follow something long (``tail``).

On a terminal the line is rewritten in place (at most ten times a second) and erased
before any other line is printed, so that chunks written to the same terminal and notes
never mix with it. Elsewhere (a pipe, a file, CI logs) it is printed as a plain line at
most every ``every`` seconds, and only when it changed: a log gets a heartbeat, never a
line per chunk.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

__all__ = ["StatusLine"]

_REDRAW_SECONDS = 0.1
"""Shortest time between two redraws of the line on a terminal."""


class StatusLine:
    """A status line on ``stream`` (default: stderr); see the module docstring.

    ``live`` says whether the stream is a terminal (default: ``stream.isatty()``);
    ``every`` is the period of the plain lines when it is not (0: none).
    """

    def __init__(
        self, stream: TextIO | None = None, *, live: bool | None = None, every: float = 5.0
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.every = every
        self.text = ""
        self._shown = False  # the live line is on screen
        self._drawn_at = 0.0
        self._printed = ""
        self._printed_at = time.monotonic()

    def update(self, text: str, *, force: bool = False) -> None:
        """Set the status; drawn now or at the next update due (``force``: now)."""
        self.text = text
        now = time.monotonic()
        if self.live:
            if force or not self._shown or now - self._drawn_at >= _REDRAW_SECONDS:
                self._draw(now)
        elif self.every > 0 and (force or now - self._printed_at >= self.every):
            self.flush_plain(now)

    def tick(self) -> None:
        """Print the plain line if it is due and changed (call it periodically)."""
        if self.live:
            if self.text and not self._shown:
                self._draw(time.monotonic())
        elif self.every > 0 and time.monotonic() - self._printed_at >= self.every:
            self.flush_plain(time.monotonic())

    def flush_plain(self, now: float | None = None) -> None:
        """Print the status as a plain line if it changed since the last one."""
        self._printed_at = time.monotonic() if now is None else now
        if self.text and self.text != self._printed:
            self._printed = self.text
            self._write(self.text + "\n")

    def clear(self) -> None:
        """Erase the live line (before something else is printed); it is drawn again at
        the next update or tick."""
        if self.live and self._shown:
            self._write("\r\x1b[2K")
            self._shown = False

    def note(self, text: str) -> None:
        """Print a line of its own (above the status line on a terminal)."""
        self.clear()
        self._write(text + "\n")
        if self.live and self.text:
            self._draw(time.monotonic())

    def close(self) -> None:
        """Erase the live line for good (plain lines stay as printed)."""
        self.clear()
        self.text = ""

    def _draw(self, now: float) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        text = self.text
        if len(text) >= width:  # a wrapped line could not be rewritten in place
            text = text[: max(1, width - 2)] + "…"
        self._write("\r\x1b[2K" + text)
        self._shown = True
        self._drawn_at = now

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # stderr went away: status is best effort
            self.live = False
            self.every = 0
