"""``headwater run FILE --serve``: run one pipeline while serving its stream.

The pipeline becomes the only named pipeline of a server on 127.0.0.1 (the server of
``headwater serve``, with its dashboard, ``/metrics`` and ``/api/*``), and is started
there as a client's ``run`` would start it: its output goes to the stream
``PIPELINE-RUNID`` (or ``--stream``), its page is ``/runs/RUNID``, and the run history
lets a client that comes late replay it. The history is the one of ``headwater serve``,
``.headwater/runs.db`` in the working directory, so that a server started later in the
same folder lists the run and replays it; with ``--no-history`` it is kept in memory
while the server runs, and nothing is written. The terminal shows the run as
``headwater run`` does: a local subscriber of the stream renders its progress and
errors. The command exits when the run ends, after the server has told its clients;
``--keep-serving`` keeps the server (dashboard, replay) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import anyio

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    _consoles,
    _engine,
    _on_signals,
    _secrets,
    _verbosity,
)

if TYPE_CHECKING:
    from rich.console import Console

    from ..core.engine import Engine
    from ..core.events import Event
    from ..core.pipeline import PipelineSpec
    from ..core.runtime import RunResult
    from .runview import _RunView

_COMPLETE_GRACE = 5.0
"""Seconds the terminal waits for the stream's end after the run's result (the local
subscriber receives it from the server; bounded so that a lost frame never hangs)."""


def _check_serve_options(args: argparse.Namespace) -> None:
    """``--port``, ``--stream`` and ``--keep-serving`` need ``--serve``; ``--serve`` goes
    with neither ``--resume`` nor the trio backend."""
    if not args.serve:
        for option, given in (
            ("--port", args.port is not None),
            ("--stream", args.stream is not None),
            ("--keep-serving", args.keep_serving),
        ):
            if given:
                raise CLIError(f"{option} applies with --serve")
        return
    if args.resume or args.force:
        raise CLIError("--resume and --force do not apply with --serve")
    if args.backend != "asyncio":
        raise CLIError("--serve runs on asyncio (the server's WebSocket library is asyncio)")


def _cmd_run_serve(args: argparse.Namespace, spec: PipelineSpec) -> int:
    """``headwater run FILE --serve``: see the module docstring. Exit status: the run's
    outcome, as ``headwater run`` (0 succeeded, 1 failed or cancelled, 130/143 after a
    signal); 1 if the port cannot be listened on."""
    from ..server.config import ServerConfig

    engine = _engine(args, spec.plugins.disable)
    data = spec.model_dump(mode="python", exclude_unset=True, exclude={"tests"})
    # the history of `headwater serve` in this folder (default), or memory: --no-history
    history = {"store": "memory"} if args.history is False else {}
    config = ServerConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": args.port if args.port is not None else 0,
            "pipelines": {spec.name: {"pipeline": data, "description": spec.description}},
            "history": history,
        }
    )
    _, err = _consoles()
    try:
        code: int = anyio.run(_serve_run, args, spec, config, engine, err, backend="asyncio")
    except OSError as exc:
        raise CLIError(
            f"cannot listen on 127.0.0.1:{config.port}: {exc.strerror or exc}", EXIT_FAILED
        ) from None
    return code


def _history_path(config: Any) -> str:
    """Where the run history is written (the ``sqlite`` store's file)."""
    from ..server.history import DEFAULT_PATH

    return str(config.history.params.get("path", DEFAULT_PATH))


class _LocalSubscriber:
    """A transport of the streaming manager that renders a run's messages on the
    terminal: progress bars, status lines, handled errors, then the final frame."""

    def __init__(self, view: _RunView) -> None:
        self.view = view
        self.complete = anyio.Event()
        self.chunks = 0

    async def send(self, frame: bytes) -> None:
        """Render one message of the stream (chunks are only counted)."""
        message = json.loads(frame)
        event = _event_of(message)
        if message.get("type") == "stream_update":
            self.chunks += 1
        elif event is not None:
            self.view.on_event(event)
        if message.get("type") == "stream_complete":
            self.complete.set()

    def stream_closed(self, stream: str, reason: str) -> None:
        """The subscription ended (the stream closed, or the server is stopping)."""
        self.complete.set()


def _event_of(message: dict[str, Any]) -> Event | None:
    """The run event a stream message stands for (None for chunks and replies)."""
    from ..core.events import Complete, ErrorEvent, Progress, Status

    kind = message.get("type")
    if kind == "progress":
        return Progress(
            message["stage"], message["done"], message.get("total"), message.get("message")
        )
    if kind == "status":
        return Status(message["state"], message.get("stage"), message.get("message"))
    if kind == "stream_error":
        error = dict(message.get("error") or {})
        handled = bool(error.pop("handled", False))
        return ErrorEvent(str(error.get("stage") or ""), error, handled)
    if kind == "stream_complete":
        summary = message.get("summary") or {}
        return Complete(message.get("reason", "failed"), summary)
    return None


async def _serve_run(
    args: argparse.Namespace,
    spec: PipelineSpec,
    config: Any,
    engine: Engine,
    err: Console,
) -> int:
    import signal
    import sys

    from rich.text import Text

    from ..server.app import Server
    from ..server.runs import with_stream_sink
    from .runview import _json_summary, _print_summary, _RunView

    secrets = _secrets(args)

    def say(text: str, style: str = "") -> None:
        err.print(Text(secrets.mask(text), style=style), soft_wrap=True)

    live = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    every = args.progress_every if args.progress is None else 0.0
    received: list[int] = []
    stop_serving = anyio.Event()
    async with Server(config, engine=engine) as server:
        resolved, _ = engine.prepare(with_stream_sink(server.pipelines[spec.name].data))
        view = _RunView(err, resolved, live=live, secrets=secrets, every=every)
        local = _LocalSubscriber(view)

        async def subscribe_local(run: Any) -> None:
            await server.manager.register_client(
                run.stream, "cli", local, since=0, slow_consumer="block"
            )

        async def before_start(run: Any) -> None:
            server.history.annotate(run.run_id, origin="run --serve")
            await subscribe_local(run)

        run = await server.start_run(spec.name, {}, stream=args.stream, before_start=before_start)
        base = server.http_url
        say(f"serving on {base} (WebSocket {server.url})", "bold")
        say(f"  dashboard  {base}/runs/{run.run_id}")
        say(f"  stream     {run.stream}")
        say(f"  follow     headwater tail {server.url} {run.stream} --since 0")
        say(f"  events     {base}/api/streams/{run.stream}/events?since=0")
        if server.history.enabled and args.history is not False:
            say(f"  history    {_history_path(config)} (headwater serve here lists the run)")
        view.start(run.handle)

        def first(name: str, signum: int) -> None:
            if run.handle.done:  # --keep-serving after the run: stop the server
                stop_serving.set()
                return
            view.line(
                f"{name}: cancelling the run, cleaning up (send it again to exit now)", "yellow"
            )
            run.handle.cancel("interrupted" if signum == signal.SIGINT else "terminated")

        def again(name: str) -> None:
            view.stop()
            view.line(f"{name} again: exiting without cleanup", "red")

        async with anyio.create_task_group() as tg:
            await tg.start(_on_signals, first, again, received)
            tg.start_soon(view.refresh)
            result: RunResult = await run.handle.wait()
            with anyio.move_on_after(_COMPLETE_GRACE):
                await local.complete.wait()
            view.stop()
            _print_summary(err, result, resolved, verbose=_verbosity(args) > 0, secrets=secrets)
            if args.json:
                _json_summary(result, resolved, secrets)
            if args.keep_serving and not received:
                say(
                    f"the run has ended; still serving on {base} (the dashboard, and the "
                    f"replay of {run.stream}): Ctrl-C to stop",
                    "bold",
                )
                await stop_serving.wait()
            tg.cancel_scope.cancel()
    say("server stopped")
    if result.state == "succeeded":
        return EXIT_OK
    if received:
        return 128 + received[0]
    return EXIT_FAILED
