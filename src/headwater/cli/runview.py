"""The view of a run on stderr (``run``, ``run --serve``, ``worker``) and its summary.

:class:`_RunView` measures progress where it matters, at the sinks: the run line counts
the items *delivered* (written by the sinks), with their rate, and the percentage and an
ETA when the total is known (the sources report it and no step changes the number of
items). What the sources have read is shown beside it, as ``read N (+M ahead)``: a
source reads ahead of delivery by the buffers between stages, so its own progress is no
measure of the run's. On a terminal the lines are live bars; elsewhere a plain line is
printed every ``every`` seconds. :func:`_print_summary` prints the outcome: per-stage
counts, then the sinks as a table (sink, items, where).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._common import _MAX_OUTPUT_REPR, _describe_value, _json_safe, _num, _print_json, _rate

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from ..core.events import Complete, ErrorEvent, Event
    from ..core.events import Progress as ProgressEvent
    from ..core.pipeline import ResolvedPipeline
    from ..core.runtime import RunHandle, RunResult
    from ..core.secrets import Secrets

_MAX_ERROR_LINES = 5
"""Handled errors printed per stage while a run goes on; the rest are only counted."""

_MAX_OUTPUT_JSON = 10_000
"""Longest sink output (JSON characters) included verbatim in ``run --json``."""

_RATE_WINDOW = 5.0
"""Seconds of delivery the rate (and so the ETA) is measured over."""

_WHERE_KEYS = ("path", "table", "stream", "url", "topic", "subject", "exchange", "queue", "key")
"""Keys of a sink's output that say where its items went, in the order shown."""


def _stage_order(resolved: ResolvedPipeline) -> list[str]:
    names = [s.stage for s in resolved.sources.values()]
    names += [s.stage for s in resolved.steps]
    names += [s.stage for s in resolved.sinks]
    if resolved.dead_letter is not None:
        names.append(resolved.dead_letter.stage)
    return names


def _sink_keys(resolved: ResolvedPipeline) -> list[str]:
    return [s.stage.removeprefix("sinks.") for s in resolved.sinks]


def _in_order(mapping: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``mapping`` with the keys listed in ``order`` first, in that order."""
    ordered = {key: mapping[key] for key in order if key in mapping}
    ordered.update((key, value) for key, value in mapping.items() if key not in ordered)
    return ordered


def _output_for_json(value: Any) -> Any:
    import json

    safe = _json_safe(value)
    if len(json.dumps(safe)) <= _MAX_OUTPUT_JSON:
        return safe
    return f"<{_describe_value(value)}>"


def _json_summary(result: RunResult, resolved: ResolvedPipeline, secrets: Secrets | None) -> None:
    """The run's summary as JSON on stdout (``run --json``)."""
    outputs = _in_order(result.outputs, _sink_keys(resolved))
    summary = dict(result.summary)
    summary["stages"] = _in_order(summary.get("stages") or {}, _stage_order(resolved))
    summary["outputs"] = {k: _output_for_json(v) for k, v in outputs.items()}
    _print_json(summary, secrets)


_PASS_THROUGH = frozenset({"throttle"})
"""Stream transformers (by name) known to pass every item on once, as map steps do."""


def _one_to_one(resolved: ResolvedPipeline) -> bool:
    """True when every item read reaches every sink once: only steps that keep the number
    of items (map steps, :data:`_PASS_THROUGH`), no routing (``where``) to the sinks."""
    stages = [*resolved.steps, *(s for b in (resolved.branches or {}).values() for s in b)]
    for stage in stages:
        component = stage.component
        if component.transformer_kind != "map" and component.name not in _PASS_THROUGH:
            return False
    return all(s.where is None for s in resolved.spec.sinks)


class _RunView:
    """Shows a run on stderr: live bars on a terminal, a plain line every ``every``
    seconds otherwise (0: none). See the module docstring for what is measured.

    Stage status messages and the first handled errors of each stage are printed above
    the bars; stages other than the sources that report progress get a bar of their own.
    """

    def __init__(
        self,
        console: Console | None,
        resolved: ResolvedPipeline,
        *,
        live: bool,
        secrets: Secrets | None = None,
        every: float = 0.0,
    ) -> None:
        self.console = console
        """None: stderr is not a terminal and lines are written to it as plain text,
        without importing rich (the first chunk of a piped ``headwater run`` does not
        wait for it). Live bars need a console."""
        if live and console is None:
            raise ValueError("live progress needs a console")
        self.secrets = secrets
        """Masked in every line and message shown."""
        self.resolved = resolved
        self.live = live
        self.every = every
        self.handle: RunHandle | None = None
        self._progress: RichProgress | None = None
        self._run_task: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}
        self._errors: dict[str, int] = {}
        self._read: dict[str, tuple[float, float | None]] = {}
        self._source_notes: dict[str, str] = {}
        self._policies = {s.stage: s.on_error for s in [*resolved.steps, *resolved.sinks]}
        self._sinks = [s.stage for s in resolved.sinks]
        self._one_to_one = _one_to_one(resolved)
        self._started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque()
        self._printed_at = self._started
        self._last_plain = ""
        self._echo: Callable[[], None] | None = None

    # -- output helpers ---------------------------------------------------------------

    def line(self, text: str, style: str | None = None) -> None:
        """Print one line above the live display (or plainly)."""
        if self.console is None:
            sys.stderr.write(self._masked(text) + "\n")
            sys.stderr.flush()
            return
        from rich.text import Text

        self.console.print(Text(self._masked(text), style=style or ""), soft_wrap=True)

    def _masked(self, text: str) -> str:
        return self.secrets.mask(text) if self.secrets is not None else text

    # -- lifecycle --------------------------------------------------------------------

    def start(self, handle: RunHandle) -> None:
        """Announce the run and start the live display."""
        self.handle = handle
        spec = self.resolved.spec
        sources = ", ".join(spec.source_order())
        compose = f" {spec.compose.mode}d" if spec.compose and len(spec.sources) > 1 else ""
        sinks = ", ".join(_sink_keys(self.resolved))
        self.line(
            f"running pipeline {spec.name!r} (run {handle.run_id}): sources {sources}{compose}"
            f" -> {len(spec.steps)} step{'s' if len(spec.steps) != 1 else ''} -> {sinks}",
            "bold",
        )
        self._started = self._printed_at = time.monotonic()
        if self.live and self.console is not None:
            self._progress = _make_progress(self.console)
            self._run_task = self._progress.add_task(spec.name, total=None, message="")
            self._echo = _quiet_control_echo()
            self._progress.start()

    def stop(self) -> None:
        """Stop the live display, leaving its last frame (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._echo is not None:
            self._echo()
            self._echo = None

    # -- figures ----------------------------------------------------------------------

    def delivered(self) -> int:
        """Items written by the sinks so far (the slowest sink's count)."""
        if self.handle is None or not self._sinks:
            return 0
        counts = []
        for stage in self._sinks:
            stats = self.handle.stats.get(stage)
            counts.append(int(stats.items_out) if stats is not None else 0)
        return min(counts) if self._one_to_one else max(counts)

    def read(self) -> tuple[int, int | None]:
        """Items the sources have read, and their total when every source knows it."""
        if self.handle is None:
            return 0, None
        done = 0
        totals: list[float | None] = []
        for stage in self.resolved.sources.values():
            reported = self._read.get(stage.stage)
            if reported is not None:
                done += int(reported[0])
                totals.append(reported[1])
            else:
                stats = self.handle.stats.get(stage.stage)
                done += int(stats.items_out) if stats is not None else 0
                totals.append(None)
        total = int(sum(t for t in totals if t is not None)) if None not in totals else None
        return done, total

    def _rate(self, delivered: int) -> float | None:
        """Items delivered per second over the last :data:`_RATE_WINDOW` seconds."""
        now = time.monotonic()
        samples = self._samples
        samples.append((now, delivered))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()
        then, before = samples[0]
        if now - then < 0.2:
            elapsed = now - self._started
            return delivered / elapsed if elapsed > 0 else None
        return (delivered - before) / (now - then)

    def figures(self) -> dict[str, Any]:
        """What the run line shows: delivered, total (None: unknown), rate, eta, read."""
        delivered = self.delivered()
        read, read_total = self.read()
        total = read_total if self._one_to_one else None
        rate = self._rate(delivered)
        eta = None
        if total is not None and rate and rate > 0 and delivered < total:
            eta = (total - delivered) / rate
        return {
            "delivered": delivered,
            "total": total,
            "rate": rate,
            "eta": eta,
            "read": read,
            "read_total": read_total,
        }

    def _message(self, f: dict[str, Any]) -> str:
        parts = [f"{_rate(f['rate'])} items/s delivered"]
        if f["eta"] is not None:
            parts.append(f"ETA {_duration(f['eta'])}")
        ahead = f["read"] - f["delivered"]
        read = f"read {f['read']:,}"
        if f["read_total"] is not None and f["total"] is None:
            read += f"/{f['read_total']:,}"
        if ahead > 0 and self._one_to_one:
            read += f" (+{ahead:,} ahead)"
        parts.append(read)
        parts.extend(f"{stage}: {note}" for stage, note in self._source_notes.items())
        return " · ".join(parts)

    def plain_line(self) -> str:
        """The progress line printed when stderr is not a terminal."""
        f = self.figures()
        done = f"{f['delivered']:,}"
        if f["total"] is not None:
            share = f["delivered"] / f["total"] if f["total"] else 1.0
            done += f"/{f['total']:,} ({share:.0%})"
        elapsed = _duration(time.monotonic() - self._started)
        return f"progress: {done} delivered in {elapsed} · {self._message(f)}"

    def tick(self) -> None:
        """Refresh the run line (live), or print the plain line when it is due."""
        if self._progress is not None and self._run_task is not None:
            f = self.figures()
            self._progress.update(
                self._run_task,
                completed=f["delivered"],
                total=f["total"],
                message=self._message(f),
            )
        elif not self.live and self.every > 0 and self.handle is not None:
            now = time.monotonic()
            if now - self._printed_at >= self.every:
                self._printed_at = now
                text = self.plain_line()
                if text != self._last_plain:
                    self._last_plain = text
                    self.line(text)

    async def refresh(self) -> None:
        """Keep the run line current until cancelled."""
        import anyio

        while True:
            self.tick()
            await anyio.sleep(0.1)

    # -- events -----------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Render one control event."""
        from ..core.events import Complete, ErrorEvent, Progress, Status

        if isinstance(event, Progress):
            self._on_progress(event)
        elif isinstance(event, Status):
            if event.stage is not None and event.message:
                self.line(f"  {event.stage}: {event.message}", "dim")
        elif isinstance(event, ErrorEvent):
            if event.handled:
                self._on_handled_error(event)
        elif isinstance(event, Complete):
            self._on_complete(event)

    def _on_progress(self, event: ProgressEvent) -> None:
        if event.stage.startswith("sources."):
            self._read[event.stage] = (event.done, event.total)
            if event.message:
                self._source_notes[event.stage] = self._masked(event.message)
            return
        if self._progress is None:
            return
        if event.message:
            event = replace(event, message=self._masked(event.message))
        task = self._tasks.get(event.stage)
        if task is None:
            self._tasks[event.stage] = self._progress.add_task(
                event.stage, total=event.total, message=event.message or ""
            )
            self._progress.update(self._tasks[event.stage], completed=event.done)
        elif event.message is None:
            self._progress.update(task, completed=event.done, total=event.total)
        else:
            self._progress.update(
                task, completed=event.done, total=event.total, message=event.message
            )

    def _on_handled_error(self, event: ErrorEvent) -> None:
        count = self._errors[event.stage] = self._errors.get(event.stage, 0) + 1
        if count > _MAX_ERROR_LINES:
            return
        err = event.error
        at = f" at item {err['position']}" if err.get("position") is not None else ""
        policy = self._policies.get(event.stage, "skip")
        more = (
            f" (further errors of {event.stage} are only counted)"
            if count == _MAX_ERROR_LINES
            else ""
        )
        self.line(
            f"  warning: {event.stage}{at}: {err.get('error')}: {err.get('message')} "
            f"[on_error: {policy}]{more}",
            "yellow",
        )

    def _on_complete(self, event: Complete) -> None:
        progress = self._progress
        if progress is None:
            return
        self.tick()
        if event.state == "succeeded":
            # Complete the bars whose total was unknown, still showing only their count.
            for task in progress.tasks:
                if task.total is None:
                    progress.update(task.id, total=task.completed, unknown_total=True)
        for task in progress.tasks:
            progress.stop_task(task.id)
        self.stop()


def _quiet_control_echo() -> Callable[[], None] | None:
    """Stop the terminal from echoing ``^C`` while the bars are live; returns the undo.

    The echo lands at the cursor, at the end of the last bar: a bar as wide as the
    terminal then wraps, the display loses count of its lines and the next redraw
    leaves a copy of the frame behind. None when stdin is not a POSIX terminal.
    """
    try:
        import termios
    except ImportError:  # Windows: no echo of control characters to stop
        return None
    if not sys.stdin.isatty():
        return None
    fd = sys.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
        quiet = list(saved)
        quiet[3] = quiet[3] & ~termios.ECHOCTL
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (termios.error, OSError, AttributeError):
        return None

    def restore() -> None:
        import contextlib

        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSANOW, saved)

    return restore


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _make_progress(console: Console) -> RichProgress:
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    def total_known(task: Task) -> bool:
        return task.total is not None and not task.fields.get("unknown_total")

    class CountColumn(ProgressColumn):
        """``done/total``, or just ``done`` when the total is unknown."""

        def render(self, task: Task) -> Text:
            if not total_known(task):
                return Text(_num(task.completed), style="progress.download")
            assert task.total is not None
            return Text(f"{_num(task.completed)}/{_num(task.total)}", style="progress.download")

    class PercentColumn(ProgressColumn):
        """The percentage done, when the total is known."""

        def render(self, task: Task) -> Text:
            if not total_known(task):
                return Text("")
            return Text(f"{task.percentage:>3.0f}%", style="progress.percentage")

    return Progress(
        SpinnerColumn(finished_text=" "),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        CountColumn(),
        PercentColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}", style="dim", markup=False),
        console=console,
        transient=False,
        # Lines a sink prints to a terminal stdout appear above the bars; a redirected
        # stdout is never touched.
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    )


def _where(output: Any) -> str:
    """Where a sink's items went, from its output: ``path=out.jsonl``, ``in memory``."""
    if isinstance(output, Mapping):
        found = [f"{k}={output[k]}" for k in _WHERE_KEYS if output.get(k) not in (None, "")]
        if found:
            return " ".join(found)
        shown = repr(dict(output))
        return shown if len(shown) <= _MAX_OUTPUT_REPR else _describe_value(output)
    if isinstance(output, list | tuple):
        return "kept in memory (run output)"
    if output is None or isinstance(output, bool | int | float):
        return ""
    shown = repr(output)
    return shown if len(shown) <= _MAX_OUTPUT_REPR else _describe_value(output)


def _print_summary(
    console: Console,
    result: RunResult,
    resolved: ResolvedPipeline,
    *,
    verbose: bool = False,
    secrets: Secrets | None = None,
) -> None:
    """The end of a run on stderr: outcome, per-stage counts, the sinks (items and where
    they went), errors; every text masked with ``secrets``, when given."""
    from rich.table import Table
    from rich.text import Text as RichText

    from .checkpoints import _checkpoint_line

    def Text(text: str, style: str = "") -> RichText:  # rich's Text, masked
        return RichText(secrets.mask(text) if secrets is not None else text, style=style)

    summary = result.summary
    items = int(summary.get("items_in") or 0)
    elapsed = float(summary.get("elapsed_seconds") or 0.0)
    rate = _rate(summary.get("items_per_second"))
    name = result.pipeline
    counts = f"{items:,} item{'s' if items != 1 else ''} in {elapsed:.2f}s ({rate} items/s)"
    if result.state == "succeeded":
        head = Text(f"pipeline {name!r} succeeded: {counts}", style="bold green")
    elif result.state == "cancelled":
        reason = summary.get("cancel_reason") or "cancelled"
        head = Text(f"pipeline {name!r} cancelled ({reason}): {counts}", style="bold yellow")
    else:
        head = Text(f"pipeline {name!r} failed: {counts}", style="bold red")
    console.print(head, soft_wrap=True)
    checkpoint = _checkpoint_line(summary.get("checkpoint"))
    if checkpoint:
        console.print(Text(checkpoint), soft_wrap=True)

    stages: dict[str, dict[str, int]] = _in_order(
        summary.get("stages") or {}, _stage_order(resolved)
    )
    if stages:
        table = Table(box=None, pad_edge=False, padding=(0, 2), show_edge=False)
        table.add_column("stage", no_wrap=True)
        for col in ("in", "out", "errors", "skipped"):
            table.add_column(col, justify="right")
        for stage, st in stages.items():
            table.add_row(
                Text(stage),
                "" if stage.startswith("sources.") else f"{st.get('items_in', 0):,}",
                f"{st.get('items_out', 0):,}",
                Text(f"{st.get('errors', 0):,}", style="red" if st.get("errors") else ""),
                f"{st.get('skipped', 0):,}",
            )
        console.print(table)

    outputs = _in_order(result.outputs, _sink_keys(resolved))
    if outputs:
        table = Table(box=None, pad_edge=False, padding=(0, 2), show_edge=False)
        table.add_column("sink", no_wrap=True)
        table.add_column("items", justify="right")
        table.add_column("where", overflow="fold")
        for sink, output in outputs.items():
            st = stages.get(f"sinks.{sink}") or stages.get(sink) or {}
            table.add_row(Text(sink), f"{st.get('items_out', 0):,}", Text(_where(output)))
        console.print(table)
    for error in result.errors:
        console.print(Text(f"error: {error}", style="red"), soft_wrap=True)
        cause = getattr(error, "cause", None)
        if verbose and isinstance(cause, BaseException):
            import traceback

            console.print(Text("".join(traceback.format_exception(cause)).rstrip(), style="dim"))
