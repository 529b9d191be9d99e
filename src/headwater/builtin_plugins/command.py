"""Built-in ``command`` action: run a program and stream its output lines as they come.

Safety first: the program is given as an argument list and run without a shell; it must
be on an allow-list (the ``allow`` param and/or the ``HEADWATER_COMMAND_ALLOW``
environment variable, which an operator sets to bound what any pipeline may run); no
argument may match the ``deny`` globs. A refused command fails params validation, so it
never starts. The program runs in a new session (its own process group): on
cancellation, timeout or error the whole group is terminated, then killed, in a
``finally``, so no child process outlives the run.
"""

from __future__ import annotations

import fnmatch
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, Process
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

import headwater
from headwater.core.context import StreamContext

from ._textio import ByteLineSplitter, check_errors, check_line_encoding

__all__ = [
    "ALLOW_ENV",
    "CommandFailed",
    "CommandParams",
    "command",
    "environment_allow_list",
    "register_actions",
    "resolve_command",
]

ALLOW_ENV = "HEADWATER_COMMAND_ALLOW"
"""Comma-separated programs any ``command`` may run, set by the operator."""

_READ_SIZE = 64 * 1024


class CommandFailed(RuntimeError):
    """The program exited with a non-zero status and the params asked for ``check``."""

    def __init__(self, program: str, returncode: int) -> None:
        self.program = program
        self.returncode = returncode
        super().__init__(f"{program} exited with status {returncode}")


def environment_allow_list(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The programs ``HEADWATER_COMMAND_ALLOW`` allows, or None when it is unset or blank."""
    value = (os.environ if environ is None else environ).get(ALLOW_ENV, "")
    names = [part.strip() for part in value.split(",") if part.strip()]
    return names or None


def _is_allowed(argv0: str, program: str, allow: Sequence[str]) -> bool:
    """A bare name allows that name looked up on PATH; a path allows exactly that file."""
    real = os.path.realpath(program)
    for entry in allow:
        if os.sep in entry or (os.altsep and os.altsep in entry):
            if os.path.realpath(os.path.expanduser(entry)) == real:
                return True
        elif os.sep not in argv0 and argv0 == entry:
            return True
    return False


def resolve_command(
    argv: Sequence[str],
    *,
    allow: Sequence[str] | None,
    deny: Sequence[str],
    cwd: str | None = None,
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Check ``argv`` against the allow- and deny-lists; return the program's full path.

    :param argv: The program and its arguments.
    :param allow: Programs the params allow (None: not restricted by the params).
    :param deny: Glob patterns no argument (the program included) may match.
    :param cwd: Working directory of the command (relative program paths resolve there).
    :param path: The ``PATH`` the command will see (default: this process's).
    :param environ: Where to read ``HEADWATER_COMMAND_ALLOW`` (default: ``os.environ``).
    :raises ValueError: Naming the refused program or argument and the rule refusing it.
    """
    if not argv or not argv[0]:
        raise ValueError("argv must start with the program to run")
    for arg in argv:
        if "\0" in arg:
            raise ValueError(f"argument {arg!r} contains a NUL character")
    argv0 = argv[0]
    env_allow = environment_allow_list(environ)
    if allow is None and env_allow is None:
        raise ValueError(
            f"command {argv0!r} refused: no allow-list; list the programs a pipeline may run "
            f"in the allow param (allow: [{os.path.basename(argv0)}]) or in {ALLOW_ENV}"
        )
    for pattern in deny:
        for arg in argv:
            if fnmatch.fnmatchcase(arg, pattern):
                raise ValueError(f"argument {arg!r} refused: it matches deny pattern {pattern!r}")
    has_dir = os.sep in argv0 or bool(os.altsep and os.altsep in argv0)
    if has_dir and cwd is not None and not os.path.isabs(argv0):
        candidate = os.path.join(cwd, argv0)
    else:
        candidate = argv0
    program = shutil.which(candidate, path=path)
    if program is None:
        where = "" if has_dir else " on PATH"
        raise ValueError(f"program {argv0!r} not found{where} (or not executable)")
    program = os.path.abspath(program)
    for source, names in (("the allow param", allow), (ALLOW_ENV, env_allow)):
        if names is not None and not _is_allowed(argv0, program, names):
            listed = ", ".join(repr(n) for n in names) or "nothing"
            hint = (
                " (a bare name allows only the program found on PATH under that name; list "
                "its full path to allow a path)"
                if has_dir
                else ""
            )
            raise ValueError(
                f"program {argv0!r} refused: not in {source} (which allows {listed}){hint}"
            )
    return program


class CommandParams(BaseModel):
    """Params of ``command``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    argv: list[str] = Field(
        min_length=1,
        description="The program and its arguments, e.g. [git, log, --oneline]; never run "
        "through a shell.",
    )
    allow: list[str] | None = Field(
        None,
        description="Programs this command may run: bare names (looked up on PATH) or full "
        f"paths. Required unless {ALLOW_ENV} is set; when both are set, both must allow it.",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="Glob patterns no argument may match (e.g. '--force*', '-*r*f*'); the "
        "program itself is checked too.",
    )
    cwd: str | None = Field(None, description="Working directory (default: the current one).")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables to set for the program."
    )
    inherit_env: bool = Field(
        True, description="Start from this process's environment (otherwise only env)."
    )
    timeout: float | None = Field(
        300.0,
        gt=0,
        description="Seconds the program may run; then its process group is killed and the "
        "stage fails with TimeoutError (None: no limit).",
    )
    check: bool = Field(
        False, description="Fail the stage when the program exits with a non-zero status."
    )
    kill_grace: float = Field(
        2.0,
        ge=0,
        le=60,
        description="Seconds between SIGTERM and SIGKILL when the process group is stopped.",
    )
    encoding: str = Field("utf-8", description="Encoding of the program's output.")
    errors: str = Field("replace", description="What to do with bytes that do not decode.")
    max_line_bytes: int = Field(
        64 * 1024,
        ge=1,
        le=256 * 1024 * 1024,
        description="Longer output lines come out in pieces of this many bytes, marked "
        "partial: true.",
    )

    _program: str = PrivateAttr("")

    _errors = field_validator("errors")(check_errors)

    @field_validator("encoding")
    @classmethod
    def _encoding_ascii(cls, value: str) -> str:
        return check_line_encoding(value, "command")

    @model_validator(mode="after")
    def _check_policy(self) -> CommandParams:
        self._program = resolve_command(
            self.argv, allow=self.allow, deny=self.deny, cwd=self.cwd, path=self.child_path()
        )
        return self

    def child_environment(self) -> dict[str, str]:
        """The environment the program runs with."""
        base = dict(os.environ) if self.inherit_env else {}
        base.update(self.env)
        return base

    def child_path(self) -> str | None:
        """The ``PATH`` the program is looked up on."""
        if "PATH" in self.env:
            return self.env["PATH"]
        return os.environ.get("PATH") if self.inherit_env else os.defpath

    @property
    def program(self) -> str:
        """Full path of the program, resolved and checked during validation."""
        return self._program


async def _receive_any(
    streams: Mapping[str, ByteReceiveStream], got: list[tuple[str, bytes | None]]
) -> None:
    """Wait for data on any of ``streams``; append ``(name, data)`` to ``got`` (None: EOF).

    Receiving is cancel-safe on both backends: the receives that lose the race lose no
    data, and what was received before a cancellation is in ``got``.
    """

    async def one(name: str, stream: ByteReceiveStream, scope: anyio.CancelScope) -> None:
        try:
            data: bytes | None = await stream.receive(_READ_SIZE)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            data = None
        got.append((name, data))
        scope.cancel()

    async with anyio.create_task_group() as tg:
        for name, stream in streams.items():
            tg.start_soon(one, name, stream, tg.cancel_scope)


def _kill_group(process: Process, signum: int) -> None:
    """Send ``signum`` to the program's process group (or to the program off POSIX)."""
    killpg = getattr(os, "killpg", None)
    try:
        if killpg is not None:
            killpg(process.pid, signum)  # start_new_session: the group id is the pid
        elif process.returncode is None:
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


async def _stop_group(process: Process, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap the program."""
    if process.returncode is None:
        _kill_group(process, signal.SIGTERM)
        with anyio.move_on_after(grace):
            await process.wait()
    # anything still alive in the group (the program, or children it left behind)
    _kill_group(process, getattr(signal, "SIGKILL", signal.SIGTERM))
    with anyio.move_on_after(max(grace, 5.0)):
        await process.wait()


def _describe_exit(returncode: int) -> tuple[str | None, str]:
    """The signal name (for negative return codes) and a status message."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return name, f"killed by {name}"
    return None, f"exited with status {returncode}"


@headwater.action(
    "command",
    params=CommandParams,
    output='{"stream": "stdout"|"stderr", "line": str} per output line, then '
    '{"stream": "exit", "returncode", "signal", "timed_out", "duration"}',
    capabilities=("streaming", "progress"),
    batched=True,
)
async def command(params: CommandParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """Run a program (an argument list, no shell) and stream its stdout and stderr lines.

    Lines come as they are written, tagged with their stream; the last item reports the
    exit status, which is also sent as a status message. The program must be allowed
    (``allow`` / ``HEADWATER_COMMAND_ALLOW``) and no argument may match ``deny``: a
    refused command fails validation and never starts. ``timeout`` bounds the run; on
    timeout or cancellation the program's whole process group is terminated.
    """
    # the environment may have changed since validation (a long-lived server): check again
    try:
        program = resolve_command(
            params.argv,
            allow=params.allow,
            deny=params.deny,
            cwd=params.cwd,
            path=params.child_path(),
        )
    except ValueError as exc:
        raise PermissionError(str(exc)) from None
    name = os.path.basename(params.argv[0])
    started = time.monotonic()
    deadline = None if params.timeout is None else started + params.timeout
    process: Process | None = None
    ended = False  # the program exited and its output was read to the end
    try:
        process = await anyio.open_process(
            [program, *params.argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=params.cwd,
            env=params.child_environment(),
            start_new_session=True,
        )
        ctx.status(f"started {name} (pid {process.pid})")
        assert process.stdout is not None
        assert process.stderr is not None
        streams: dict[str, ByteReceiveStream] = {"stdout": process.stdout, "stderr": process.stderr}
        splitters = {
            key: ByteLineSplitter(
                params.encoding, params.errors, max_line_bytes=params.max_line_bytes
            )
            for key in streams
        }
        lines = 0
        timed_out = False
        while streams:
            if ctx.cancelled:
                return
            got: list[tuple[str, bytes | None]] = []
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left > 0:
                with anyio.move_on_after(left):
                    await _receive_any(streams, got)
            if not got:
                timed_out = True
                break
            items: list[Any] = []
            for key, data in got:
                if data is None:
                    del streams[key]
                pieces = splitters[key].feed(data or b"", final=data is None)
                for _, _, text, partial in pieces:
                    item: dict[str, Any] = {"stream": key, "line": text}
                    if partial:
                        item["partial"] = True
                    items.append(item)
            if items:
                lines += len(items)
                ctx.progress(lines, None)
                yield items
        returncode: int | None = None
        if not timed_out:
            with anyio.move_on_after(math.inf if deadline is None else deadline - time.monotonic()):
                returncode = await process.wait()
            timed_out = returncode is None
            ended = not timed_out
        if timed_out:
            await _stop_group(process, params.kill_grace)
            returncode = process.returncode
        assert returncode is not None
        signame, message = _describe_exit(returncode)
        if timed_out:
            message = f"timed out after {params.timeout:g}s, {message}"
        ctx.status(f"{name} {message}")
        yield [
            {
                "stream": "exit",
                "returncode": returncode,
                "signal": signame,
                "timed_out": timed_out,
                "duration": round(time.monotonic() - started, 6),
            }
        ]
        if timed_out:
            raise TimeoutError(f"{name} timed out after {params.timeout:g}s and was killed")
        if params.check and returncode != 0:
            raise CommandFailed(name, returncode)
    finally:
        if process is not None:
            # shielded: runs to the end even when the run is being cancelled
            with anyio.CancelScope(shield=True):
                if not ended:
                    # cancelled, timed out or failed: nothing of the group may live on,
                    # including children still running after the program itself exited
                    await _stop_group(process, params.kill_grace)
                await process.aclose()


@headwater.hookimpl
def register_actions(register: Any) -> None:
    """Register the ``command`` action."""
    register(command)
