"""The logging options of every command: ``--log-format text|json`` and ``--log-level``.

``text`` (the default) keeps the console lines of :func:`._common._setup_logging`;
``json`` writes one JSON object per line on stderr, for log collectors::

    {"time": "2024-05-01T12:00:00.123Z", "level": "warning", "logger": "headwater.redis",
     "message": "...", "pipeline": "billing", "run": "3f2a...", "stage": "sources.in"}

``pipeline``, ``run`` and ``stage`` come with the records of a run's components (their
``ctx.logger``, and the broker plugins' messages); ``exception`` and ``stack`` carry a
traceback or a stack when the record has one. ``--log-level`` sets the threshold
(default: warning, or what ``-v`` / ``-vv`` ask for).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Final

LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_RUN_FIELDS: Final = (("pipeline", "pipeline"), ("run_id", "run"), ("stage", "stage"))
"""Record attribute -> JSON key, for the records of a run's components."""


def _add_log_options(parser: argparse.ArgumentParser, *, suffix: str = "") -> None:
    """``--log-format`` and ``--log-level``, before the command (``suffix=""``) or after
    it (``"_sub"``), like the other global options."""
    sub = bool(suffix)
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-format",
        dest=f"log_format{suffix}",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS if sub else None,
        help="text (default): readable lines on stderr; json: one JSON object per line "
        "(time, level, logger, message, and pipeline, run and stage for a run's records)",
    )
    group.add_argument(
        "--log-level",
        dest=f"log_level{suffix}",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS if sub else None,
        help="least severe records shown (default: warning; -v info, -vv debug)",
    )


def _option(args: argparse.Namespace, name: str) -> str | None:
    after = getattr(args, f"{name}_sub", None)
    return after if after is not None else getattr(args, name, None)


def log_format(args: argparse.Namespace) -> str:
    """The ``--log-format`` asked for (``text`` when none)."""
    return _option(args, "log_format") or "text"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attr, key in _RUN_FIELDS:
            value = getattr(record, attr, None)
            if value is not None:
                out[key] = value
        if record.exc_info:  # exc_text: as a filter (masking secrets) left it
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        stack = getattr(record, "stack", None) or record.stack_info
        if stack:
            out["stack"] = stack
        return json.dumps(out, ensure_ascii=False, default=str)


def _apply_log_options(args: argparse.Namespace) -> None:
    """Apply ``--log-format`` and ``--log-level`` (after the console logging is set up)."""
    root = logging.getLogger()
    level = _option(args, "log_level")
    if level is not None:
        root.setLevel(getattr(logging, level.upper()))
    if log_format(args) != "json":
        return
    for old in [h for h in root.handlers if getattr(h, "_headwater_cli", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._headwater_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
