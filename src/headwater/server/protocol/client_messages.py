"""Client -> server messages of protocol v1: one strict pydantic model per message type.

Client messages are validated strictly: unknown fields and wrongly typed values are
errors, so a typo gets a precise answer. :func:`~headwater.server.protocol.parse_client_frame`
turns a frame into one of them.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .fields import RequestId, Seq, StreamName

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "CancelMessage",
    "ClientMessage",
    "PingMessage",
    "RunMessage",
    "SubscribeMessage",
    "UnsubscribeMessage",
]


class _ClientBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: str
    v: Literal[1] = Field(1, description="Protocol version; optional, 1 when absent.")
    id: RequestId | None = Field(
        None, description="Chosen by the client; replies to this request carry it as `ref`."
    )


class SubscribeMessage(_ClientBase):
    """Receive a stream's chunks: live ones, and with ``since`` the buffered ones after it."""

    type: Literal["subscribe"] = "subscribe"
    stream: StreamName
    since: Seq | None = Field(
        None,
        description=(
            "The last seq the client has; it first receives the buffered chunks after it. "
            "0 asks for everything buffered; absent, only live chunks."
        ),
    )
    epoch: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="The epoch `since` belongs to (from the earlier `subscribed`)."
    )


class UnsubscribeMessage(_ClientBase):
    """Stop receiving a stream; the last message for it is ``unsubscribed``."""

    type: Literal["unsubscribe"] = "unsubscribe"
    stream: StreamName


class RunMessage(_ClientBase):
    """Start a named pipeline (or action) with params, streaming its output (if allowed)."""

    type: Literal["run"] = "run"
    pipeline: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    params: dict[str, Any] = Field(default_factory=dict)
    stream: StreamName | None = Field(
        None, description="Id for the run's stream; the server chooses one when absent."
    )


class CancelMessage(_ClientBase):
    """Cancel a run, named by its stream or its run id (exactly one of them)."""

    type: Literal["cancel"] = "cancel"
    stream: StreamName | None = None
    run: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.stream is None) == (self.run is None):
            raise ValueError("exactly one of `stream` or `run` is required")
        return self


class PingMessage(_ClientBase):
    """Check the connection; answered by ``pong`` with the same ``id``."""

    type: Literal["ping"] = "ping"


ClientMessage: TypeAlias = Annotated[
    SubscribeMessage | UnsubscribeMessage | RunMessage | CancelMessage | PingMessage,
    Field(discriminator="type"),
]
"""Any message a client may send."""

CLIENT_MESSAGE_TYPES: Final = ("subscribe", "unsubscribe", "run", "cancel", "ping")
"""Values of ``type`` a client may send."""
