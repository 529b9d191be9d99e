"""Fan-out of stream chunks to clients: lifecycles, per-client queues, replay and limits.

A :class:`StreamingManager` owns *streams* (named, numbered sequences of chunks) and the
*clients* subscribed to them. It knows nothing about sockets: a client is any object with
an async ``send(frame)`` (:class:`ClientTransport`; ``close(code, reason)``, called when
the manager drops the client, and ``stream_closed(stream, reason)`` are optional), so the
same manager serves the WebSocket server, tests with in-memory clients, or a bridge. A
registered client is a :class:`Subscription`: its ``id``, ``is_active``, and
``wait_closed()`` that returns once its subscription ended, with the reason.

How a chunk travels::

    push(stream, data) --encode once--> frame (bytes) --> replay buffer
                                                     \\--> client queue --> drain task --> send
                                                     \\--> client queue --> drain task --> send

* Every chunk is encoded to a protocol v1 ``stream_update`` frame **once**; all clients
  share the same ``bytes`` object.
* Every client has a bounded queue drained by its own task, so a slow client delays only
  itself. A client that is idle (nothing queued, nothing being sent) and whose transport
  has a non-blocking ``try_send`` gets each push's frames written at once, in one call,
  without waking its task; it falls back to the queue as soon as it is behind. When a
  queue is full the slow-consumer policy decides: ``block`` (the pusher waits:
  backpressure reaches the pipeline), ``drop_oldest`` (the client is told how many
  messages it missed) or ``disconnect`` (the client is closed).
* Chunks are numbered (``seq`` 1, 2, ...) and the latest are kept in a bounded replay
  buffer, so a client that reconnects with ``since=N`` receives what it missed, then the
  live chunks, with no gap and no duplicate. Each stream has a random ``epoch``; a client
  resuming against another epoch (the stream was recreated, the process restarted) is told
  its history is gone.

Frames follow protocol v1 (see ``docs/protocol.md`` and :mod:`headwater.server.protocol`):
UTF-8 JSON text, one message per frame. Transports must send them as *text* messages.

The package's modules:

* :mod:`.config`: :class:`StreamingConfig`, :class:`StreamError`, the policies;
* :mod:`.wire`: the encoding of every server -> client frame (also used by the server);
* :mod:`.stream_state`: one stream's sequence numbers, epoch, replay buffer, clients;
* :mod:`.stream_table`: a manager's open streams: ids, limits, closing, closed ids;
* :mod:`.delivery`: client transports, and delivery to one client (queue, drain task,
  send errors);
* :mod:`.fanout`: publishing, and fan-out to a stream's clients under their
  slow-consumer policies (direct writes, backpressure, delivery tasks);
* :mod:`.observers`: :class:`StreamObserver`, who else sees every stream event;
* :mod:`.manager`: :class:`StreamingManager`, the public facade;
* :mod:`.metrics_source`: the ``streams`` entry of metrics snapshots.
"""

from __future__ import annotations

from .config import (
    CLOSE_SEND_FAILED,
    CLOSE_SLOW_CONSUMER,
    SendErrorPolicy,
    SlowConsumerPolicy,
    StreamError,
    StreamErrorCode,
    StreamingConfig,
)
from .delivery import (
    BatchClientTransport,
    ClientTransport,
    ClosableClientTransport,
    DirectClientTransport,
    StreamClosedListener,
)
from .manager import StreamingManager
from .metrics_source import StreamsMetrics, streams_metrics_of
from .observers import StreamObserver
from .stream_state import ReplayGap, StreamInfo, Subscription
from .wire import PROTOCOL_VERSION, Frame, encode_json, error_details

__all__ = [
    "CLOSE_SEND_FAILED",
    "CLOSE_SLOW_CONSUMER",
    "PROTOCOL_VERSION",
    "BatchClientTransport",
    "ClientTransport",
    "ClosableClientTransport",
    "DirectClientTransport",
    "Frame",
    "ReplayGap",
    "SendErrorPolicy",
    "SlowConsumerPolicy",
    "StreamClosedListener",
    "StreamError",
    "StreamErrorCode",
    "StreamInfo",
    "StreamObserver",
    "StreamingConfig",
    "StreamingManager",
    "StreamsMetrics",
    "Subscription",
    "encode_json",
    "error_details",
    "streams_metrics_of",
]
