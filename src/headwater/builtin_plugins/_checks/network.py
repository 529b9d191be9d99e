"""What went wrong reaching a server, in a few words, for the connection checks."""

from __future__ import annotations

import socket
from collections.abc import Iterator

from headwater.core.errors import CheckFailed
from headwater.core.reconnect import display_address

__all__ = ["display_address", "reason", "tcp_problem", "unreachable"]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)


def reason(exc: BaseException) -> str:
    """What went wrong reaching a server, in a few words: the root network error of
    ``exc`` (refused, unknown host, timed out) when there is one, else its message."""
    for e in _chain(exc):
        if isinstance(e, ConnectionRefusedError):
            return "connection refused (no server listens on that port)"
        if isinstance(e, socket.gaierror):
            return f"unknown host ({e.strerror or e})"
        if isinstance(e, TimeoutError):
            return "no answer (timed out)"
    text = " ".join(str(exc).split())
    if "refused" in text.lower() and "connect" in text.lower():
        return "connection refused (no server listens on that port)"
    for e in _chain(exc):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unreachable(address: str, exc: BaseException) -> CheckFailed:
    """The error of a check that could not talk to ``address`` (shown without
    credentials: pass :func:`display_address` of a URL)."""
    return CheckFailed(f"{address}: {reason(exc)}")


async def tcp_problem(host: str, port: int) -> BaseException | None:
    """Why a TCP connection to ``host``:``port`` fails (within 5 s), None if it opens:
    tells a closed port or an unknown host apart for clients whose own errors do not."""
    import anyio

    try:
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp(host, port)
    except Exception as exc:
        return exc
    await stream.aclose()
    return None
