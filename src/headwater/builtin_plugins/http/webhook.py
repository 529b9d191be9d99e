"""``http.webhook``: a source that listens for POSTed JSON or NDJSON and makes items of it.

Installed with ``pip install 'headwater[http]'`` (uvicorn serves the requests). The
source listens on its own ``host:port`` while it runs: a small ASGI app under uvicorn in
a thread of its own, so that request handling never waits for the pipeline and the
pipeline never waits for a slow sender. Requests reach the source through an
:class:`~._inbox.Inbox` bounded in items:

* a body over ``max_body`` bytes answers **413**, a wrong or missing ``token`` **401**,
  a body that does not parse **400** (naming the line), another path **404**, another
  method **405**;
* a full inbox answers **429** with ``Retry-After`` (the sink is behind: backpressure
  reaches the sender); a source that is stopping answers **503** with ``Retry-After``;
* ``ack: receive`` answers **202** as soon as the items are in the inbox (they are lost
  if the process dies before the sinks have them); ``ack: commit`` answers 202 only once
  a checkpoint covering them was committed, i.e. every sink has them (the pipeline needs
  a ``checkpoint:`` section; the commit interval is the answer's latency). A request not
  committed within ``ack_timeout`` answers 504, one whose run ended first 503: a sender
  that retries what got no 202 gets every item delivered at least once.

The items of one request stay together and in order. The checkpoint position is
``{"delivered": N}`` (deliveries, as the broker sources count them); there is nothing
to resume from: what was not acknowledged is for the sender to send again.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.net import is_loopback
from headwater.core.optional import require

from .._brokers import Ledger, delivered_upto, stage_logger
from .._checks.web import check_webhook
from ._bodies import BodyError, BodyFormat, parse_body
from ._inbox import Inbox, Ticket

__all__ = ["WebhookParams", "WebhookServer", "webhook_source"]

log = logging.getLogger("headwater.http")

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


class WebhookParams(BaseModel):
    """Params of the ``http.webhook`` source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    host: str = Field(
        "127.0.0.1",
        description="Address to listen on. Beyond loopback a token is required.",
    )
    port: int = Field(
        ge=0,
        le=65535,
        description="Port to listen on (0: any free port, shown in the status message).",
    )
    path: str = Field("/", pattern=r"^/", description="The path senders POST to.")
    token: str | None = Field(
        None,
        min_length=1,
        description="Senders must send `Authorization: Bearer TOKEN` (use ${VAR}).",
    )
    max_body: int = Field(1 << 20, ge=1, description="Largest request body in bytes (413 beyond).")
    buffer: int = Field(
        10_000,
        ge=1,
        description="Items waiting for the pipeline at most; a request that does not fit "
        "answers 429 with Retry-After.",
    )
    ack: Literal["receive", "commit"] = Field(
        "receive",
        description="Answer 202 once the items are received (receive) or once every sink "
        "committed them (commit; needs a checkpoint section).",
    )
    ack_timeout: float = Field(
        30.0, gt=0, description="With ack: commit, answer 504 after this many seconds."
    )
    retry_after: int = Field(
        1, ge=0, description="Seconds a 429 or 503 answer asks the sender to wait."
    )
    format: BodyFormat = Field(
        "auto",
        description="json (an array is many items), ndjson (one item per line), or auto "
        "(by Content-Type: NDJSON types as NDJSON, anything else as JSON).",
    )
    idle_exit: float | None = Field(
        None, gt=0, description="End after this many seconds without a request (None: never)."
    )
    max_requests: int | None = Field(
        None, ge=1, description="End after accepting this many requests (None: no limit)."
    )

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> WebhookParams:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address: set `token` so that only "
                "your senders can post"
            )
        return self


def _json(
    status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps(value, separators=(",", ":")).encode()
    return status, body, [(b"content-type", b"application/json"), *(headers or [])]


class WebhookServer:
    """The webhook's ASGI app and the uvicorn server running it in a thread.

    ``app`` is a plain ASGI callable: it answers from the request alone (path, method,
    token, size, body) and the :class:`Inbox`, so the same object could be mounted in
    another ASGI application.
    """

    def __init__(self, params: WebhookParams, inbox: Inbox, logger: Any) -> None:
        self.params = params
        self.inbox = inbox
        self.log = logger
        self._expected = None if params.token is None else f"Bearer {params.token}".encode()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.error: BaseException | None = None
        self.port = 0

    # -- the ASGI app ---------------------------------------------------------------------

    async def app(self, scope: Message, receive: Receive, send: Send) -> None:
        """Answer one request (``http`` scopes; anything else is ignored)."""
        if scope["type"] != "http":
            return
        status, body, headers = await self._answer(scope, receive)
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _busy(self, status: int, why: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        after = str(self.params.retry_after).encode()
        return _json(status, {"error": why}, [(b"retry-after", after)])

    async def _answer(
        self, scope: Message, receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        params = self.params
        if scope["path"] != params.path:
            return _json(404, {"error": f"no webhook at {scope['path']}; POST to {params.path}"})
        if scope["method"] != "POST":
            return _json(405, {"error": "POST only"}, [(b"allow", b"POST")])
        headers = dict(scope["headers"])
        if self._expected is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self._expected
        ):
            return _json(
                401,
                {"error": "a valid bearer token is required"},
                [(b"www-authenticate", b'Bearer realm="headwater webhook"')],
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > params.max_body:
            return _json(413, {"error": f"body larger than {params.max_body} bytes"})
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _json(400, {"error": "the client went away"})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > params.max_body:
                return _json(413, {"error": f"body larger than {params.max_body} bytes"})
            chunks.append(chunk)
            more = message.get("more_body", False)
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        try:
            items = parse_body(b"".join(chunks), content_type, params.format)
        except BodyError as exc:
            return _json(400, {"error": str(exc)})
        commit = params.ack == "commit"
        ticket = Ticket(len(items)) if commit else None
        refused = self.inbox.offer(items, ticket)
        if refused == "full":
            return self._busy(429, "busy: the pipeline is behind; retry later")
        if refused is not None:
            return self._busy(503, "the source is stopping; retry later")
        if ticket is None:
            return _json(202, {"accepted": len(items)})
        committed = await ticket.wait(params.ack_timeout)
        if committed:
            return _json(202, {"accepted": len(items), "committed": True})
        if committed is None:
            return _json(
                504,
                {
                    "error": f"not committed within {params.ack_timeout:g}s; "
                    "the items may still be delivered"
                },
            )
        return self._busy(503, "the pipeline stopped before committing; send again")

    # -- the server thread ---------------------------------------------------------------------

    def bind(self) -> socket.socket:
        """Bind the listening socket (here, so that a port in use fails the source)."""
        params = self.params
        family = socket.AF_INET6 if ":" in params.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((params.host.strip("[]"), params.port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"http.webhook cannot listen on {params.host}:{params.port}: {exc.strerror}",
            ) from None
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (bound and listening) in a daemon thread."""
        uvicorn = require("uvicorn", "http", "http.webhook")
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)

        def run() -> None:
            import asyncio

            try:
                asyncio.run(self._server.serve(sockets=[sock]))
            except BaseException as exc:  # reported to the source
                self.error = exc
            finally:
                sock.close()
                self._stopped.set()

        self._thread = threading.Thread(target=run, name="headwater http.webhook", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop serving and wait for the thread (a few seconds at most)."""
        if self._server is None:
            return
        self._server.should_exit = True
        await anyio.to_thread.run_sync(self._stopped.wait, 5.0)


@headwater.action(
    "http.webhook",
    params=WebhookParams,
    output="the JSON values POSTed to it: an array's elements, or one item per NDJSON line",
    capabilities=("streaming", "resumable"),
    batched=True,
    check=check_webhook,
)
async def webhook_source(params: WebhookParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """Listen on ``host:port`` and turn each POSTed JSON or NDJSON body into items.

    Answers 202 when the items are received (``ack: receive``) or committed by every
    sink (``ack: commit``), 429 with ``Retry-After`` while the pipeline is behind, 413
    for a body over ``max_body``, 401 without the token.
    """
    require("uvicorn", "http", "http.webhook")
    commit = params.ack == "commit"
    if commit and not ctx.checkpointing:
        raise RuntimeError(
            "http.webhook with ack: commit answers only after every sink committed, which "
            "needs the commit protocol: add `checkpoint: {store: memory}` to the pipeline"
        )
    logger = stage_logger("headwater.http", ctx)
    inbox = Inbox(params.buffer)
    server = WebhookServer(params, inbox, logger)
    ledger: Ledger[Ticket] = Ledger()
    finished = False

    def settle_all(committed: bool) -> None:
        for ticket in ledger.release(ledger.delivered):
            ticket.settle(committed)

    async def stop() -> None:
        with anyio.CancelScope(shield=True):
            await server.stop()

    async def on_commit(position: Any) -> None:
        upto = delivered_upto(position)
        if upto is None:
            return
        for ticket in ledger.release(upto):
            ticket.settle(True)
        if finished and not ledger:
            await stop()

    if commit:
        ctx.on_commit(on_commit)
    # connections wait in the socket's backlog until uvicorn serves them
    server.start(server.bind())
    normally = False
    try:
        where = f"http://{params.host}:{server.port}{params.path}"
        ctx.status(f"listening on {where}")
        logger.info("http.webhook: listening on %s", where)
        ctx.checkpoint({"delivered": 0})
        received = items_in = 0
        idle_since = time.monotonic()
        while not ctx.cancelled and not ctx.draining:
            if params.max_requests is not None and received >= params.max_requests:
                break
            if server.error is not None:
                raise RuntimeError(f"http.webhook: the server failed: {server.error}")
            taken = await inbox.take(0.2)
            if taken:
                batch = [item for items, _ in taken for item in items]
                tickets = [ticket for _, ticket in taken if ticket is not None]
                n = ledger.add(tickets) if commit else ledger.add(())
                received += len(taken)
                items_in += len(batch)
                if batch:
                    yield batch
                ctx.checkpoint({"delivered": n})
                ctx.progress(items_in, message=f"{received} requests")
                idle_since = time.monotonic()
            else:
                # report again so that a time-based checkpoint (and so the answers
                # waiting for it) happens while no request comes
                ctx.checkpoint({"delivered": ledger.delivered})
                if params.idle_exit is not None and (
                    time.monotonic() - idle_since >= params.idle_exit
                ):
                    break
        # what was accepted before the inbox closed is delivered too
        inbox.close()
        left = inbox.leftovers()
        if left:
            batch = [item for items, _ in left for item in items]
            tickets = [ticket for _, ticket in left if ticket is not None]
            ledger.add(tickets)
            if batch:
                yield batch
        ctx.checkpoint({"delivered": ledger.delivered})
        normally = True
    finally:
        inbox.close()
        for _, ticket in inbox.leftovers():
            if ticket is not None:
                ticket.settle(False)
        finished = True
        if not commit or not normally or not ledger:
            # the final commit (after this generator returns) answers the rest
            settle_all(False)
            await stop()
