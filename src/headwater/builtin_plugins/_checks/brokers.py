"""Connection checks of the Redis Streams and NATS JetStream connectors.

Redis: ``PING``, then the stream's type and length and the consumer group's state
(``XINFO GROUPS``), read only: a missing stream or group is reported as what the source
will create. NATS: connect, then ``STREAM.INFO`` (and ``CONSUMER.INFO`` of the durable
consumer) or, for a sink without ``stream``, which stream captures the subject. Neither
joins a consumer group, leases a consumer name, fetches or publishes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater.core.context import StreamContext
from headwater.core.errors import CheckFailed

from .network import display_address, tcp_problem, unreachable

if TYPE_CHECKING:
    from ..nats_jetstream import NatsSourceParams
    from ..nats_sink import NatsSinkParams
    from ..redis_sink import RedisSinkParams, RedisStoreParams
    from ..redis_streams import RedisSourceParams

__all__ = [
    "check_nats_sink",
    "check_nats_source",
    "check_redis_sink",
    "check_redis_source",
    "check_redis_store",
]


# ---------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _redis(url: str, component: str) -> Any:
    """A client that answered PING (closed by the caller), else CheckFailed."""
    from .._redis import client

    redis = client(url, component, timeout=5.0)
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        raise unreachable(display_address(url), exc) from None
    return redis


async def _stream_state(redis: Any, url: str, stream: str) -> int | None:
    """The length of ``stream``, None when it does not exist; CheckFailed when the key
    holds something else."""
    kind = _text(await redis.type(stream))
    if kind == "none":
        return None
    if kind != "stream":
        raise CheckFailed(f"{display_address(url)}: key {stream!r} holds a {kind}, not a stream")
    return int(await redis.xlen(stream))


async def check_redis_source(params: RedisSourceParams, ctx: StreamContext) -> str:
    """PING; the stream and the consumer group (pending entries, lag), read only."""
    url = display_address(params.url)
    redis = await _redis(params.url, "redis.stream")
    try:
        length = await _stream_state(redis, params.url, params.stream)
        if length is None:
            return (
                f"{url}: reached; stream {params.stream!r} does not exist yet (created with "
                f"group {params.group!r} when the run starts)"
            )
        groups = {_text(g["name"]): g for g in await redis.xinfo_groups(params.stream)}
        group = groups.get(params.group)
        if group is None:
            return (
                f"{url}: stream {params.stream!r} has {length} entries; group "
                f"{params.group!r} is created from {params.start_id!r} when the run starts"
            )
        lag = group.get("lag")
        behind = f", {lag} not yet read" if lag is not None else ""
        return (
            f"{url}: stream {params.stream!r} has {length} entries; group {params.group!r}: "
            f"{group.get('consumers', 0)} consumers, {group.get('pending', 0)} pending{behind}"
        )
    finally:
        await redis.aclose()


async def check_redis_sink(params: RedisSinkParams, ctx: StreamContext) -> str:
    """PING; the stream's length (or that it will be created)."""
    url = display_address(params.url)
    redis = await _redis(params.url, "redis.stream sink")
    try:
        length = await _stream_state(redis, params.url, params.stream)
    finally:
        await redis.aclose()
    if length is None:
        return f"{url}: reached; stream {params.stream!r} is created by the first entry"
    return f"{url}: stream {params.stream!r} has {length} entries"


async def check_redis_store(params: RedisStoreParams, ctx: StreamContext) -> str:
    """PING."""
    redis = await _redis(params.url, "redis checkpoint store")
    await redis.aclose()
    return f"{display_address(params.url)}: reached"


# ---------------------------------------------------------------------------------------
# NATS JetStream
# ---------------------------------------------------------------------------------------


async def _nats(url: str, component: str) -> Any:
    """A connection (closed by the caller), else CheckFailed."""
    import logging

    from ..nats_jetstream import _connect

    try:
        return await _connect(url, component, logging.getLogger("headwater.nats"))
    except Exception as exc:
        # the client says "no servers available" whatever happened: a plain TCP
        # connection tells a closed port or an unknown host apart
        raise unreachable(display_address(url), await _tcp_problem(url, 4222) or exc) from None


async def _tcp_problem(url: str, default_port: int) -> BaseException | None:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return await tcp_problem(parts.hostname or "127.0.0.1", parts.port or default_port)


async def _close(nc: Any) -> None:
    try:
        await nc.close()
    except Exception:  # broken already: nothing to release
        return


def _not_found(exc: BaseException) -> bool:
    from headwater.core.optional import require

    errors = require("nats.js.errors", "nats", "nats.jetstream")
    return isinstance(exc, errors.NotFoundError)


async def _stream_info(js: Any, url: str, stream: str) -> Any:
    """The stream's info, None when it does not exist; CheckFailed without JetStream."""
    try:
        return await js.stream_info(stream)
    except Exception as exc:
        if _not_found(exc):
            return None
        raise CheckFailed(f"{url}: JetStream did not answer STREAM.INFO {stream}: {exc}") from None


async def check_nats_source(params: NatsSourceParams, ctx: StreamContext) -> str:
    """Connect; the stream (messages) and the durable consumer (pending), read only."""
    url = display_address(params.url)
    nc = await _nats(params.url, "nats.jetstream")
    try:
        js = nc.jetstream()
        info = await _stream_info(js, url, params.stream)
        if info is None:
            if params.create_stream:
                return f"{url}: reached; stream {params.stream!r} is created when the run starts"
            raise CheckFailed(
                f"{url}: stream {params.stream!r} does not exist (create it, or set create_stream)"
            )
        said = f"{url}: stream {params.stream!r} has {info.state.messages} messages"
        try:
            consumer = await js.consumer_info(params.stream, params.durable)
        except Exception as exc:
            if not _not_found(exc):
                raise
            return f"{said}; consumer {params.durable!r} is created when the run starts"
        return (
            f"{said}; consumer {params.durable!r}: {consumer.num_pending} not yet delivered, "
            f"{consumer.num_ack_pending} awaiting acknowledgement"
        )
    finally:
        await _close(nc)


async def check_nats_sink(params: NatsSinkParams, ctx: StreamContext) -> str:
    """Connect; the stream that captures the subject (or that it will be created)."""
    url = display_address(params.url)
    nc = await _nats(params.url, "nats.jetstream sink")
    try:
        js = nc.jetstream()
        if params.stream is not None:
            info = await _stream_info(js, url, params.stream)
            if info is None:
                if params.create_stream:
                    return (
                        f"{url}: reached; stream {params.stream!r} is created when the run starts"
                    )
                raise CheckFailed(f"{url}: stream {params.stream!r} does not exist")
            return f"{url}: stream {params.stream!r} has {info.state.messages} messages"
        try:
            stream = await js.find_stream_name_by_subject(params.subject)
        except Exception as exc:
            if not _not_found(exc):
                raise
            raise CheckFailed(
                f"{url}: no stream captures subject {params.subject!r} (publishes would "
                "get no acknowledgement)"
            ) from None
        return f"{url}: subject {params.subject!r} goes to stream {stream!r}"
    finally:
        await _close(nc)
