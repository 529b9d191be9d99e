"""Built-in ``command`` action: run a program and stream its output lines as they come.

Safety first: the program is given as an argument list and run without a shell. What may
run is bounded by the operator's :class:`~headwater.SandboxPolicy` (programs resolved on
the operator's ``PATH`` and compared as real paths; protected environment variables) and
narrowed by the pipeline's ``allow`` and ``deny`` params; see
:mod:`headwater.builtin_plugins.command_policy`. A refused command fails params
validation, so it never starts, and is checked again against the run's policy when the
run starts. The program runs in a new session (its own process group): on
cancellation, timeout or error the whole group is terminated, then killed, in a
``finally``, so no child process outlives the run.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import anyio
from anyio.abc import ByteReceiveStream, Process
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

import headwater
from headwater.core.context import StreamContext
from headwater.core.policy import SandboxPolicy, policy_of

from ._textio import ByteLineSplitter, check_errors, check_line_encoding
from .command_policy import ALLOW_ENV, check_environment, resolve_command

WITHHELD_ENV: Final = ("HEADWATER_TOKENS",)
"""Variables of this process a program never inherits (they hold the server's secrets)."""

__all__ = [
    "ALLOW_ENV",
    "CommandFailed",
    "CommandParams",
    "command",
]

_READ_SIZE = 64 * 1024


class CommandFailed(RuntimeError):
    """The program exited with a non-zero status and the params asked for ``check``."""

    def __init__(self, program: str, returncode: int) -> None:
        self.program = program
        self.returncode = returncode
        super().__init__(f"{program} exited with status {returncode}")


def _policy(info: ValidationInfo) -> SandboxPolicy:
    """The policy params are validated under (without one: the environment's)."""
    return policy_of(info.context) or SandboxPolicy.from_environment()


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
        description="Programs this command may run: bare names (looked up on the operator's "
        "PATH) or full paths. It can only narrow the operator's list (HEADWATER_COMMAND_ALLOW "
        "or sandbox.commands): when both are set, both must allow the program; one of "
        "them is required.",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="Glob patterns no argument may match, the program included. '--name' "
        "patterns also refuse abbreviations and '--name=value' forms; '-x' patterns also "
        "refuse clusters such as '-lx'. List both forms of an option, e.g. "
        "['-R', '--recursive'].",
    )
    cwd: str | None = Field(
        None,
        description="Working directory (default: the current one); must lie inside the "
        "sandbox roots.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables to set for the program. PATH, LD_*, PYTHON* and "
        "other variables choosing which code programs load are refused unless the operator "
        "allows them (HEADWATER_COMMAND_ENV or sandbox.command_env).",
    )
    inherit_env: bool = Field(
        True,
        description="Start from this process's environment (otherwise only env); the "
        "server's tokens (HEADWATER_TOKENS) are never passed on.",
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

    @field_validator("env")
    @classmethod
    def _protected_env(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        check_environment(value, _policy(info))
        return value

    @model_validator(mode="after")
    def _check_policy(self, info: ValidationInfo) -> CommandParams:
        self._program = self.checked(_policy(info))
        return self

    def checked(self, policy: SandboxPolicy) -> str:
        """Check the params against ``policy``; return the absolute path of the program.

        :raises ValueError: Naming the refused program, argument or variable.
        """
        check_environment(self.env, policy)
        if self.cwd is not None:
            policy.check_path(self.cwd, param="cwd")
        return resolve_command(
            self.argv, allow=self.allow, deny=self.deny, policy=policy, cwd=self.cwd
        )

    def child_environment(self) -> dict[str, str]:
        """The environment the program runs with."""
        base = dict(os.environ) if self.inherit_env else {}
        for name in WITHHELD_ENV:
            base.pop(name, None)
        base.update(self.env)
        return base

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
    exit status, which is also sent as a status message. The program must be allowed by
    the operator's sandbox policy and the ``allow`` param, and no argument may match
    ``deny``: a refused command fails validation and never starts. ``timeout`` bounds the run; on
    timeout or cancellation the program's whole process group is terminated.
    """
    # params may have been validated under another policy, or the files may have changed
    try:
        program = params.checked(ctx.policy)
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
