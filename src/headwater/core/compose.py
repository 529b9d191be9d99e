"""How several sources combine (a pipeline's ``compose``): ``merge``, ``zip``, ``concat``
or a windowed ``join`` (see :mod:`headwater.core.join` for what a join does)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ComposeSpec", "JoinSpec"]

_STRICT = ConfigDict(extra="forbid", frozen=False, arbitrary_types_allowed=True)

ComposeMode = Literal["merge", "zip", "concat", "join"]


class JoinSpec(BaseModel):
    """A windowed join of two sources on a key, by event time."""

    model_config = _STRICT

    sources: list[str] = Field(
        min_length=2, max_length=2, description="The left and the right source."
    )
    on: str = Field(min_length=1, description="The key field, on both sides (a dotted path).")
    timestamp: str = Field(
        min_length=1,
        description="The event-time field, on both sides: seconds since the epoch or ISO 8601.",
    )
    within: float = Field(
        ge=0, description="Pairs whose event times are at most this many seconds apart match."
    )
    how: Literal["inner", "left"] = Field(
        "inner",
        description="inner: pairs only; left: also each left item that matched nothing, "
        "once the watermark passed it (right: null).",
    )
    lateness: float = Field(0.0, ge=0, description="Disorder tolerated on each side, in seconds.")
    idle_timeout: float | None = Field(
        None,
        gt=0,
        description="A side with no item for this many seconds stops holding the watermark back.",
    )
    late: Literal["drop", "dead_letter"] = Field(
        "drop", description="Items below the watermark: drop (counted) or dead-letter."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML, headwater's loader) reads the bare key `on` as true
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _two(self) -> JoinSpec:
        if self.sources[0] == self.sources[1]:
            raise ValueError("compose.join.sources names one source twice")
        return self


class ComposeSpec(BaseModel):
    """How several sources combine: exactly one of ``merge``, ``zip``, ``concat``, ``join``."""

    model_config = _STRICT

    merge: list[str] | None = Field(None, description="Interleave items as they arrive.")
    zip: list[str] | None = Field(None, description="Tuples of one item per source.")
    concat: list[str] | None = Field(None, description="One source after the other.")
    join: JoinSpec | None = Field(
        None, description="Pairs of items of two sources with equal keys, close in event time."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ComposeSpec:
        given = [k for k in ("merge", "zip", "concat", "join") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "compose needs exactly one of merge, zip or concat (or a join)"
                + (f", got {', '.join(given)}" if given else "")
            )
        if given[0] == "join":
            return self
        names = getattr(self, given[0])
        if len(names) < 1:
            raise ValueError(f"compose.{given[0]} needs at least one source name")
        if len(set(names)) != len(names):
            raise ValueError(f"compose.{given[0]} names a source more than once")
        return self

    @property
    def mode(self) -> ComposeMode:
        """The composition mode given."""
        if self.merge is not None:
            return "merge"
        if self.zip is not None:
            return "zip"
        if self.join is not None:
            return "join"
        return "concat"

    @property
    def described(self) -> str:
        """The mode as words for messages: merged, zipped, concatenated, joined."""
        return {"merge": "merged", "zip": "zipped", "concat": "concatenated"}.get(
            self.mode, "joined"
        )

    @property
    def names(self) -> list[str]:
        """The source names, in order."""
        if self.join is not None:
            return list(self.join.sources)
        return list(getattr(self, self.mode))
