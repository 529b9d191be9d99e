"""``headwater checkpoints list | show NAME | reset NAME``, and the checkpoint part of
``headwater run`` (its summary line, its errors)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._common import (
    _MAX_OUTPUT_REPR,
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    _consoles,
    _load_spec,
    _prepare,
    _print_json,
)

if TYPE_CHECKING:
    from ..core.pipeline import PipelineSpec
    from ..core.runtime import RunResult


def _checkpoint_line(info: Any) -> str | None:
    """The summary line about checkpoints: resumed or not, what is committed, any note."""
    if not isinstance(info, Mapping) or not info:
        return None
    parts: list[str] = []
    if info.get("resumed"):
        parts.append("resumed")
    seq = info.get("committed_seq")
    if seq is not None:
        items = int(info.get("committed_items") or 0)
        parts.append(f"committed checkpoint {seq} ({items:,} item{'s' if items != 1 else ''})")
    saved = info.get("saved")
    if saved:
        parts.append(f"{int(saved):,} saved by this run")
    if info.get("note"):
        parts.append(str(info["note"]))
    return "checkpoint: " + ", ".join(parts) if parts else None


def _raise_checkpoint_error(result: RunResult) -> None:
    """A run that could not use its checkpoint (corrupt, locked or newer database, changed
    pipeline) is bad input: exit 2 with the message rather than a failed-run summary."""
    from ..core.checkpoints import CheckpointError

    for error in result.errors:
        if isinstance(error, CheckpointError):
            raise CLIError(str(error))


# ---------------------------------------------------------------------------------------
# headwater checkpoints
# ---------------------------------------------------------------------------------------


def _add_checkpoint_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """``headwater checkpoints list | show NAME | reset NAME``."""
    where = argparse.ArgumentParser(add_help=False)
    choice = where.add_mutually_exclusive_group()
    choice.add_argument(
        "--store-path",
        metavar="PATH",
        help="SQLite checkpoint file (default: .headwater/checkpoints.db)",
    )
    choice.add_argument(
        "--pipeline",
        metavar="FILE",
        help="use the checkpoint store of this pipeline file's checkpoint section",
    )
    where.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for a lock held by another process (SQLite file; default 5)",
    )
    parser = commands.add_parser(
        "checkpoints",
        parents=[common],
        help="list, show or reset the checkpoints of resumable pipelines",
        description="Inspect and reset the committed checkpoints that `headwater run "
        "--resume` continues from.",
    )
    sub = parser.add_subparsers(dest="checkpoints_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser(
        "list",
        parents=[common, where],
        help="every pipeline's latest checkpoint",
        description="List every pipeline's latest checkpoint in the store.",
    )
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(func=_cmd_checkpoints_list)
    show = sub.add_parser(
        "show",
        parents=[common, where],
        help="one pipeline's checkpoint: positions, states, fingerprint",
        description="Show the latest checkpoint of one pipeline.",
    )
    show.add_argument(
        "name", metavar="NAME", nargs="?", help="pipeline name (default with --pipeline: its name)"
    )
    show.add_argument("--json", action="store_true", help="print the whole checkpoint as JSON")
    show.set_defaults(func=_cmd_checkpoints_show)
    reset = sub.add_parser(
        "reset",
        parents=[common, where],
        help="forget a pipeline's checkpoint: its next run starts over",
        description="Delete the checkpoint of one pipeline; its next run (even with "
        "--resume) starts from the beginning.",
    )
    reset.add_argument(
        "name", metavar="NAME", nargs="?", help="pipeline name (default with --pipeline: its name)"
    )
    reset.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=_cmd_checkpoints_reset)


class _StoreView:
    """The checkpoint store a ``checkpoints`` command works on."""

    def __init__(self, store: Any, label: str, spec: PipelineSpec | None) -> None:
        self.store = store
        """None when the store's file does not exist (nothing to show, nothing created)."""
        self.label = label
        self.spec = spec

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _checkpoint_store(args: argparse.Namespace) -> _StoreView:
    """Open the store named by ``--store-path`` / ``--pipeline`` (default: the built-in file).

    A missing SQLite file is not created: the view then has no store.
    """
    from pathlib import Path

    from ..core.checkpoints import DEFAULT_PATH, SQLiteCheckpointStore

    if args.pipeline:
        source = argparse.Namespace(**{**vars(args), "file": args.pipeline, "overrides": []})
        spec = _load_spec(source)
        if spec.checkpoint is None:
            raise CLIError(f"pipeline {spec.name!r} in {args.pipeline} has no checkpoint section")
        resolved, _ = _prepare(source, spec)
        stage = resolved.checkpoint_store
        assert stage is not None
        label = f"checkpoint store {spec.checkpoint.store!r} of {args.pipeline}"
        path = getattr(stage.params, "path", None)
        if isinstance(path, str):
            label = f"{path} (checkpoint store of {args.pipeline})"
            if not Path(path).exists():
                return _StoreView(None, label, spec)
        store = stage.component.obj(*(() if stage.params is None else (stage.params,)))
        return _StoreView(store, label, spec)
    path = Path(args.store_path) if args.store_path else DEFAULT_PATH
    if path.is_dir():
        raise CLIError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        return _StoreView(None, str(path), None)
    return _StoreView(SQLiteCheckpointStore(path, timeout=args.timeout), str(path), None)


def _checkpoint_name(args: argparse.Namespace, view: _StoreView) -> str:
    if args.name:
        return str(args.name)
    if view.spec is not None:
        return view.spec.name
    raise CLIError("give the pipeline NAME (or --pipeline FILE to use that pipeline's name)")


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _cmd_checkpoints_list(args: argparse.Namespace) -> int:
    """``headwater checkpoints list``: every pipeline's latest checkpoint."""
    view = _checkpoint_store(args)
    try:
        checkpoints = [] if view.store is None else view.store.list()
    finally:
        view.close()
    if args.json:
        _print_json(
            [
                {
                    "pipeline": c.pipeline,
                    "seq": c.seq,
                    "items": c.items,
                    "completed": c.completed,
                    "fingerprint": c.fingerprint,
                    "created": c.created,
                    "positions": c.positions,
                    "stages": sorted(c.states),
                }
                for c in checkpoints
            ]
        )
        return EXIT_OK
    out, _ = _consoles()
    if not checkpoints:
        missing = " (the file does not exist)" if view.store is None else ""
        out.print(f"no checkpoints in {view.label}{missing}", soft_wrap=True)
        return EXIT_OK
    from rich.table import Table

    table = Table(box=None, pad_edge=False, padding=(0, 2), show_edge=False)
    table.add_column("pipeline", overflow="fold")
    for column in ("seq", "items", "state", "saved", "fingerprint"):
        table.add_column(
            column, justify="right" if column in ("seq", "items") else "left", no_wrap=True
        )
    for c in checkpoints:
        table.add_row(
            c.pipeline,
            str(c.seq),
            f"{c.items:,}",
            "completed" if c.completed else "resumable",
            _when(c.created)[:16],
            c.fingerprint,
        )
    out.print(f"checkpoints in {view.label}:", soft_wrap=True)
    out.print(table)
    return EXIT_OK


def _cmd_checkpoints_show(args: argparse.Namespace) -> int:
    """``headwater checkpoints show NAME``: one checkpoint in full."""
    import dataclasses
    import json

    view = _checkpoint_store(args)
    try:
        name = _checkpoint_name(args, view)
        checkpoint = None if view.store is None else view.store.load(name)
        known = [] if view.store is None or checkpoint else [c.pipeline for c in view.store.list()]
    finally:
        view.close()
    if checkpoint is None:
        hint = f"; checkpoints exist for {', '.join(known)}" if known else ""
        raise CLIError(f"no checkpoint of pipeline {name!r} in {view.label}{hint}")
    if args.json:
        _print_json(dataclasses.asdict(checkpoint))
        return EXIT_OK
    out, _ = _consoles()
    fingerprint = checkpoint.fingerprint
    if view.spec is not None:
        same = view.spec.fingerprint() == fingerprint
        fingerprint += (
            f" (matches {args.pipeline})"
            if same
            else f" (differs from {args.pipeline}: resuming it needs --force)"
        )
    lines = [
        f"pipeline:    {checkpoint.pipeline}",
        f"checkpoint:  {checkpoint.seq} ({'completed' if checkpoint.completed else 'resumable'})",
        f"items:       {checkpoint.items:,}",
        f"saved:       {_when(checkpoint.created)}",
        f"fingerprint: {fingerprint}",
        f"store:       {view.label}",
        "positions:",
    ]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in checkpoint.positions.items()] or ["  (none)"]
    lines.append("states:")
    for stage, state in checkpoint.states.items():
        text = json.dumps(state)
        if len(text) > _MAX_OUTPUT_REPR:
            text = f"{text[:_MAX_OUTPUT_REPR]}... ({len(text):,} characters)"
        lines.append(f"  {stage}: {text}")
    if not checkpoint.states:
        lines.append("  (none)")
    from rich.text import Text

    for line in lines:
        out.print(Text(line), soft_wrap=True)
    return EXIT_OK


def _cmd_checkpoints_reset(args: argparse.Namespace) -> int:
    """``headwater checkpoints reset NAME``: forget a checkpoint (asks unless ``--yes``)."""
    view = _checkpoint_store(args)
    try:
        name = _checkpoint_name(args, view)
        checkpoint = None if view.store is None else view.store.load(name)
        if checkpoint is None:
            print(f"no checkpoint of pipeline {name!r} in {view.label}: nothing to reset")
            return EXIT_OK
        what = f"checkpoint {checkpoint.seq} of pipeline {name!r} ({checkpoint.items:,} items)"
        if not args.yes:
            if not sys.stdin.isatty():
                raise CLIError(f"reset {what} in {view.label}? pass --yes to confirm")
            answer = input(f"reset {what} in {view.label}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not reset")
                return EXIT_FAILED
        view.store.reset(name)
    finally:
        view.close()
    print(f"reset {what}: its next run starts from the beginning")
    return EXIT_OK
