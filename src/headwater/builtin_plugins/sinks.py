"""Built-in sinks.

Sync methods of a sink class (``open``, ``write``, ``close``) are run by the runtime in a
worker thread, so the blocking file and database I/O below never stalls the event loop.
The runtime never calls two methods of one sink at the same time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext

from ._checks.files import check_jsonl
from ._sandbox import check_output_path_param, make_parents, param_of, policy_in
from ._values import fspath as _fspath
from ._values import type_name as _type_name

if TYPE_CHECKING:
    pass


@headwater.sink("collect", sample_params={}, sample_input=[1, 2])
class CollectSink:
    """Keep every item in memory; the run's output is the list (for embedding and tests)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def write(self, batch: list[Any]) -> None:
        """Append the batch to the collected items."""
        self.items.extend(batch)

    async def close(self, error: BaseException | None) -> list[Any]:
        """Return every item received."""
        return self.items


@headwater.sink("null", sample_params={}, sample_input=[1, 2])
class NullSink:
    """Discard every item; the output is the number of items received."""

    def __init__(self) -> None:
        self.count = 0

    async def write(self, batch: list[Any]) -> None:
        """Count the batch and drop it."""
        self.count += len(batch)

    async def close(self, error: BaseException | None) -> int:
        """Return the number of items received."""
        return self.count


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    """JSON fallback: pydantic models and dataclass instances become objects."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"object of type {_type_name(obj)} is not JSON-serialisable")


class _JsonEncoder:
    """Compact JSON (no spaces) that also handles pydantic models and dataclasses.

    The same text as ``json.JSONEncoder(separators=(",", ":")).encode``, which builds its
    C encoder anew for every item (half the cost of a small object): here it is built
    once. Its circular-reference markers are cleared after a failure (a failed call
    leaves them behind).
    """

    def __init__(self, ensure_ascii: bool) -> None:
        self._py = json.JSONEncoder(
            ensure_ascii=ensure_ascii, separators=(",", ":"), default=_json_default
        )
        self._markers: dict[int, Any] = {}
        make = getattr(json.encoder, "c_make_encoder", None)  # None without the C module
        strings = (
            json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
        )
        self._chunks: Callable[[Any, int], list[str]] | None = (
            None
            if make is None
            else make(self._markers, _json_default, strings, None, ":", ",", False, False, True)
        )

    def encode(self, item: Any) -> str:
        """One item as JSON."""
        return self.encode_all([item])[0]

    def encode_all(self, items: list[Any]) -> list[str]:
        """Every item as JSON."""
        chunks = self._chunks
        if chunks is None:
            encode = self._py.encode
            return [encode(item) for item in items]
        join = "".join
        try:
            return [join(chunks(item, 0)) for item in items]
        except BaseException:
            self._markers.clear()
            raise


def _json_encoder(ensure_ascii: bool) -> _JsonEncoder:
    """A compact encoder (no spaces) that also handles pydantic models and dataclasses."""
    return _JsonEncoder(ensure_ascii)


def _encode_batch(
    encode: Callable[[Any], str],
    batch: list[Any],
    first: int,
    encode_all: Callable[[list[Any]], list[str]] | None = None,
) -> list[str]:
    """Encode every item (with ``encode_all`` if given: the fast way); on failure, raise
    naming the item's position and type."""
    try:
        if encode_all is not None:
            return encode_all(batch)
        return [encode(item) for item in batch]
    except (TypeError, ValueError):
        pass
    for index, item in enumerate(batch):  # slow path: find the offending item
        try:
            encode(item)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"item {first + index} ({_type_name(item)}) cannot be written as JSON: {exc}"
            ) from exc
    return [encode(item) for item in batch]  # pragma: no cover - did not fail twice


# ---------------------------------------------------------------------------------------
# stdout
# ---------------------------------------------------------------------------------------


class StdoutParams(BaseModel):
    """Params of ``stdout``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    format: Literal["auto", "json", "str", "repr"] = Field(
        "auto",
        description="How items are written: auto (str items as they are, anything else as "
        "JSON), json (every item as JSON, strings quoted), str (str(item)) or repr "
        "(repr(item)).",
    )


@headwater.sink("stdout", params=StdoutParams, sample_params={}, sample_input=["a", {"n": 1}])
class StdoutSink:
    """Write each item to standard output, one per line, flushing after every batch.

    The output of the sink is the number of items written.
    """

    def __init__(self, params: StdoutParams, ctx: StreamContext) -> None:
        self.format = params.format
        self.count = 0
        self._encode = _json_encoder(ensure_ascii=False).encode
        renderers: dict[str, Callable[[Any], str]] = {
            "auto": self._auto,
            "json": self._encode,
            "str": str,
            "repr": repr,
        }
        self._render = renderers[params.format]

    def _auto(self, item: Any) -> str:
        """Strings as they are, anything else as JSON."""
        return item if isinstance(item, str) else self._encode(item)

    def write(self, batch: list[Any]) -> None:
        """Write the batch, one item per line, and flush (runs in a worker thread)."""
        if not batch:
            return
        out = sys.stdout
        if out is None:
            raise RuntimeError("stdout: this process has no standard output")
        if self.format in ("json", "auto"):
            lines = _encode_batch(self._render, batch, self.count)
        else:
            lines = [self._render(item) for item in batch]
        lines.append("")
        out.write("\n".join(lines))
        out.flush()
        self.count += len(batch)

    async def close(self, error: BaseException | None) -> int:
        """Return the number of items written."""
        return self.count


# ---------------------------------------------------------------------------------------
# jsonl
# ---------------------------------------------------------------------------------------


class JsonlParams(BaseModel):
    """Params of ``jsonl``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        description="File to write (relative to the working directory; missing folders are "
        "created); it must lie inside the operator's file roots."
    )
    append: bool = Field(False, description="Append to an existing file instead of truncating it.")
    ensure_ascii: bool = Field(
        False, description="Escape non-ASCII characters (\\uXXXX) instead of writing UTF-8."
    )
    flush_every_batch: bool = Field(
        True, description="Flush the file after every batch, so readers see it at once."
    )
    fsync: bool = Field(
        False,
        description="Also fsync after every flushed batch and at close (durable, slower).",
    )

    _path = field_validator("path", mode="before")(_fspath)
    _path_allowed = field_validator("path")(check_output_path_param)


@headwater.sink("jsonl", params=JsonlParams, check=check_jsonl)
class JsonlSink:
    """Write each item as one compact JSON object per line (JSON Lines), in UTF-8.

    The file is opened (truncated unless ``append``) before the first item and closed at
    the end; the output is ``{"path": ..., "items": n}``. An item that is not
    JSON-serialisable fails the batch before any of it is written, naming its type.

    Delivery is at-least-once: in a checkpointed run the file is flushed and fsynced at
    every checkpoint, and a resumed run appends after truncating a torn last line (one
    cut short by a crash), so every line stays valid JSON. Lines written after the last
    checkpoint before a crash are written again on resume: duplicates are bounded by one
    checkpoint interval.
    """

    def __init__(self, params: JsonlParams, ctx: StreamContext) -> None:
        self.params = params
        self.path = params.path
        self.items = 0
        self._file: IO[str] | None = None
        encoder = _json_encoder(params.ensure_ascii)
        self._encode, self._encode_all = encoder.encode, encoder.encode_all
        self._resuming = bool(getattr(ctx, "resuming", False))
        self._policy = policy_in(ctx)
        self._param = param_of(ctx)

    def open(self) -> None:
        """Open (and truncate, unless ``append`` or resuming) the file, inside the roots,
        creating its missing folders."""
        path = os.path.expanduser(self.path)
        make_parents(self._policy, path, self._param)
        if self._resuming:
            try:
                with self._policy.open_file(path, "rb+", buffering=0, param=self._param) as raw:
                    _truncate_torn_line(raw.fileno())
            except FileNotFoundError:
                pass
        mode = "a" if self.params.append or self._resuming else "w"
        self._file = self._policy.open_file(
            path, mode, encoding="utf-8", newline="\n", param=self._param
        )

    def commit_checkpoint(self, checkpoint: Any) -> None:
        """Make every line written so far durable before the checkpoint is acknowledged."""
        file = self._file
        if file is not None:
            file.flush()
            os.fsync(file.fileno())

    def write(self, batch: list[Any]) -> None:
        """Encode the whole batch, then write it with one call (runs in a worker thread)."""
        if not batch:
            return
        file = self._file
        if file is None:
            raise RuntimeError("jsonl: write() before open()")
        lines = _encode_batch(self._encode, batch, self.items, self._encode_all)
        lines.append("")
        file.write("\n".join(lines))
        if self.params.flush_every_batch:
            file.flush()
            if self.params.fsync:
                os.fsync(file.fileno())
        self.items += len(batch)

    def close(self, error: BaseException | None) -> dict[str, Any]:
        """Flush (and fsync if asked) and close the file; returns ``{"path", "items"}``."""
        file, self._file = self._file, None
        if file is not None:
            try:
                file.flush()
                if self.params.fsync:
                    os.fsync(file.fileno())
            finally:
                file.close()
        return {"path": self.path, "items": self.items}


def _truncate_torn_line(fd: int) -> None:
    """Cut an open file back to its last newline (a crash may have left half a line)."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        os.lseek(fd, start, os.SEEK_SET)
        block = os.read(fd, end - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)
        os.fsync(fd)


# ---------------------------------------------------------------------------------------
# websocket
# ---------------------------------------------------------------------------------------


class WebsocketParams(BaseModel):
    """Params of ``websocket``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    stream: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Stream to publish to. Default: the stream of the run when a client "
        "started it with `run`, else the pipeline's name.",
    )
    create: bool = Field(
        True, description="Create the stream if it is not open (else fail with unknown_stream)."
    )
    close: bool | None = Field(
        None,
        description="Close the stream when the sink closes. Default: only if this sink "
        "created it. A run's own stream is always closed by the server, with the run's "
        "final state.",
    )
    reason: str = Field(
        "completed", min_length=1, description="`stream_complete` reason when the sink closes it."
    )


@headwater.sink("websocket", params=WebsocketParams)
class WebsocketSink:
    """Publish each item as one chunk of a stream of the headwater server in this process.

    Clients subscribed to the stream receive every item as a ``stream_update`` (protocol
    v1); items must be JSON-serialisable (pydantic models, dataclasses and datetimes
    are). The server is the one ``headwater serve`` (or an embedder's
    ``headwater.server.Server``) runs in this process; the sink fails at open, with a
    clear message, when none is running. The output is ``{"stream", "chunks",
    "last_seq"}``.
    """

    def __init__(self, params: WebsocketParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.stream: str | None = None
        self.chunks = 0
        self.last_seq = 0
        self._server: Any = None
        self._owned = False
        self._run_stream = False

    async def open(self) -> None:
        """Find the running server and the stream (creating it if asked)."""
        server = self.ctx.publisher
        manager = server.manager
        stream = self.params.stream
        if stream is None:
            stream = server.stream_of_run(self.ctx.run_id)
            self._run_stream = stream is not None
            if stream is None:
                stream = self.ctx.pipeline
        else:
            self._run_stream = server.stream_of_run(self.ctx.run_id) == stream
        if not manager.has_stream(stream) and self.params.create:
            metadata = {"pipeline": self.ctx.pipeline, "run": self.ctx.run_id}
            await server.call(_create_stream, manager, stream, metadata)
            self._owned = True
        self._server = server
        self.stream = stream

    async def write(self, batch: list[Any]) -> None:
        """Push the batch to the stream, one chunk per item (encoded once for all clients)."""
        if not batch:
            return
        assert self._server is not None
        assert self.stream is not None
        self.last_seq = await self._server.call(self._server.manager.push_many, self.stream, batch)
        self.chunks += len(batch)

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Close the stream if this sink owns it; returns ``{"stream", "chunks", "last_seq"}``."""
        server, stream = self._server, self.stream
        close = self.params.close if self.params.close is not None else self._owned
        if server is not None and stream is not None and close and not self._run_stream:
            manager = server.manager
            if manager.has_stream(stream):
                if error is not None:
                    await server.call(manager.handle_stream_error, stream, error)
                else:
                    await server.call(manager.close_stream, stream, self.params.reason)
        return {"stream": stream, "chunks": self.chunks, "last_seq": self.last_seq}


async def _create_stream(manager: Any, stream: str, metadata: dict[str, Any]) -> None:
    """Create ``stream`` unless somebody else created it meanwhile."""
    if not manager.has_stream(stream):
        await manager.create_stream(stream, metadata=metadata)
