"""What every ``headwater`` command shares.

Exit codes and :class:`CLIError`; the global options and ``--set`` overrides; the one
place that builds the plugin manager of a command (:func:`_plugin_manager`) and loads and
resolves a pipeline file; the rich consoles, numbers, JSON output and error messages; the
logging set-up; the SIGINT/SIGTERM watcher of runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from rich.console import Console

    from ..core.engine import Engine
    from ..core.pipeline import PipelineSpec, ResolvedPipeline
    from ..core.plugins import PluginManager
    from ..core.policy import SandboxPolicy
    from ..core.secrets import Secrets

EXIT_OK = 0
"""The command did what was asked (the pipeline succeeded)."""

EXIT_FAILED = 1
"""The pipeline failed, was cancelled or timed out; or an unexpected error."""

EXIT_USAGE = 2
"""Bad input: missing file, invalid YAML, validation errors, unknown component."""

EXIT_SIGINT = 130
"""The run was interrupted by SIGINT (Ctrl-C): 128 + 2."""

EXIT_SIGTERM = 143
"""The run was stopped by SIGTERM: 128 + 15."""

KINDS = ("action", "transformer", "sink", "exporter")
"""The values of ``ComponentKind``, spelled out so that ``--help`` imports no core module."""

_MAX_OUTPUT_REPR = 160
"""Longest sink output shown verbatim in the human summary."""

_EPILOG = """\
exit codes:
  0    success
  1    the pipeline failed, was cancelled or timed out
  2    bad input: missing file, invalid YAML or pipeline, unknown component,
       a plugin that failed to load with --strict-plugins
  130  interrupted (SIGINT, Ctrl-C); 143 on SIGTERM

environment:
  HEADWATER_DISABLE_PLUGINS=a,b   plugins (or distributions) not to load
  HEADWATER_STRICT_PLUGINS=1      same as --strict-plugins
  HEADWATER_ROOTS=dir1:dir2       folders the file tools may use (default: the working
                                  directory); see the Security page for the others
"""


class CLIError(Exception):
    """A user-facing error: printed as one paragraph on stderr, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------
# Options shared by the commands
# ---------------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, *, suffix: str = "") -> None:
    """Options accepted before the command (``suffix=""``) and after it (``"_sub"``).

    argparse gives every sub-command a fresh namespace that overwrites the parent's, so
    the copies after the command use their own destinations and are merged afterwards.
    """
    sub = bool(suffix)
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--disable-plugin",
        dest=f"disable{suffix}",
        action="append",
        metavar="NAME",
        default=argparse.SUPPRESS if sub else [],
        help="do not load this plugin or distribution (repeatable)",
    )
    group.add_argument(
        "-p",
        dest=f"plugin_opts{suffix}",
        action="append",
        metavar="no:NAME",
        default=argparse.SUPPRESS if sub else [],
        help="pytest-style spelling of --disable-plugin NAME",
    )
    group.add_argument(
        "--strict-plugins",
        dest=f"strict{suffix}",
        action="store_true",
        default=argparse.SUPPRESS if sub else False,
        help="fail when any plugin fails to load (default: report it and go on)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest=f"verbose{suffix}",
        action="count",
        default=argparse.SUPPRESS if sub else 0,
        help="log more (-vv for debug); show tracebacks of unexpected errors",
    )


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the pipeline file, e.g. sources.app.params.path=x.log or "
        "steps.0.params.size=10 (also steps[0].params.size=10, quoted for the shell); VALUE "
        "is read as YAML: 10 is a number, '10' a string, [a, b] a list, an empty VALUE is "
        "null; repeatable",
    )


def _add_sandbox_options(parser: argparse.ArgumentParser) -> None:
    """``--root DIR`` (repeatable): the folders the file tools may read and write."""
    parser.add_argument(
        "--root",
        dest="roots",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder the file tools may read and write (repeatable; replaces "
        "HEADWATER_ROOTS; default: the working directory)",
    )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {port}")
    return port


def _merged(args: argparse.Namespace, name: str, empty: Any) -> Any:
    before = getattr(args, name, empty)
    after = getattr(args, f"{name}_sub", empty)
    return before + after


def _disabled_plugins(args: argparse.Namespace) -> list[str]:
    names = list(_merged(args, "disable", []))
    for opt in _merged(args, "plugin_opts", []):
        if not opt.startswith("no:") or not opt[3:].strip():
            raise CLIError(f"-p expects no:NAME (to disable the plugin NAME), got {opt!r}")
        names.append(opt[3:].strip())
    return names


def _verbosity(args: argparse.Namespace) -> int:
    return int(_merged(args, "verbose", 0))


def _strict(args: argparse.Namespace) -> bool:
    """``--strict-plugins`` given, or ``HEADWATER_STRICT_PLUGINS`` set to a true value."""
    if getattr(args, "strict", False) or getattr(args, "strict_sub", False):
        return True
    value = os.environ.get("HEADWATER_STRICT_PLUGINS", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def parse_overrides(pairs: Iterable[str], *, option: str = "--set") -> dict[str, Any]:
    """Parse ``--set KEY=VALUE`` options (or those of ``option``) into ``{KEY: value}``.

    VALUE is read as a YAML scalar (``10`` is an int, ``true`` a bool, ``'10'`` a string,
    an empty VALUE is null). Bracketed flow collections (``[a, b]``, ``{k: v}``) become
    lists and mappings; any other text, including text YAML would read as a mapping such
    as ``ERROR: (.*)``, stays the literal string. VALUE is read by the loader of pipeline
    files, within its limits (size, nesting, aliases, integers), and never substituted.
    """
    from ..core.yamlfile import YamlFileError, parse_yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            value = parse_yaml(raw)
        except YamlFileError as exc:
            if not exc.syntax:
                raise CLIError(f"{option} {key}: {exc.problem}") from None
            value = raw
        if isinstance(value, dict | list) and not raw.lstrip().startswith(("[", "{")):
            value = raw
        overrides[key] = value
    return overrides


def _forced_terminal(args: argparse.Namespace) -> bool | None:
    """True when ``run --progress`` asks for live output even off a terminal."""
    return True if getattr(args, "progress", None) else None


def _plain_stderr(args: argparse.Namespace) -> bool:
    """True when stderr is no terminal and nothing forces one: rich would print plain
    text there anyway, so a command may write lines itself without importing rich."""
    if _forced_terminal(args) or sys.stderr.isatty():
        return False
    return not any(os.environ.get(name) for name in ("FORCE_COLOR", "TTY_COMPATIBLE"))


# ---------------------------------------------------------------------------------------
# Plugins and pipeline files
# ---------------------------------------------------------------------------------------


def _policy(args: argparse.Namespace) -> SandboxPolicy:
    """The command's sandbox: the environment's, with the folders of ``--root`` if any."""
    from ..core.policy import SandboxPolicy

    roots = getattr(args, "roots", None)
    return SandboxPolicy.from_environment(roots=tuple(roots) if roots else None)


def _engine(
    args: argparse.Namespace,
    extra_disable: Iterable[str] = (),
    *,
    strict: bool | None = None,
    policy: SandboxPolicy | None = None,
) -> Engine:
    """The command's engine, honouring the CLI options (one per command).

    ``policy`` is the operator's sandbox (default: :func:`_policy`, the environment and
    ``--root``). The engine is also the process's default engine while the command runs,
    so that code the pipeline imports (``fn`` callables, scripts) sees the same engine as
    the command.
    """
    from ..core.engine import Engine, set_default_engine

    if strict is None:
        strict = _strict(args)
    engine = Engine(
        disable=[*_disabled_plugins(args), *extra_disable],
        strict=strict,
        policy=policy if policy is not None else _policy(args),
    )
    engine.services.secrets = _secrets(args)  # what the command's files substituted
    set_default_engine(engine)
    engine.load()
    return engine


def _secrets(args: argparse.Namespace) -> Secrets:
    """The command's secrets: every value its files substituted (``${VAR}``), masked in
    all it prints and logs. Its engine holds the same object."""
    from ..core.secrets import Secrets

    found = getattr(args, "secrets", None)
    if not isinstance(found, Secrets):
        found = args.secrets = Secrets()
    return found


def _plugin_manager(
    args: argparse.Namespace, extra_disable: Iterable[str] = (), *, strict: bool | None = None
) -> PluginManager:
    """The loaded plugin manager of the command's engine (see :func:`_engine`)."""
    return _engine(args, extra_disable, strict=strict).plugins


def _load_spec(args: argparse.Namespace) -> PipelineSpec:
    from pathlib import Path

    from ..core.pipeline import load_pipeline

    path = Path(args.file)
    if not path.exists():
        raise CLIError(f"no such file: {args.file}")
    if path.is_dir():
        raise CLIError(f"{args.file} is a directory, not a pipeline file")
    overrides = parse_overrides(args.overrides)
    return load_pipeline(path, overrides, secrets=_secrets(args))


def _prepare(
    args: argparse.Namespace, spec: PipelineSpec
) -> tuple[ResolvedPipeline, PluginManager]:
    """Resolve ``spec`` against the plugins; validation errors name the file."""
    from ..core.api import prepare
    from ..core.errors import PipelineValidationError

    manager = _plugin_manager(args, spec.plugins.disable)
    try:
        resolved, manager = prepare(spec, plugins=manager)
    except PipelineValidationError as exc:
        raise PipelineValidationError(exc.issues, exc.source or args.file) from None
    return resolved, manager


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


@functools.cache
def _consoles(*, force_terminal: bool | None = None) -> tuple[Console, Console]:
    """Rich consoles for stdout and stderr (one pair per process, shared by all output).

    No emoji codes and no guessing at highlights. The stderr console never wraps printed
    lines: the lines a sink writes to a terminal stdout are routed through it while
    progress bars are live, and must stay intact.
    """
    from rich.console import Console

    out = Console(highlight=False, emoji=False)
    err = Console(
        stderr=True, highlight=False, emoji=False, soft_wrap=True, force_terminal=force_terminal
    )
    return out, err


def _num(value: float) -> str:
    """``1234`` -> ``1,234``; non-integers keep two decimals."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _rate(value: Any) -> str:
    """An items-per-second figure, or ``-`` when there is none (no time elapsed)."""
    import math

    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _json_safe(value: Any) -> Any:
    """A JSON-serialisable copy: non-finite floats become null, unknown objects repr()."""
    import math
    from pathlib import PurePath

    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return repr(value)


def _describe_value(value: Any) -> str:
    """A short description of a value too large to show: ``list of 10,000 items``."""
    if isinstance(value, list | tuple | set | frozenset):
        return f"{type(value).__name__} of {len(value):,} items"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with {len(value):,} keys"
    return f"{type(value).__name__} object"


def _print_json(data: Any, secrets: Secrets | None = None) -> None:
    """``data`` as indented JSON on stdout, masked with ``secrets`` when given."""
    import json

    safe = _json_safe(data)
    if secrets is not None:
        safe = secrets.mask_data(safe)
    sys.stdout.write(json.dumps(safe, indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def _plain_text(text: str) -> str:
    """reStructuredText markup of a docstring as plain text for a terminal:
    ````code```` and ```x``` -> ``code`` and ``x``, ``:role:`~pkg.mod.Name``` -> ``Name``
    (``:role:`title <target>``` -> ``title``), ``**bold**`` and ``*em*`` -> their text."""
    import re

    def role(match: re.Match[str]) -> str:
        body = match.group(1)
        titled = re.fullmatch(r"(.*?)\s*<[^<>]*>", body)
        if titled:
            return titled.group(1)
        if body.startswith("~"):
            return body[1:].rsplit(".", 1)[-1]
        return body.removeprefix("!")

    text = re.sub(r":[\w:.-]+:`([^`]+)`", role, text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"(?<![\w`])`([^`]+)`_{0,2}(?![\w`])", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", text)


def _error(message: str, secrets: Secrets | None = None) -> None:
    if secrets is not None:
        message = secrets.mask(message)
    sys.stderr.write(f"headwater: error: {message}\n")
    sys.stderr.flush()


def _setup_logging(verbosity: int, console: Callable[[], Console]) -> None:
    """Send log records through the stderr console (above any live progress bars).

    Warnings and errors are always shown (a plugin that failed to load, say) as
    ``headwater: warning: ...``; ``-v`` adds info records and ``-vv`` debug ones, with the
    logger's name and tracebacks. ``console`` makes the console when the first record
    comes: rich is imported then, not by every command.
    """
    import logging

    class ConsoleHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            from rich.text import Text

            try:
                message = record.getMessage()
                if verbosity:
                    message = f"{message} [{record.name}]"
                    if record.exc_text:
                        message += "\n" + record.exc_text
                    elif record.exc_info:
                        message += "\n" + logging.Formatter().formatException(record.exc_info)
                level = record.levelname.lower()
                style = "red" if record.levelno >= logging.ERROR else "yellow"
                if record.levelno < logging.WARNING:
                    style = "dim"
                console().print(Text(f"headwater: {level}: {message}", style=style))
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_headwater_cli", False)]:
        root.removeHandler(old)
    handler = ConsoleHandler()
    handler._headwater_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(
        logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    )


def _mask_logs(secrets: Secrets) -> None:
    """Mask the records of the command's log handlers (text or JSON) with its secrets:
    their messages and tracebacks."""
    import logging

    for handler in logging.getLogger().handlers:
        if getattr(handler, "_headwater_cli", False):
            handler.addFilter(secrets.logging_filter())


def _unexpected(caught: BaseException, verbosity: int, secrets: Secrets | None = None) -> int:
    """Report an exception that escaped a command (masked with ``secrets``); return the
    exit code."""
    import traceback

    from ..core.errors import HeadwaterError, PipelineValidationError

    def print_traceback() -> None:
        text = "".join(traceback.format_exception(caught))
        sys.stderr.write(secrets.mask(text) if secrets is not None else text)

    exc = caught
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task group's wrapper around one error
    if isinstance(exc, HeadwaterError):
        if verbosity and not isinstance(exc, PipelineValidationError):
            print_traceback()
        _error(str(exc), secrets)
        return EXIT_USAGE
    if verbosity:
        print_traceback()
        _error(f"unexpected {type(exc).__name__}: {exc}", secrets)
    else:
        _error(f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", secrets)
    return EXIT_FAILED


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------


async def _on_signals(
    first: Callable[[str, int], None],
    again: Callable[[str], None],
    received: list[int],
    *,
    task_status: TaskStatus[None],
) -> None:
    """Call ``first`` on the first SIGINT/SIGTERM; on a second one call ``again`` and exit
    at once with 128 + the signal number (no cleanup)."""
    import signal

    import anyio

    try:
        receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        signals = receiver.__enter__()
    except NotImplementedError:  # e.g. asyncio on Windows: Ctrl-C raises KeyboardInterrupt
        task_status.started()
        return
    try:
        task_status.started()
        async for signum in signals:
            received.append(int(signum))
            name = signal.Signals(signum).name
            if len(received) == 1:
                first(name, int(signum))
            else:
                again(name)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + int(signum))
    finally:
        receiver.__exit__(None, None, None)
