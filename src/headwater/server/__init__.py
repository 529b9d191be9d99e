"""headwater's server side: the client protocol (v1) and, built on it, the WebSocket server.

:mod:`headwater.server.protocol` holds the pydantic models of every message and the
parser of client frames; fan-out, replay and limits live in
:class:`headwater.core.streaming.StreamingManager`, which the server drives.
"""
