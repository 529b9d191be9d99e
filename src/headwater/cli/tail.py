"""``headwater tail``: follow a stream of a headwater server, or start a named pipeline
there and follow its run to the end.

Chunks go to stdout (strings as they are, anything else as one line of JSON); a status
line (:class:`~headwater.cli.statusline.StatusLine`), notes and errors go to stderr. A
stream that has already ended is replayed from what the server kept of it (the run
history keeps the runs that clients started), or reported as ended.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_USAGE,
    CLIError,
    _num,
    _on_signals,
    _rate,
    parse_overrides,
)
from .statusline import StatusLine

if TYPE_CHECKING:
    from ..client import Client
    from ..server.protocol import ServerMessage

EXIT_ENDED = 3
"""``tail``: the stream had already ended and the server kept nothing of it to replay."""

_FAILED_REASONS = frozenset({"failed", "error", "shutdown", "owner_lost"})
"""Ends of a followed stream that ``tail`` reports with exit status 1."""

_USAGE_CODES = frozenset({"unknown_pipeline", "invalid_params", "unauthorized", "invalid_message"})
"""Refusals of a ``run`` request that are the caller's input (exit status 2)."""

TAIL_EPILOG = """\
exit codes:
  0    the stream ended (for --run: the run succeeded); also when stdout is closed
       early (headwater tail ... | head): tail then stops quietly
  1    the stream ended with an error (failed, error, shutdown), or with --run the run
       did not succeed (failed or cancelled); the connection was lost or refused; no
       such stream
  2    bad input: not a WebSocket URL, a bad option, a token the server refuses, an
       unknown pipeline or param with --run
  3    the stream had already ended and the server kept nothing of it to replay
  130  interrupted (Ctrl-C); with --run the run is cancelled first
"""


def _add_tail_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``tail`` sub-command."""
    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="print a stream's chunks as they arrive, or run a named pipeline and follow it",
        description="Follow one stream of a headwater server: each chunk is printed on\n"
        "stdout (strings as they are, anything else as JSON); a status line (chunks, rate,\n"
        "progress of each stage) and notes go to stderr. The status line is rewritten in\n"
        "place on a terminal and printed every --status-every seconds otherwise.\n"
        "\n"
        "With --run PIPELINE, tail starts that named pipeline of the server (with the\n"
        "params given by --param) and follows its run to the end; the exit status is the\n"
        "run's outcome. Ctrl-C then cancels the run on the server.\n"
        "\n"
        "A stream that has already ended is replayed from what the server kept of it\n"
        "(headwater serve keeps the runs clients start, with the last chunks of their\n"
        "streams), then tail ends as if it had followed it; if nothing was kept, tail says\n"
        "so and exits with status 3.",
        epilog=TAIL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("url", metavar="URL", help="server URL, e.g. ws://127.0.0.1:8765/")
    tail.add_argument("stream", metavar="STREAM", nargs="?", help="stream id (not with --run)")
    tail.add_argument(
        "--run",
        metavar="PIPELINE",
        help="start this named pipeline of the server and follow its run (its stream is "
        "PIPELINE-RUNID, or --stream)",
    )
    tail.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --run: a param of the run (VALUE read as YAML: 10 is a number, '10' a "
        "string); repeatable",
    )
    tail.add_argument(
        "--stream",
        dest="run_stream",
        metavar="NAME",
        help="with --run: the id of the run's stream (default PIPELINE-RUNID)",
    )
    tail.add_argument(
        "--since",
        type=int,
        metavar="N",
        help="first print the buffered chunks after seq N (0: everything still buffered)",
    )
    tail.add_argument(
        "--token", help="bearer token (default: the HEADWATER_TOKEN environment variable)"
    )
    tail.add_argument(
        "--json", action="store_true", help="print every protocol message as JSON on stdout"
    )
    tail.add_argument(
        "--status-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal: print the status line at most this often "
        "(default 5; 0: never)",
    )
    tail.add_argument(
        "--no-status", action="store_true", help="no status line (notes and errors only)"
    )
    tail.set_defaults(func=_cmd_tail)


def _cmd_tail(args: argparse.Namespace) -> int:
    """``headwater tail``: follow one stream, or a run it starts."""
    import anyio

    if args.since is not None and args.since < 0:
        raise CLIError("--since must be >= 0")
    if args.status_every < 0:
        raise CLIError("--status-every must be >= 0")
    if args.run is None:
        if args.stream is None:
            raise CLIError("give the STREAM to follow, or --run PIPELINE to start a run")
        if args.params or args.run_stream:
            raise CLIError("--param and --stream apply with --run PIPELINE")
    elif args.stream is not None:
        raise CLIError(
            f"give either a STREAM ({args.stream!r}) or --run {args.run}, not both "
            "(--stream NAME names the run's stream)"
        )
    params = parse_overrides(args.params, option="--param")
    token = args.token or os.environ.get("HEADWATER_TOKEN") or None
    status = StatusLine(every=args.status_every)
    if args.no_status:
        status.live, status.every = False, 0
    follower = _Follower(args, status)
    try:
        try:
            return int(anyio.run(follower.main, token, params, backend="asyncio"))
        except BaseExceptionGroup as group:  # a task group's wrapper around one error
            raise _single(group) from None
    except _StdoutClosed:
        # The reader of our stdout went away (headwater tail ... | head): stop quietly.
        status.close()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        status.close()


def _single(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one error inside nested task-group wrappers (the group itself if several)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _StdoutClosed(Exception):
    """Writing a chunk to stdout failed: its reader is gone."""


@dataclass
class _Figures:
    """What the status line shows of a stream."""

    chunks: int = 0
    started: float = field(default_factory=time.monotonic)
    progress: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    state: str = "following"


class _Follower:
    """Follows one stream (or the run it starts) and decides the exit status."""

    def __init__(self, args: argparse.Namespace, status: StatusLine) -> None:
        self.args = args
        self.status = status
        self.stream: str = args.stream or ""
        self.figures = _Figures()
        self.interrupted = False
        self.run_id: str | None = None
        self._stdout_tty = sys.stdout.isatty()

    # -- output -----------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.status.note(text)

    def emit(self, line: str) -> None:
        if self._stdout_tty:
            self.status.clear()  # the same terminal: chunks never mix with the status
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            raise _StdoutClosed from None

    def show_status(self, *, force: bool = False) -> None:
        f = self.figures
        elapsed = time.monotonic() - f.started
        rate = f" ({_rate(f.chunks / elapsed)}/s)" if elapsed > 0 and f.chunks else ""
        parts = [f"{self.stream}: {f.chunks:,} chunk{'s' if f.chunks != 1 else ''}{rate}"]
        for stage, (done, total) in f.progress.items():
            if stage.startswith("sources."):  # what a source read, maybe ahead of delivery
                stage = f"{stage} read"
            if total:
                parts.append(f"{stage} {_num(done)}/{_num(total)} ({done / total:.0%})")
            else:
                parts.append(f"{stage} {_num(done)}")
        parts.append(f.state)
        self.status.update(" · ".join(parts), force=force and self.status.live)

    # -- the command --------------------------------------------------------------------

    async def main(self, token: str | None, params: dict[str, Any]) -> int:
        import anyio
        from websockets.exceptions import InvalidURI

        from ..client import ConnectFailed, connect

        args = self.args
        try:
            async with connect(args.url, token=token) as client:
                code: int | None = None
                received: list[int] = []
                async with anyio.create_task_group() as tg:
                    await tg.start(self._watch_signals, client, tg.cancel_scope, received)
                    tg.start_soon(self._ticker)
                    code = await self._follow(client, params)
                    tg.cancel_scope.cancel()
                if code is None:
                    if self.interrupted:
                        return 128 + (received[0] if received else 2)
                    raise CLIError(
                        "the connection closed before the stream ended (code "
                        f"{client.close_code}: {client.close_reason or 'no reason'})",
                        EXIT_FAILED,
                    )
                if self.interrupted and received:
                    return 128 + received[0]
                return code
        except ConnectFailed as exc:
            raise CLIError(
                str(exc), EXIT_USAGE if exc.status in (401, 403) else EXIT_FAILED
            ) from None
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, BrokenPipeError):
                raise _StdoutClosed from None
            raise CLIError(
                f"cannot connect to {args.url}: {getattr(exc, 'strerror', None) or exc}",
                EXIT_FAILED,
            ) from None
        except InvalidURI as exc:
            raise CLIError(f"not a WebSocket URL: {args.url} ({exc})") from None

    async def _ticker(self) -> None:
        import anyio

        while True:
            await anyio.sleep(0.5)
            if self.figures.chunks or self.figures.progress:
                self.show_status()
            self.status.tick()

    async def _watch_signals(
        self, client: Client, scope: Any, received: list[int], *, task_status: Any
    ) -> None:
        """Ctrl-C: with --run, cancel the run and follow it to its end; otherwise stop."""

        def first(name: str, signum: int) -> None:
            self.interrupted = True
            if self.run_id is not None:
                self.note(f"{name}: cancelling the run on the server (send it again to exit now)")
                self.figures.state = "cancelling"
                scope_tg.start_soon(_cancel, client, self.run_id)
            else:
                scope.cancel()

        def again(name: str) -> None:
            self.status.close()

        import anyio

        async with anyio.create_task_group() as scope_tg:
            await _on_signals(first, again, received, task_status=task_status)

    async def _follow(self, client: Client, params: dict[str, Any]) -> int | None:
        """Subscribe (or start the run) and print until the stream ends; the exit status,
        or None when the connection closed first."""
        from ..client import RequestFailed

        args = self.args
        if args.run is not None:
            try:
                started = await client.run(args.run, params, stream=args.run_stream)
            except RequestFailed as exc:
                code = EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_FAILED
                raise CLIError(f"cannot run {args.run!r}: {exc}", code) from None
            self.stream, self.run_id = started.stream, started.run
            if args.json:
                self.emit(started.model_dump_json())
            self.note(f"started run {started.run} of {args.run!r} on stream {started.stream!r}")
            return await self._messages(client, replaying=False)
        try:
            sub = await client.subscribe(self.stream, since=args.since)
        except RequestFailed as exc:
            if exc.code == "stream_closed":
                self.note(
                    f"stream {self.stream!r} has ended, and the server keeps nothing of it "
                    "to replay (its run history keeps the runs that clients start)"
                )
                return EXIT_ENDED
            if exc.code == "unknown_stream":
                raise CLIError(
                    f"cannot follow stream {self.stream!r}: {exc} (it never existed on this "
                    "server, or it ended and is no longer kept; GET /api/runs lists the runs "
                    "kept)",
                    EXIT_FAILED,
                ) from None
            code = EXIT_USAGE if exc.code == "unauthorized" else EXIT_FAILED
            raise CLIError(f"cannot follow stream {self.stream!r}: {exc}", code) from None
        if args.json:
            self.emit(sub.model_dump_json())
        replayed = f", {sub.replayed:,} buffered chunk(s) first" if sub.replayed else ""
        self.note(f"following stream {self.stream!r} at seq {sub.seq}{replayed}")
        return await self._messages(client, replaying=args.since is None)

    async def _messages(self, client: Client, *, replaying: bool) -> int | None:
        """Handle messages until ``stream_complete``. ``replaying``: a finished stream
        answered without chunks is subscribed to again with ``since: 0``."""
        async for message in client:
            if getattr(message, "stream", self.stream) != self.stream:
                continue
            if message.type == "stream_complete":
                summary = message.summary if isinstance(message.summary, dict) else {}
                if replaying and summary.get("history") and message.last_seq > 0:
                    self.note(
                        f"stream {self.stream!r} has already ended ({message.reason}); "
                        "replaying what the server kept of it"
                    )
                    if self.args.json:
                        self.emit(message.model_dump_json())
                    await client.subscribe(self.stream, since=0)
                    replaying = False
                    continue
                if self.args.json:
                    self.emit(message.model_dump_json())
                return self._complete(message)
            if self.args.json:
                self.emit(message.model_dump_json())
            self._on_message(message)
        return None

    def _on_message(self, message: ServerMessage) -> None:
        import json

        f = self.figures
        if message.type == "stream_update":
            f.chunks += 1
            if not self.args.json:
                data = message.data
                self.emit(
                    data
                    if isinstance(data, str)
                    else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
                )
            self.show_status()
        elif message.type == "progress":
            f.progress[message.stage] = (message.done, message.total)
            self.show_status()
        elif message.type == "status":
            if message.stage is None:
                f.state = message.state
                self.show_status(force=True)
            elif message.message:
                self.note(f"  {message.stage}: {message.message}")
        elif message.type == "stream_error":
            err = message.error
            handled = " (handled)" if err.get("handled") else ""
            where = f"{err['stage']}: " if err.get("stage") else ""
            self.note(f"error{handled}: {where}{err.get('error')}: {err.get('message')}")
        elif message.type == "dropped":
            self.note(f"warning: {message.count} message(s) dropped (too slow)")
        elif message.type == "replay_gap":
            self.note(
                f"warning: chunks after {message.since} are not all kept ({message.reason}); "
                f"continuing from {message.first_available}"
            )
        elif message.type == "error":
            self.note(f"error: {message.code}: {message.message}")

    def _complete(self, message: Any) -> int:
        reason = message.reason
        self.figures.state = reason
        self.status.close()
        f = self.figures
        what = f"run {self.run_id}" if self.run_id else f"stream {self.stream!r}"
        self.note(
            f"{what} ended: {reason} ({f.chunks:,} chunk{'s' if f.chunks != 1 else ''}, "
            f"last seq {message.last_seq})"
        )
        if self.run_id is not None:
            if self.interrupted:
                return EXIT_SIGINT
            return EXIT_OK if reason == "succeeded" else EXIT_FAILED
        return EXIT_FAILED if reason in _FAILED_REASONS else EXIT_OK


async def _cancel(client: Client, run_id: str) -> None:
    await client.cancel(run=run_id)
