"""``headwater serve`` (the server) and ``headwater tail`` (a client following a stream)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    _consoles,
    _engine,
    _num,
    _port,
    _secrets,
)
from .metrics import _add_metrics_options, _metrics_exporters, _with_exporters

if TYPE_CHECKING:
    from rich.console import Console

    from ..core.engine import Engine


def _add_server_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``serve`` and ``tail`` sub-commands."""
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve streams and named pipelines over WebSockets (and HTTP)",
        description="Serve protocol v1 over WebSockets and /healthz, /readyz, /api/streams,\n"
        "/api/components over HTTP, on one port. Without authentication (auth.tokens or\n"
        "HEADWATER_TOKENS) it binds 127.0.0.1 only; with it, binding beyond loopback needs\n"
        "TLS (tls.cert_file in the configuration).\n"
        "SIGHUP reloads the configuration file (pipelines, tokens, limits, allowed hosts;\n"
        "an invalid file changes nothing and is reported) and the TLS certificate.\n"
        "SIGTERM drains first: new runs are refused and /readyz answers 503 while the runs\n"
        "going on end (up to shutdown.drain_seconds, 20 by default; then they are\n"
        "cancelled). Then, as at once on Ctrl-C (SIGINT) or a second signal, every client\n"
        "is told and disconnected (WebSocket code 1001); the exit status is then 130\n"
        "(SIGINT) or 143 (SIGTERM).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="server configuration (YAML)")
    serve.add_argument("--host", help="address to bind (overrides the configuration)")
    serve.add_argument(
        "--port", type=_port, help="port to listen on; 0 picks a free one (default 8765)"
    )
    _add_metrics_options(serve, port=False)
    serve.set_defaults(func=_cmd_serve)

    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="print a stream's chunks as they arrive",
        description="Follow one stream of a headwater server: each chunk is printed on\n"
        "stdout (strings as they are, anything else as JSON), progress and status on\n"
        "stderr. Ends when the stream ends (exit 1 if it ended with an error).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("url", metavar="URL", help="server URL, e.g. ws://127.0.0.1:8765/")
    tail.add_argument("stream", metavar="STREAM", help="stream id")
    tail.add_argument(
        "--since",
        type=int,
        metavar="N",
        help="first print the buffered chunks after seq N (0: everything buffered)",
    )
    tail.add_argument(
        "--token", help="bearer token (default: the HEADWATER_TOKEN environment variable)"
    )
    tail.add_argument(
        "--json", action="store_true", help="print every protocol message as JSON on stdout"
    )
    tail.set_defaults(func=_cmd_tail)


def _cmd_serve(args: argparse.Namespace) -> int:
    """``headwater serve``: run the server until SIGINT or SIGTERM.

    Returns 128 + the signal's number after a clean shutdown on a signal (130 on SIGINT,
    143 on SIGTERM, as ``headwater --help`` documents), 0 if the server stopped by itself.
    """
    import anyio

    from ..server.config import ServerConfig, load_server_config

    base_dir: Path | None = None
    path: Path | None = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CLIError(f"no such file: {args.config}")
        config = load_server_config(path, secrets=_secrets(args))
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


def _cmd_tail(args: argparse.Namespace) -> int:
    """``headwater tail``: follow one stream."""
    import anyio

    if args.since is not None and args.since < 0:
        raise CLIError("--since must be >= 0")
    token = args.token or os.environ.get("HEADWATER_TOKEN") or None
    return int(anyio.run(_tail, args, token, backend="asyncio"))


async def _tail(args: argparse.Namespace, token: str | None) -> int:
    import json

    from rich.text import Text
    from websockets.exceptions import InvalidURI

    from ..client import ConnectFailed, RequestFailed, connect

    _, err = _consoles()
    stream = args.stream

    def note(text: str, style: str = "dim") -> None:
        err.print(Text(text, style=style), soft_wrap=True)

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        async with connect(args.url, token=token) as client:
            try:
                sub = await client.subscribe(stream, since=args.since)
            except RequestFailed as exc:
                raise CLIError(f"cannot follow stream {stream!r}: {exc}", EXIT_FAILED) from None
            if args.json:
                emit(sub.model_dump_json())
            replayed = f", {sub.replayed} buffered chunk(s) first" if sub.replayed else ""
            note(f"following stream {stream!r} at seq {sub.seq}{replayed}")
            async for message in client:
                if getattr(message, "stream", stream) != stream:
                    continue
                if args.json:
                    emit(message.model_dump_json())
                if message.type == "stream_update":
                    if not args.json:
                        data = message.data
                        emit(
                            data
                            if isinstance(data, str)
                            else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
                        )
                elif message.type == "progress":
                    total = f"/{_num(message.total)}" if message.total is not None else ""
                    text = f" {message.message}" if message.message else ""
                    note(f"progress {message.stage}: {_num(message.done)}{total}{text}")
                elif message.type == "status":
                    where = message.stage or "run"
                    note(f"status {where}: {message.state} {message.message or ''}".rstrip())
                elif message.type == "stream_error":
                    note(f"error: {json.dumps(message.error)}", "red")
                elif message.type == "dropped":
                    note(f"warning: {message.count} message(s) dropped (too slow)", "yellow")
                elif message.type == "replay_gap":
                    note(
                        f"warning: chunks after {message.since} are not all buffered "
                        f"({message.reason}); continuing from {message.first_available}",
                        "yellow",
                    )
                elif message.type == "error":
                    note(f"error: {message.code}: {message.message}", "red")
                elif message.type == "stream_complete":
                    failed = message.reason in ("failed", "error")
                    note(
                        f"stream {stream!r} ended: {message.reason} (last seq {message.last_seq})",
                        "red" if failed else "bold",
                    )
                    return EXIT_FAILED if failed else EXIT_OK
            code, reason = client.close_code, client.close_reason
    except ConnectFailed as exc:
        raise CLIError(str(exc), EXIT_USAGE if exc.status in (401, 403) else EXIT_FAILED) from None
    except OSError as exc:
        raise CLIError(
            f"cannot connect to {args.url}: {exc.strerror or exc}", EXIT_FAILED
        ) from None
    except InvalidURI as exc:
        raise CLIError(f"not a WebSocket URL: {args.url} ({exc})") from None
    raise CLIError(
        f"the connection closed before the stream ended (code {code}: {reason or 'no reason'})",
        EXIT_FAILED,
    )
