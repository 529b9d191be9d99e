"""The metrics options of ``headwater run`` and ``serve``: ``--metrics-port``,
``--metrics-jsonl`` and ``--metrics-interval``, and the exporters they start."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._common import EXIT_FAILED, CLIError, _consoles, _port

if TYPE_CHECKING:
    from rich.console import Console

    from ..core.plugins import PluginManager


def _add_metrics_options(parser: argparse.ArgumentParser, *, port: bool) -> None:
    """``--metrics-port`` (if ``port``), ``--metrics-jsonl`` and ``--metrics-interval``."""
    group = parser.add_argument_group("metrics (see docs/metrics.md)")
    if port:
        group.add_argument(
            "--metrics-port",
            type=_port,
            metavar="PORT",
            help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics while it runs "
            "(0: any free port; the URL is printed on stderr)",
        )
    group.add_argument(
        "--metrics-jsonl",
        metavar="FILE",
        help="append a metrics snapshot as one JSON line to FILE every --metrics-interval "
        "seconds, and a last one at the end",
    )
    group.add_argument(
        "--metrics-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between two --metrics-jsonl lines (default: 10)",
    )


def _metrics_exporters(args: argparse.Namespace, manager: PluginManager) -> list[Any]:
    """The exporters the metrics options ask for, created but not started."""
    entries: list[dict[str, Any]] = []
    port = getattr(args, "metrics_port", None)
    if port is not None:
        entries.append({"exporter": "prometheus", "params": {"port": port}})
    if args.metrics_jsonl:
        params = {"path": args.metrics_jsonl, "interval": args.metrics_interval}
        entries.append({"exporter": "jsonl", "params": params})
    if not entries:
        return []
    from pydantic import ValidationError

    from ..builtin_plugins.exporters import build_exporters
    from ..core.engine import default_engine
    from ..core.errors import ComponentNotFound

    try:
        # the command's engine (see _common._engine): its metrics are the command's
        return build_exporters(entries, manager, default_engine().metrics.snapshot)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CLIError(f"metrics options: {problems}") from None
    except (ImportError, ComponentNotFound) as exc:
        raise CLIError(f"metrics options: {exc}", EXIT_FAILED) from None


async def _with_exporters(
    exporters: list[Any], console: Console | None, fn: Callable[..., Any], *args: Any
) -> Any:
    """Await ``fn(*args)`` with the metrics exporters running (stopped at the end, which
    writes the final figures). ``console`` None: stderr's rich console, made when an
    exporter has a URL to announce."""
    if not exporters:
        return await fn(*args)
    from rich.text import Text

    from ..core.metrics import running_exporters

    if console is None:
        console = _consoles()[1]

    entered = False
    try:
        async with running_exporters(exporters):
            entered = True
            for exporter in exporters:
                url = getattr(exporter, "url", None)
                if url:
                    console.print(Text(f"headwater: metrics at {url}"), soft_wrap=True)
            return await fn(*args)
    except OSError as exc:
        if entered:
            raise
        # a port taken, a file that cannot be opened
        raise CLIError(f"cannot start metrics: {exc.strerror or exc}", EXIT_FAILED) from None
