"""Connection helpers shared by the ``amqp`` source and sink: the ``aio-pika`` import,
which broker errors are transient, and closing a channel and connection quietly."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import anyio

from ._brokers import require

__all__ = ["DEFAULT_URL", "Codec", "aio_pika", "close_quietly", "transient"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
Codec = Literal["json", "text", "bytes"]


def aio_pika(component: str) -> Any:
    """The ``aio_pika`` module, or an error naming the ``amqp`` extra to install."""
    return require("aio_pika", "amqp", component)


def transient(exc: BaseException) -> bool:
    """True for errors of an unreachable, restarting or closing broker (not refused
    credentials or a queue declared with other arguments)."""
    errors = aio_pika("amqp").exceptions
    if isinstance(exc, errors.ProbableAuthenticationError | errors.AuthenticationError):
        return False
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError):
        return True
    kinds = (
        errors.AMQPConnectionError,
        errors.ConnectionClosed,
        errors.ChannelInvalidStateError,
    )
    if isinstance(exc, kinds):
        return True
    # a channel closed by a broker shutting down (not one closed for our own mistake)
    return isinstance(exc, errors.ChannelClosed) and "PRECONDITION" not in str(exc)


async def close_quietly(conn: Any, channel: Any = None) -> None:
    """Close ``channel`` then ``conn``. The channel first: closing only the connection
    leaves the channel's close callback running as a task of its own, which the event
    loop may outlive."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        for closable in (channel, conn):
            if closable is None:
                continue
            try:
                await closable.close()
            except Exception:  # a broken connection: nothing left to release
                continue
