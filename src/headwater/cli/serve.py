"""``headwater serve``: the server (``headwater tail``, its client, is in :mod:`.tail`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    _consoles,
    _engine,
    _port,
    _secrets,
)
from .metrics import _add_metrics_options, _metrics_exporters, _with_exporters
from .tail import _add_tail_command

if TYPE_CHECKING:
    from rich.console import Console

    from ..core.engine import Engine


SERVE_EPILOG = """\
exit codes:
  0    the server stopped by itself
  1    the port cannot be listened on
  2    bad input: missing or invalid configuration (every problem is listed)
  130  stopped by SIGINT (Ctrl-C); 143 by SIGTERM
"""


def _add_server_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``serve`` and ``tail`` sub-commands."""
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve named pipelines over WebSockets and HTTP: dashboard, /metrics, /api/*",
        description="Serve protocol v1 over WebSockets and plain HTTP on one port:\n"
        "  /                       the dashboard: runs, streams, throughput, latency, errors\n"
        "  /runs/ID, /errors       a run's page (live or from the run history); the errors\n"
        "  /metrics                Prometheus metrics of every pipeline and stream\n"
        "  /healthz, /readyz       liveness; readiness (503 while starting or draining)\n"
        "  /api/pipelines          the named pipelines clients may run, with their params\n"
        "  /api/streams            the open streams;  /api/components: every component\n"
        "  /api/runs, /api/runs/ID the run history (runs clients started, kept after the end)\n"
        "  /api/streams/NAME/events  a stream as Server-Sent Events\n"
        "WebSocket clients connect to / or /ws (docs: Client protocol); headwater tail is one.\n"
        "\n"
        "Without authentication (auth.tokens or HEADWATER_TOKENS) it binds 127.0.0.1 only;\n"
        "with it, binding beyond loopback needs TLS (tls.cert_file in the configuration).\n"
        "SIGHUP reloads the configuration file (pipelines, tokens, limits, allowed hosts;\n"
        "an invalid file changes nothing and is reported) and the TLS certificate.\n"
        "SIGTERM drains first: new runs are refused and /readyz answers 503 while the runs\n"
        "going on end (up to shutdown.drain_seconds, 20 by default; then they are\n"
        "cancelled). Then, as at once on Ctrl-C (SIGINT) or a second signal, every client\n"
        "is told and disconnected (WebSocket code 1001); the exit status is then 130\n"
        "(SIGINT) or 143 (SIGTERM).\n"
        "\n"
        "To try a single pipeline file with its dashboard, headwater run FILE --serve is\n"
        "enough; headwater serve is for named pipelines that clients start.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="server configuration (YAML)")
    serve.add_argument("--host", help="address to bind (overrides the configuration)")
    serve.add_argument(
        "--port", type=_port, help="port to listen on; 0 picks a free one (default 8765)"
    )
    _add_metrics_options(serve, port=False)
    serve.set_defaults(func=_cmd_serve)

    _add_tail_command(commands, common)


def _cmd_serve(args: argparse.Namespace) -> int:
    """``headwater serve``: run the server until SIGINT or SIGTERM.

    Returns 128 + the signal's number after a clean shutdown on a signal (130 on SIGINT,
    143 on SIGTERM, as ``headwater --help`` documents), 0 if the server stopped by itself.
    """
    import anyio

    from ..server.config import ServerConfig

    base_dir: Path | None = None
    path: Path | None = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CLIError(f"no such file: {args.config}")
        config = _load_config(args, path)
        base_dir = path.parent
    else:
        config = ServerConfig()
    updates: dict[str, Any] = {}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if updates:
        config = config.model_copy(update=updates)
    source = _ConfigFile(path, updates)
    engine = _engine(args, policy=config.sandbox.policy(base_dir))
    manager = engine.plugins
    _, err = _consoles()
    exporters = _metrics_exporters(args, manager)
    try:
        return int(
            anyio.run(
                _with_exporters,
                exporters,
                err,
                _serve,
                config,
                engine,
                base_dir,
                err,
                source,
                backend="asyncio",
            )
        )
    except OSError as exc:
        raise CLIError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", EXIT_FAILED
        ) from None


def _load_config(args: argparse.Namespace, path: Path) -> Any:
    """The configuration file, validated; every problem reported at once.

    The file's shape is checked first; when it has problems, the pipelines that did load
    are also resolved against the installed components, so that an unknown transformer
    is listed with a wrong limit instead of after it is fixed. (A valid file's pipelines
    are resolved when the server starts, before it listens.)
    """
    from ..server.config import ServerConfigError, load_server_config

    try:
        return load_server_config(path, secrets=_secrets(args))
    except ServerConfigError as exc:
        more = _component_issues(args, path)
        seen = {(i.path, i.message) for i in exc.issues}
        issues = [*exc.issues, *(i for i in more if (i.path, i.message) not in seen)]
        raise ServerConfigError(issues, exc.source) from None


def _component_issues(args: argparse.Namespace, path: Path) -> list[Any]:
    """The problems of the configuration's pipelines with the installed components, for
    the pipelines whose shape is valid (best effort: an unreadable file gives none)."""
    from ..core.errors import PipelineValidationError, ValidationIssue
    from ..core.yamlfile import YamlFileError, read_yaml
    from ..server.config import ServerConfig, ServerConfigError
    from ..server.runs import with_stream_sink

    try:
        data = read_yaml(path, secrets=_secrets(args))
    except YamlFileError:
        return []
    entries = data.get("pipelines") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return []
    engine = _engine(args)
    issues: list[ValidationIssue] = []
    for name, entry in entries.items():
        try:
            config = ServerConfig.model_validate({"pipelines": {name: entry}})
            named = config.named_pipelines(path.parent, secrets=_secrets(args))
        except (ServerConfigError, ValueError):
            continue  # its shape problems are reported already
        where = f"pipelines.{name}" if str(name).isidentifier() else f"pipelines[{name!r}]"
        for pipeline in named.values():
            try:
                engine.prepare(with_stream_sink(pipeline.data))
            except PipelineValidationError as exc:
                issues.extend(
                    ValidationIssue(f"{where}.{i.path}" if i.path else where, i.message)
                    for i in exc.issues
                )
    return issues


@dataclass(frozen=True, slots=True)
class _ConfigFile:
    """Where ``serve``'s configuration came from, for SIGHUP: its file (None: no
    ``--config``) and the command line's overrides (``--host``, ``--port``)."""

    path: Path | None
    overrides: dict[str, Any]


async def _serve(
    config: Any, engine: Engine, base_dir: Any, err: Console, source: _ConfigFile
) -> int:
    """Serve until a signal shuts the server down; the exit status (see ``_cmd_serve``).

    SIGTERM drains the server, then shuts it down; SIGINT, or a second signal during the
    drain, shuts it down at once; SIGHUP reloads the configuration and the certificate.
    """
    import signal

    import anyio
    from rich.text import Text

    from ..server.app import Server

    def say(text: str) -> None:
        err.print(Text(f"headwater: {text}"), soft_wrap=True)

    received: list[int] = []
    async with Server(config, engine=engine, base_dir=base_dir) as server:
        names = ", ".join(sorted(server.pipelines)) or "none"
        say(f"serving on {server.http_url} (WebSocket {server.url})")
        say(f"pipelines: {names}; Ctrl-C to stop")
        hangup = getattr(signal, "SIGHUP", None)  # not on Windows
        watched = [signal.SIGINT, signal.SIGTERM] + ([hangup] if hangup is not None else [])
        draining = anyio.CancelScope()

        async def drain_then_stop(seconds: float) -> None:
            with draining:
                if await server.drain(seconds):
                    say("drained: every run has ended")
                else:
                    say(f"drain deadline ({seconds:g}s) passed: the runs left were cancelled")
            await server.shutdown()

        with anyio.open_signal_receiver(*watched) as signals:
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    async for signum in signals:
                        if signum == hangup:
                            _reload(server, source, err)
                            continue
                        received.append(signum)
                        name = signal.Signals(signum).name
                        seconds = server.config.shutdown.drain_seconds
                        if signum == signal.SIGTERM and len(received) == 1 and seconds > 0:
                            going = len(server.runs)
                            say(
                                f"{name}: shutting down: draining for up to {seconds:g}s "
                                f"(new runs refused, {going} run{'' if going == 1 else 's'} "
                                "going on; a second signal stops at once)"
                            )
                            tg.start_soon(drain_then_stop, seconds)
                            continue
                        say(f"{name}: shutting down" + (" now" if len(received) > 1 else ""))
                        draining.cancel()
                        await server.shutdown()
                        return

                tg.start_soon(on_signal)
                await server.serve_forever()
                tg.cancel_scope.cancel()
    say("server stopped")
    return 128 + received[0] if received else EXIT_OK


def _reload(server: Any, source: _ConfigFile, err: Console) -> None:
    """SIGHUP: read the configuration file again, then the TLS certificate."""
    if source.path is not None:
        _reload_config(server, source.path, source.overrides, err)
    _reload_tls(server, err)


def _reload_config(server: Any, path: Path, overrides: dict[str, Any], err: Console) -> None:
    """Apply the configuration file again (``--host`` and ``--port`` still win); an
    invalid one changes nothing and is logged as an error naming the problem."""
    import logging

    from rich.text import Text

    from ..core.errors import HeadwaterError
    from ..server.config import load_server_config

    log = logging.getLogger("headwater.serve")
    try:
        config = load_server_config(path, secrets=server.engine.services.secrets)
        config = config.model_copy(update=overrides)
        change = server.reload(config)
    except (HeadwaterError, OSError, ValueError) as exc:
        log.error("SIGHUP: configuration not reloaded, the current one stays: %s", exc)
        return
    err.print(
        Text(f"headwater: SIGHUP: configuration reloaded from {path}: {change.describe()}"),
        soft_wrap=True,
    )
    if change.ignored:
        log.warning(
            "SIGHUP: %s changed in %s but %s read at start only: restart to apply",
            ", ".join(change.ignored),
            path,
            "is" if len(change.ignored) == 1 else "are",
        )


def _reload_tls(server: Any, err: Console) -> None:
    """SIGHUP: load the TLS certificate again (new connections get it)."""
    from rich.text import Text

    try:
        reloaded = server.reload_tls()
    except ValueError as exc:
        text = f"headwater: SIGHUP: {exc}; the current certificate stays"
    else:
        text = (
            "headwater: SIGHUP: TLS certificate reloaded"
            if reloaded
            else "headwater: SIGHUP: no TLS certificate configured, nothing to reload"
        )
    err.print(Text(text), soft_wrap=True)
