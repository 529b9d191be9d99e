"""``headwater worker``: one member of a consumer group (Redis Streams, JetStream).

Draining goes through the run's handle; the consumer name reaches the broker sources
through ``HEADWATER_CONSUMER`` (without one, each source leases ``HOSTNAME-SLOT`` in its
broker: :mod:`headwater.builtin_plugins._slots`); readiness is read from the broker connections the
sources and sinks show in the engine's metrics (``brokers``); an event-loop lag
monitor reports blocking code (:class:`~headwater.core.loop_lag.LagMonitor`).
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
    _port,
    _prepare,
    _print_json,
    _secrets,
    _verbosity,
)
from .runview import _in_order, _print_summary, _RunView, _stage_order

if TYPE_CHECKING:
    from ..core.pipeline import PipelineSpec
    from ..core.plugins import PluginManager
    from ..core.runtime import RunHandle, RunResult
    from .health import HealthServer

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
        "HEADWATER_CONSUMER, else HOSTNAME-SLOT leased in the broker, a Redis key or a "
        "JetStream KV entry with a TTL: the lowest slot no live worker of this host holds)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest a drain may take before the run is cancelled (default 30)",
    )
    ops = worker.add_argument_group("operations (see docs/scaling-out.md)")
    ops.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /healthz, /readyz and /metrics (Prometheus) on this port (0: any free "
        "port; the URL is printed on stderr)",
    )
    ops.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of --metrics-port (default 127.0.0.1; 0.0.0.0 to be scraped from "
        "other machines)",
    )
    ops.add_argument(
        "--lag-threshold",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="warn, with the blocking code's stack, when the event loop is blocked this "
        "long (default 0.5)",
    )
    ops.add_argument(
        "--stall-limit",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="/healthz answers 503 while the event loop has been blocked this long (default 30)",
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
    from .logs import log_format

    if args.drain_timeout <= 0:
        raise CLIError("--drain-timeout must be > 0")
    if args.lag_threshold <= 0 or args.stall_limit <= 0:
        raise CLIError("--lag-threshold and --stall-limit must be > 0")
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
    logged = log_format(args) == "json"
    secrets = _secrets(args)
    view_type = _LoggedView if logged else _RunView
    view = view_type(err, resolved, live=False, secrets=secrets)
    result, drained = anyio.run(_work, spec, manager, view, args, backend="asyncio")
    if logged:
        assert isinstance(view, _LoggedView)
        view.summary(result)
    else:
        _print_summary(err, result, resolved, verbose=_verbosity(args) > 0, secrets=secrets)
    if args.json:
        summary = dict(result.summary)
        summary["stages"] = _in_order(summary.get("stages") or {}, _stage_order(resolved))
        summary["drained"] = drained
        _print_json(summary, secrets)
    return EXIT_OK if result.state == "succeeded" else EXIT_FAILED


class _LoggedView(_RunView):
    """With ``--log-format json``: the worker's lines are log records of its run."""

    run_id: str | None = None

    def line(self, text: str, style: str | None = None) -> None:
        """Log ``text`` (a warning when shown in red, else info)."""
        import logging

        level = logging.WARNING if style == "red" else logging.INFO
        extra = {"pipeline": self.resolved.spec.name, "run_id": self.run_id}
        logging.getLogger("headwater.worker").log(level, "%s", text, extra=extra)

    def summary(self, result: RunResult) -> None:
        """The end of the run as log records: outcome, items, then each error."""
        items = int(result.summary.get("items_in") or 0)
        self.line(f"pipeline {result.pipeline!r} {result.state}: {items:,} items")
        for error in result.errors:
            self.line(f"error: {error}", "red")


def _readiness(metrics: Any, handle: RunHandle | None) -> tuple[bool, str]:
    """Ready once the run's broker source (and every broker sink) is connected."""
    if handle is None:
        return False, "starting"
    if handle.done:
        return False, "the run has ended"
    members = [
        m
        for m in metrics.snapshot().get("brokers") or ()
        if str(m.get("id", "")).startswith(f"{handle.run_id}/")
    ]
    if not any(m.get("role") == "source" for m in members):
        return False, "the source has not connected yet"
    down = [m for m in members if not m.get("connected")]
    if down:
        names = ", ".join(f"{m.get('component')} ({m.get('address')})" for m in down)
        return False, f"disconnected: {names}"
    return True, "ready"


def _health_server(args: argparse.Namespace, metrics: Any, state: dict[str, Any]) -> HealthServer:
    from ..core.metrics import exposition, prometheus_registry
    from .health import HealthServer

    registry: list[Any] = []

    def live() -> tuple[bool, str]:
        monitor = state.get("monitor")
        stalled = monitor.stalled_for() if monitor is not None else 0.0
        if stalled >= args.stall_limit:
            return False, f"event loop blocked for {stalled:.1f}s"
        return True, "alive"

    def scrape(accept: str | None) -> tuple[bytes, str]:
        if not registry:
            registry.append(prometheus_registry(metrics.snapshot))
        return exposition(accept, registry[0])

    try:
        return HealthServer(
            args.metrics_host,
            args.metrics_port,
            live=live,
            ready=lambda: _readiness(metrics, state.get("handle")),
            metrics=scrape,
        )
    except OSError as exc:
        raise CLIError(
            f"cannot serve --metrics-port on {args.metrics_host}:{args.metrics_port}: "
            f"{exc.strerror or exc}",
            EXIT_FAILED,
        ) from None


async def _work(
    spec: PipelineSpec, manager: PluginManager, view: _RunView, args: argparse.Namespace
) -> tuple[RunResult, bool]:
    """Run the worker's pipeline; the first signal drains it, the second exits at once."""
    import signal

    import anyio

    from ..core.api import open_run
    from ..core.engine import default_engine
    from ..core.loop_lag import LagMonitor

    drain_timeout: float = args.drain_timeout
    metrics = default_engine().metrics
    state: dict[str, Any] = {}
    health = _health_server(args, metrics, state) if args.metrics_port is not None else None
    if health is not None:
        health.start()
        view.line(f"health and metrics at {health.url} (/healthz, /readyz, /metrics)")
    drained = False
    try:
        monitor = LagMonitor(threshold=args.lag_threshold, metrics=metrics)
        state["monitor"] = monitor
        async with monitor, open_run(spec, plugins=manager) as handle:
            state["handle"] = handle
            if isinstance(view, _LoggedView):
                view.run_id = handle.run_id
            consumer = os.environ.get("HEADWATER_CONSUMER") or "HOSTNAME-SLOT (leased)"
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
    finally:
        if health is not None:
            health.stop()
    return result, drained
