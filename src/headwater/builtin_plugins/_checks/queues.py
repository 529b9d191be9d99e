"""Connection checks of the AMQP and MQTT connectors.

AMQP: connect and log in, then declare passively (which only asks whether it exists,
and how many messages it holds) the queue a source consumes, the exchange it is bound
to, and the exchange or queue a sink publishes to; nothing is consumed, bound or
published. MQTT: connect with a client id of the check's own and a clean session, then
disconnect: the check never takes over the id or the persistent session of a running
source, so it cannot see what that session holds.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from headwater.core.context import StreamContext
from headwater.core.errors import CheckFailed

from .network import display_address, tcp_problem, unreachable

if TYPE_CHECKING:
    from ..amqp import AmqpSourceParams
    from ..amqp_sink import AmqpSinkParams
    from ..mqtt import MqttSinkParams, MqttSourceParams

__all__ = ["check_amqp_sink", "check_amqp_source", "check_mqtt"]


# ---------------------------------------------------------------------------------------
# AMQP
# ---------------------------------------------------------------------------------------


async def _amqp(url: str, ctx: StreamContext, component: str) -> Any:
    """A connection (closed by the caller) once the sandbox allowed ``url``."""
    from .._addresses import check_url
    from .._amqp import aio_pika

    pika = aio_pika(component)
    check_url(ctx.policy, url, param=f"{ctx.stage}.params.url")
    quiet = _Quiet("error when creating transport")  # the error below says it once
    transport_log = logging.getLogger("aiormq.connection")
    transport_log.addFilter(quiet)
    try:
        return await pika.connect(url, timeout=10)
    except Exception as exc:
        errors = pika.exceptions
        if isinstance(exc, errors.ProbableAuthenticationError | errors.AuthenticationError):
            raise CheckFailed(
                f"{display_address(url)}: the broker refused the user name or password"
            ) from None
        raise unreachable(display_address(url), exc) from None
    finally:
        transport_log.removeFilter(quiet)


class _Quiet(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


async def _passive(conn: Any, kind: str, name: str) -> Any:
    """The queue or exchange ``name`` declared passively, None when it does not exist.
    A failed passive declaration closes its channel: each gets a channel of its own."""
    from .._amqp import aio_pika

    errors = aio_pika("amqp").exceptions
    channel = await conn.channel()
    try:
        if kind == "queue":
            return await channel.declare_queue(name, passive=True)
        return await channel.declare_exchange(name, passive=True)
    except errors.ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()


def _count(queue: Any) -> str:
    result = getattr(queue, "declaration_result", None)
    count = getattr(result, "message_count", None)
    return f" ({count} messages)" if count is not None else ""


async def check_amqp_source(params: AmqpSourceParams, ctx: StreamContext) -> str:
    """Connect; the queue (and the exchange it is bound to), declared passively."""
    from .._amqp import close_quietly

    url = display_address(params.url)
    conn = await _amqp(params.url, ctx, "amqp")
    try:
        queue = await _passive(conn, "queue", params.queue)
        if queue is None and not params.declare:
            raise CheckFailed(f"{url}: queue {params.queue!r} does not exist (or set declare)")
        said = (
            f"{url}: queue {params.queue!r}{_count(queue)}"
            if queue is not None
            else f"{url}: reached; queue {params.queue!r} is declared when the run starts"
        )
        if params.bind and params.exchange is not None:
            if await _passive(conn, "exchange", params.exchange) is None:
                raise CheckFailed(f"{url}: exchange {params.exchange!r} does not exist")
            said += f", bound to exchange {params.exchange!r}"
        return said
    finally:
        await close_quietly(conn)


async def check_amqp_sink(params: AmqpSinkParams, ctx: StreamContext) -> str:
    """Connect; the exchange, or with the default exchange the queue the routing key
    names, declared passively."""
    from .._amqp import close_quietly

    url = display_address(params.url)
    conn = await _amqp(params.url, ctx, "amqp sink")
    try:
        if params.exchange:
            if await _passive(conn, "exchange", params.exchange) is None:
                raise CheckFailed(f"{url}: exchange {params.exchange!r} does not exist")
            return f"{url}: exchange {params.exchange!r}"
        queue = await _passive(conn, "queue", params.routing_key)
        if queue is not None:
            return f"{url}: queue {params.routing_key!r}{_count(queue)}"
        if params.declare_queue == params.routing_key:
            return f"{url}: reached; queue {params.routing_key!r} is declared when the run starts"
        raise CheckFailed(
            f"{url}: no queue {params.routing_key!r} for the default exchange to route to "
            "(declare it, or set declare_queue)"
        )
    finally:
        await close_quietly(conn)


# ---------------------------------------------------------------------------------------
# MQTT
# ---------------------------------------------------------------------------------------


async def check_mqtt(params: MqttSourceParams | MqttSinkParams, ctx: StreamContext) -> str:
    """Connect (a client id of the check's own, a clean session) and disconnect."""
    import anyio

    from .._addresses import check_url
    from .._mqtt import Inbox, MqttConnection, paho

    paho("mqtt")
    check_url(ctx.policy, params.url, param=f"{ctx.stage}.params.url")
    url = display_address(params.url)
    conn = MqttConnection(
        params.url,
        client_id=f"headwater-check-{secrets.token_hex(6)}",
        protocol=params.protocol,
        session_expiry=0,
        keepalive=params.keepalive,
        username=params.username,
        password=params.password,
        inbox=Inbox(1),
        component="mqtt",
    )
    # a closed port or an unknown host is told at once; the client would retry for seconds
    problem = await tcp_problem(conn.host, conn.port)
    if problem is not None:
        raise unreachable(url, problem)
    try:
        conn.start()
        with anyio.move_on_after(8):
            await conn.wait_connected(8)
        if conn.refused is not None:
            raise CheckFailed(f"{url}: {conn.refused}".replace("mqtt: ", "")) from None
        if not conn.connected:
            raise CheckFailed(f"{url}: no answer to CONNECT ({conn.last_error})")
    finally:
        await conn.close()
    return f"{url}: connected (MQTT {params.protocol})"
