"""The argument parser of the ``headwater`` command: every command group's sub-commands."""

from __future__ import annotations

import argparse

from .. import __version__
from ._common import _EPILOG, _add_global_options
from .checkpoints import _add_checkpoint_commands
from .logs import _add_log_options
from .plugins import _add_describe_command, _add_new_plugin_command, _add_plugins_command
from .run import _add_run_command, _add_schema_command
from .serve import _add_server_commands
from .testing import _add_test_command
from .validate import _add_validate_command
from .worker import _add_worker_command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``headwater`` command."""
    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Streaming pipelines assembled from plugins.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    _add_global_options(parser)
    _add_log_options(parser)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suffix="_sub")
    _add_log_options(common, suffix="_sub")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run_command(commands, common)
    _add_validate_command(commands, common)
    _add_test_command(commands, common)
    _add_plugins_command(commands, common)
    _add_describe_command(commands, common)
    _add_schema_command(commands, common)
    _add_new_plugin_command(commands, common)
    _add_server_commands(commands, common)
    _add_worker_command(commands, common)
    _add_checkpoint_commands(commands, common)
    return parser
