"""Limits, policies and errors of a :class:`~headwater.core.streaming.StreamingManager`.

:class:`StreamingConfig` holds every limit and policy (validated, frozen);
:class:`StreamError` is what every failing streaming operation raises, with a stable
``code``; the ``CLOSE_*`` constants are the codes passed to ``ClientTransport.close``.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import HeadwaterError

__all__ = [
    "CLOSE_SEND_FAILED",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TIMEOUT",
    "SendErrorPolicy",
    "SlowConsumerPolicy",
    "StreamError",
    "StreamErrorCode",
    "StreamingConfig",
]

CLOSE_SLOW_CONSUMER: Final = "slow_consumer"
"""``code`` passed to :meth:`ClientTransport.close` by the ``disconnect`` policy."""

CLOSE_SEND_FAILED: Final = "send_failed"
"""``code`` passed to :meth:`ClientTransport.close` after a failed or timed-out send."""

CLOSE_TIMEOUT: Final = 5.0
"""Seconds a transport's ``close`` may take before the manager stops waiting for it."""

SlowConsumerPolicy = Literal["block", "drop_oldest", "disconnect"]
"""What happens when a client's queue is full (see :class:`StreamingConfig`)."""

SendErrorPolicy = Literal["log_and_continue", "deregister_client", "raise"]
"""What happens when sending to a client fails (see :class:`StreamingConfig`); ``throw``
is accepted as another name of ``raise``."""

StreamErrorCode = Literal[
    "stream_error",
    "stream_exists",
    "unknown_stream",
    "stream_closed",
    "too_many_streams",
    "too_many_clients",
    "client_exists",
    "unknown_client",
    "client_send_failed",
    "invalid_stream_id",
    "unencodable_chunk",
    "not_running",
    "shutting_down",
]
"""The stable machine-readable codes of :class:`StreamError`."""


class StreamError(HeadwaterError):
    """A streaming operation failed; ``code`` says why, in a stable machine-readable way.

    ``stream_id`` and ``client_id`` name the stream and client involved, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        code: StreamErrorCode = "stream_error",
        stream_id: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.code: StreamErrorCode = code
        self.stream_id = stream_id
        self.client_id = client_id
        self.message = message
        super().__init__(message)


# -- configuration ----------------------------------------------------------------------


class StreamingConfig(BaseModel):
    """Limits and policies of a :class:`StreamingManager`. Times are in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_streams: int = Field(1000, ge=1, description="Most streams open at the same time.")
    max_clients_per_stream: int = Field(1000, ge=1, description="Most clients of one stream.")
    inactivity_timeout: float | None = Field(
        300.0,
        gt=0,
        description=(
            "A stream that received no chunk for this long is closed with reason "
            "`inactive`; None disables the timer."
        ),
    )
    on_send_error: SendErrorPolicy = Field(
        "deregister_client",
        description=(
            "When a send to a client fails or times out: `log_and_continue` (the message is "
            "lost for that client, later ones are still sent), `deregister_client` (the "
            "client is removed from the stream and its transport closed) or `raise` (also "
            "spelled `throw`: as `deregister_client`, and the first `push`, `push_many` or "
            "`push_encoded` to the stream that starts after the failure was detected raises "
            "StreamError `client_send_failed` and publishes nothing; sends happen after the "
            "push that queued the message returned, so that is a later call, never the "
            "one whose message failed)."
        ),
    )
    send_timeout: float | None = Field(
        30.0, gt=0, description="A send taking longer than this counts as a failed send."
    )
    client_queue_size: int = Field(
        1024, ge=1, description="Messages waiting for one client before it counts as slow."
    )
    slow_consumer: SlowConsumerPolicy = Field(
        "drop_oldest",
        description=(
            "When a client's queue is full: `block` (the pusher waits for room), "
            "`drop_oldest` (the oldest queued message is dropped and the client told how "
            "many it missed) or `disconnect` (the client is closed with `slow_consumer`)."
        ),
    )
    replay_max_chunks: int = Field(
        1000, ge=0, description="Chunks kept per stream for clients resuming with `since`."
    )
    replay_max_bytes: int = Field(
        4 * 1024 * 1024, ge=0, description="Bytes of encoded frames kept per stream for replay."
    )
    coalesce_max: int = Field(
        64,
        ge=1,
        description=(
            "Most messages handed to a transport's `send_batch` at once (a client that is "
            "behind receives its backlog in batches of up to this many)."
        ),
    )
    shutdown_grace: float = Field(
        5.0, ge=0, description="How long shutdown waits for queued messages to be delivered."
    )
    remember_closed: int = Field(
        1024,
        ge=0,
        description=(
            "How many closed stream ids are remembered, so that a late push or subscribe "
            "gets `stream_closed` rather than `unknown_stream`."
        ),
    )

    @field_validator("on_send_error", mode="before")
    @classmethod
    def _throw_means_raise(cls, value: Any) -> Any:
        """``throw`` (the name some streaming APIs use) is ``raise``."""
        return "raise" if value == "throw" else value
