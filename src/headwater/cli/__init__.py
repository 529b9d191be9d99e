"""The ``headwater`` command: run, validate and inspect pipelines; list plugins.

Commands::

    headwater run FILE [--set KEY=VALUE]... [--progress | --no-progress] [--json]
    headwater run FILE --serve [--port P] [--stream NAME] [--keep-serving]
    headwater run FILE --resume [--force]
    headwater validate FILE [--set KEY=VALUE]... [--print [--json]] [--check-connections]
    headwater test FILE... [-k TEXT]
    headwater plugins [--json] [--check [PLUGIN]]
    headwater describe NAME [--kind KIND] [--json]
    headwater schema
    headwater serve [--config FILE] [--host HOST] [--port PORT]
    headwater tail URL STREAM [--since N] [--token TOKEN] [--json]
    headwater tail URL --run PIPELINE [--param KEY=VALUE]... [--stream NAME]
    headwater worker FILE [--consumer NAME] [--drain-timeout SECONDS] [--set KEY=VALUE]...
    headwater checkpoints list|show NAME|reset NAME [--store-path PATH | --pipeline FILE]

Global options (before or after the command): ``--disable-plugin NAME`` (repeatable, also
``-p no:NAME`` as in pytest, and the ``HEADWATER_DISABLE_PLUGINS`` variable),
``--strict-plugins`` (a plugin that fails to load is an error), ``-v`` (logging, and
tracebacks of unexpected errors), ``--version``.

Output: data goes to stdout (``--json`` documents, sinks such as ``stdout``); progress,
messages, summaries and errors go to stderr. Errors are one readable paragraph, never a
traceback unless ``-v`` is given.

Exit codes: 0 success; 1 the pipeline failed, was cancelled or timed out (or an
unexpected error); 2 bad input (missing file, invalid YAML, validation errors, unknown
component, a plugin failure in strict mode); 130 / 143 the run was interrupted by
SIGINT / SIGTERM. ``tail`` adds 3: the stream had already ended and the server
kept nothing of it; ``test`` exits 1 when a test case failed and 2 when one is invalid.

Heavy modules (rich, anyio, pydantic, the plugin machinery) are imported inside the
command functions so that ``headwater --help`` stays fast.

Modules, one per command group: :mod:`~headwater.cli.run` (``run``, ``schema``),
:mod:`~headwater.cli.runview` (the view of a run), :mod:`~headwater.cli.serve_run`
(``run --serve``), :mod:`~headwater.cli.validate`, :mod:`~headwater.cli.testing`
(``test``), :mod:`~headwater.cli.tail`, :mod:`~headwater.cli.jobs` (``run`` of a jobs file),
:mod:`~headwater.cli.plugins` (``plugins``, ``describe``, ``new-plugin``),
:mod:`~headwater.cli.serve` (``serve``), :mod:`~headwater.cli.checkpoints`,
:mod:`~headwater.cli.worker`; :mod:`~headwater.cli.metrics` holds the metrics options,
:mod:`~headwater.cli.parser` the argument parser and ``_common`` what they all share.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    CLIError,
    _consoles,
    _error,
    _forced_terminal,
    _mask_logs,
    _secrets,
    _setup_logging,
    _unexpected,
    _verbosity,
    parse_overrides,
)
from .logs import _apply_log_options
from .parser import build_parser

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "CLIError",
    "build_parser",
    "main",
    "parse_overrides",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``headwater`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit code; usage errors exit through argparse with code 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = _verbosity(args)
    command: Callable[[argparse.Namespace], int] = args.func
    secrets = _secrets(args)  # filled as the command's files are loaded
    try:
        forced = _forced_terminal(args)
        _setup_logging(verbosity, lambda: _consoles(force_terminal=forced)[1])
        _apply_log_options(args)
        _mask_logs(secrets)
        return int(command(args))
    except CLIError as exc:
        _error(str(exc), secrets)
        return exc.code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_SIGINT
    except BrokenPipeError:
        # The reader of our stdout went away (``headwater plugins | head``): stay quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as caught:
        return _unexpected(caught, verbosity, secrets)
