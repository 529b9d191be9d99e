"""Typed control events that travel beside the data of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Complete", "ErrorEvent", "Event", "Progress", "Status"]

RunState = Literal["pending", "running", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Progress of one stage: ``done`` of ``total`` units (total may be unknown)."""

    stage: str
    done: float
    total: float | None = None
    message: str | None = None
    type: Literal["progress"] = field(default="progress", init=False)

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Status:
    """A state change of the run or of one stage (``stage`` is None for the run)."""

    state: str
    stage: str | None = None
    message: str | None = None
    type: Literal["status"] = field(default="status", init=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An error in a stage; ``handled`` is True when the error policy absorbed it."""

    stage: str
    error: dict[str, Any]
    handled: bool
    type: Literal["error"] = field(default="error", init=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Complete:
    """The last event of every run: its final state and summary."""

    state: RunState
    summary: dict[str, Any]
    type: Literal["complete"] = field(default="complete", init=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


Event = Progress | Status | ErrorEvent | Complete
"""Any control event."""
