"""headwater-codegen: stream typed Python client code generated from a schema document.

An example of a *code-generation* plugin. It contributes one action:

``codegen.client``
    Reads a JSON Schema or an OpenAPI 3 document (JSON or YAML) and streams a Python
    module, line by line, as it is generated: ``TypedDict`` models for the schemas and,
    for OpenAPI, a client class with one typed method per operation (standard library
    only). Every ``$ref`` is checked before the first line, so a broken document fails
    without half a module; progress counts the models and operations generated;
    ``start_at`` resumes an interrupted stream at a line.

The generator itself lives in :mod:`headwater_codegen._generate` and is imported when
the action runs, keeping plugin discovery cheap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import headwater
from headwater import Register
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ClientParams", "client", "register_actions"]


class ClientParams(BaseModel):
    """Params of ``codegen.client``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(description="The JSON Schema or OpenAPI 3 document (.json, or .yaml / .yml).")
    client_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the client class (default: from the document's title).",
    )
    base_url: str | None = Field(
        None, description="Default base URL of the client (default: the first server's)."
    )
    models_only: bool = Field(False, description="Generate the models only, no client.")
    start_at: int = Field(
        0, ge=0, description="Number of lines to skip (to resume an interrupted stream)."
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such schema document: {path!r}") from None


@headwater.action(
    "codegen.client",
    params=ClientParams,
    output="the generated Python module, one str per line (without line terminators)",
    capabilities=("streaming", "progress"),
)
async def client(params: ClientParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Stream a typed Python client (or just models) generated from a schema, line by line.

    Models come first (``TypedDict`` classes, ``NotRequired`` optional keys, ``Literal``
    enums, unions), then the client class and its methods. Lines are yielded as each
    model or operation is generated; progress counts those units.
    """
    from ._generate import Generator, load_document

    text = await anyio.to_thread.run_sync(_read, params.path)
    document = load_document(text, params.path)
    generator = Generator(
        document,
        source=Path(params.path).name,
        client_name=params.client_name,
        base_url=params.base_url,
        models_only=params.models_only,
    )
    total = generator.count_units()
    line_number = 0
    done = 0
    try:
        for unit in generator.units():
            if ctx.cancelled:
                return
            for line in unit.lines:
                line_number += 1
                if line_number > params.start_at:
                    yield line
            done += 1
            ctx.progress(done, max(total, done), unit.name)
            await anyio.lowlevel.checkpoint()  # a big document must not hog the event loop
        ctx.status(f"generated {line_number} lines: {done} units from {params.path}")
    finally:
        ctx.logger.debug("codegen.client stopped after %d lines", line_number)


@headwater.hookimpl
def register_actions(register: Register) -> None:
    """Contribute ``codegen.client``."""
    register(client)
