"""The stream bridge's configuration (the ``bridge`` section of the server
configuration) and the records it keeps of mirrored streams (see
:mod:`headwater.server.bridge`). Imports without the ``redis`` package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["METRICS_GROUP", "OWNER_LOST", "BridgeConfig", "Mirror", "as_text"]

OWNER_LOST: Final = "owner_lost"
"""``code`` of the ``stream_error`` a mirror sends when its owner stopped heart-beating."""
METRICS_GROUP: Final = "brokers"
"""Where the bridge's connection appears in the engine's metrics snapshot, beside the
broker connections of the runs (role ``bridge``)."""


class BridgeConfig(BaseModel):
    """The ``bridge`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid")

    redis: str = Field(
        min_length=1, description="Redis URL shared by the nodes, e.g. redis://127.0.0.1:6379."
    )
    prefix: str = Field("headwater:", description="Prefix of every key the bridge uses.")
    node: str | None = Field(
        None, min_length=1, description="This node's id (default: random, new at each start)."
    )
    streams: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Patterns (fnmatch) of this node's streams to share with the others.",
    )
    maxlen: int | None = Field(
        None,
        ge=1,
        description="Entries kept per stream in Redis (about). Default: the node's replay "
        "buffer size (streaming.replay_max_chunks), so a late node can replay as much.",
    )
    ttl: float = Field(
        3600.0, gt=0, description="Seconds a closed stream's key is kept before it expires."
    )
    block_ms: int = Field(
        1000, ge=10, le=60_000, description="Longest wait of one XREAD for new events."
    )
    heartbeat_interval: float = Field(
        2.0, gt=0, le=3600, description="Seconds between two heartbeats of this node."
    )
    missed_heartbeats: int = Field(
        5,
        ge=1,
        le=1000,
        description="Heartbeats an owner may miss before its mirrored streams are closed "
        "with stream_error code owner_lost (and its keys expire).",
    )


@dataclass(slots=True)
class Mirror:
    """A remote stream this node mirrors."""

    stream_id: str
    key: str
    node: str
    metadata: dict[str, Any]
    cursor: bytes = b"0-0"
    epoch: str | None = None
    """Epoch of the local copy (None until it exists)."""


def as_text(value: bytes | str) -> str:
    """``value`` as text (Redis replies are bytes)."""
    return value.decode() if isinstance(value, bytes) else value
