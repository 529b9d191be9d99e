"""``headwater worker``: one member of a consumer group (Redis Streams, JetStream).

The only module of the command that reaches into the brokers' plugin internals
(the consumer name comes from the broker plugins; draining goes through the run's
handle).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ._common import (
    _EPILOG,
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    _add_overrides,
    _consoles,
    _load_spec,
    _prepare,
    _print_json,
    _verbosity,
)
from .run import _in_order, _print_summary, _RunView, _stage_order

if TYPE_CHECKING:
    from ..core.pipeline import PipelineSpec
    from ..core.plugins import PluginManager
    from ..core.runtime import RunResult

_WORKER_CHECKPOINT_SECONDS = 1.0
"""Commit cadence of a worker whose pipeline has no ``checkpoint`` section: upstream
acknowledgements lag the sinks by about this much (and a killed worker's redelivered
messages are about this many seconds' worth)."""


def _add_worker_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``worker`` sub-command."""
    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run a pipeline as one member of a consumer group (Redis Streams, JetStream)",
        description="Run a pipeline whose source reads a shared stream with a consumer group\n"
        "(redis.stream) or a durable consumer (nats.jetstream), as one member: start\n"
        "as many workers as you like, on one or many machines, and they share the\n"
        "stream. Messages are acknowledged after every sink committed them. SIGTERM or\n"
        "SIGINT drains: no new reads, what is in flight is written, committed and\n"
        "acknowledged, exit 0. A second signal exits at once (unacknowledged messages\n"
        "are redelivered to the other members). Without a checkpoint section the\n"
        "pipeline gets `checkpoint: {store: memory, every_seconds: 1}`.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("file", metavar="FILE", help="pipeline YAML file")
    worker.add_argument(
        "--consumer",
        metavar="NAME",
        help="this member's name in the group (sets HEADWATER_CONSUMER; default: "
        "HEADWATER_CONSUMER or HOSTNAME-PID)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest a drain may take before the run is cancelled (default 30)",
    )
    _add_overrides(worker)
    worker.add_argument(
        "--json", action="store_true", help="print the run summary as JSON on stdout at the end"
    )
    worker.set_defaults(func=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    """``headwater worker``: run one member of a consumer group until drained."""
    import anyio

    from ..core.pipeline import CheckpointSpec

    if args.drain_timeout <= 0:
        raise CLIError("--drain-timeout must be > 0")
    if args.consumer is not None:
        if not args.consumer.strip():
            raise CLIError("--consumer needs a non-empty NAME")
        os.environ["HEADWATER_CONSUMER"] = args.consumer.strip()
    spec = _load_spec(args)
    if spec.checkpoint is None:
        checkpoint = CheckpointSpec(store="memory", every_seconds=_WORKER_CHECKPOINT_SECONDS)
        spec = spec.model_copy(update={"checkpoint": checkpoint})
    resolved, manager = _prepare(args, spec)
    _, err = _consoles()
    view = _RunView(err, resolved, live=False)
    result, drained = anyio.run(_work, spec, manager, view, args.drain_timeout, backend="asyncio")
    _print_summary(err, result, resolved, verbose=_verbosity(args) > 0)
    if args.json:
        summary = dict(result.summary)
        summary["stages"] = _in_order(summary.get("stages") or {}, _stage_order(resolved))
        summary["drained"] = drained
        _print_json(summary)
    return EXIT_OK if result.state == "succeeded" else EXIT_FAILED


async def _work(
    spec: PipelineSpec, manager: PluginManager, view: _RunView, drain_timeout: float
) -> tuple[RunResult, bool]:
    """Run the worker's pipeline; the first signal drains it, the second exits at once."""
    import signal

    import anyio

    from ..builtin_plugins._brokers import default_consumer
    from ..core.api import open_run

    drained = False
    async with open_run(spec, plugins=manager) as handle:
        consumer = default_consumer()
        view.line(f"worker {consumer}: pipeline {spec.name!r} (run {handle.run_id})", "bold")

        async def on_signals() -> None:
            nonlocal drained
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if drained:
                        view.line(f"{name} again: exiting without draining", "red")
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(128 + int(signum))
                    drained = True
                    view.line(f"{name}: draining (no new reads; committing what is in flight)")
                    handle.drain()
                    tg.start_soon(deadline)

        async def deadline() -> None:
            await anyio.sleep(drain_timeout)
            view.line(f"drain took longer than {drain_timeout:g}s: cancelling", "red")
            handle.cancel("drain timeout")

        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signals)
            async for event in handle.events():
                view.on_event(event)
            tg.cancel_scope.cancel()
        result = await handle.wait()
    return result, drained
