"""The items a knowledge query streams: documented pydantic models, one per ``type``.

Every item on a query's stream is a JSON object with a ``type``:

``query``
    First: the query, its session and the providers asked.
``status``
    Per provider: ``started``, ``running`` (hits so far), ``done``, ``failed``,
    ``timed_out`` or ``cancelled``.
``hit``
    One provider's hit, before ranking (consumed by ``knowledge.rank``; a pipeline without
    it streams them as they are).
``result``
    A ranked result: ``inserted`` at a position, ``moved`` there from ``previous``, or
    ``removed`` (a duplicate, or pushed out of the top ``limit``).
``enrichment``
    A result's content was fetched and split into passages (or could not be: ``ok``
    false).
``answer``
    The next sentence of the answer (``delta``), with the results it cites.
``complete``
    Last: timings and counts of the whole query.
``error``
    Something failed that did not end the query (a provider's own failure is a
    ``status`` of state ``failed``).

Components build these models and put ``model.item()`` (a plain dict, as JSON sees it)
on the stream, so the wire format is exactly what the models say; clients may validate
what they receive with :func:`parse_event`.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "AnswerEvent",
    "Citation",
    "CompleteEvent",
    "EnrichmentEvent",
    "ErrorEvent",
    "Event",
    "HitEvent",
    "Passage",
    "ProviderState",
    "ProviderSummary",
    "QueryEvent",
    "ResultEvent",
    "StatusEvent",
    "parse_event",
]

ProviderState = Literal["started", "running", "done", "failed", "timed_out", "cancelled"]
"""The states of a provider, in a ``status`` event."""

FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "timed_out", "cancelled"})
"""States after which a provider sends nothing more."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def item(self) -> dict[str, Any]:
        """The event as it goes on the stream (a JSON-compatible dict)."""
        return self.model_dump(mode="json")


class QueryEvent(_Event):
    """The first item of a query's stream."""

    type: Literal["query"] = "query"
    query: str = Field(description="The query as the user typed it.")
    session: str | None = Field(None, description="The session the query belongs to.")
    providers: list[str] = Field(description="The providers asked, in order.")
    started: float = Field(description="When the query started (seconds since the epoch).")


class StatusEvent(_Event):
    """A provider's progress: one when it starts, as hits arrive, and one when it ends."""

    type: Literal["status"] = "status"
    provider: str = Field(description="The provider's name (fts, files, web...).")
    state: ProviderState
    hits: int = Field(0, ge=0, description="Hits this provider has produced so far.")
    elapsed: float = Field(0.0, ge=0, description="Seconds since the provider started.")
    message: str | None = Field(None, description="Why it failed, or other details.")


class HitEvent(_Event):
    """One hit of one provider, in the provider's own order."""

    type: Literal["hit"] = "hit"
    provider: str
    rank: int = Field(ge=1, description="1-based position in the provider's own ranking.")
    url: str
    title: str
    snippet: str = ""
    score: float | None = Field(None, description="The provider's own score (BM25...).")
    content: str | None = Field(
        None, description="The document's text when the provider has it (no fetch needed)."
    )


class ResultEvent(_Event):
    """A change of the ranking: a result inserted, moved or removed.

    A client keeps an ordered list of result ids: ``inserted`` puts ``id`` at
    ``position`` (1-based; the results from there on move down one), ``moved`` takes it
    out and puts it back at ``position``, ``removed`` takes it out. Applied in order, the
    events give the aggregator's top ``limit`` exactly.
    """

    type: Literal["result"] = "result"
    change: Literal["inserted", "moved", "removed"]
    id: str = Field(description="Stable id of the result (from its normalised URL).")
    position: int | None = Field(None, ge=1, description="New 1-based position (not removed).")
    previous: int | None = Field(None, ge=1, description="Position before a move or removal.")
    url: str
    title: str
    snippet: str = ""
    score: float = Field(description="Reciprocal rank fusion score across providers.")
    providers: dict[str, int] = Field(description="Rank of the result in each provider.")
    duplicate_of: str | None = Field(
        None, description="For a removal: the result with the same content that stays."
    )


class Passage(BaseModel):
    """A piece of a result's text, a few sentences long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="RESULT_ID:N")
    text: str
    score: float = Field(description="How well the passage matches the query (BM25).")


class EnrichmentEvent(_Event):
    """A result's content, fetched (or read) and split into passages."""

    type: Literal["enrichment"] = "enrichment"
    id: str = Field(description="The result's id.")
    url: str
    ok: bool
    content_hash: str | None = Field(None, description="SHA-256 of the normalised text.")
    chars: int = Field(0, ge=0, description="Characters of text extracted.")
    title: str | None = Field(None, description="The page's own title, when it has one.")
    passages: list[Passage] = Field(default_factory=list, description="Best passages first.")
    elapsed: float = Field(0.0, ge=0, description="Seconds the fetch took.")
    error: str | None = Field(None, description="Why the content could not be had.")
    duplicate_of: str | None = Field(
        None, description="Set by the ranker: the result with the same content that stays."
    )


class Citation(BaseModel):
    """A source the answer cites: ``[n]`` in the text is result ``id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(ge=1)
    id: str
    url: str
    title: str


class AnswerEvent(_Event):
    """The next piece of the answer; the answer is the concatenation of the deltas."""

    type: Literal["answer"] = "answer"
    index: int = Field(ge=0, description="Number of this delta (0, 1, 2...).")
    delta: str = Field(description="Text to append, citation marks ``[n]`` included.")
    citations: list[Citation] = Field(
        default_factory=list, description="The sources the delta cites."
    )


class ProviderSummary(BaseModel):
    """How one provider ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: ProviderState
    hits: int
    elapsed: float


class CompleteEvent(_Event):
    """The last item of a query: what happened and how long it took."""

    type: Literal["complete"] = "complete"
    query: str
    cancelled: bool = Field(False, description="The query was stopped before its end.")
    timings: dict[str, float | None] = Field(
        description="Seconds from the start of the query to: first_status, first_result, "
        "first_enrichment, first_answer, providers_done, total."
    )
    counts: dict[str, int] = Field(
        description="hits, results, duplicates, enriched, enrich_failed, passages, "
        "answer_sentences, errors."
    )
    providers: dict[str, ProviderSummary] = Field(default_factory=dict)


class ErrorEvent(_Event):
    """A failure that did not end the query."""

    type: Literal["error"] = "error"
    where: str = Field(description="The component or provider that failed.")
    error: str = Field(description="The kind of error (an exception's class name).")
    message: str


Event = Annotated[
    QueryEvent
    | StatusEvent
    | HitEvent
    | ResultEvent
    | EnrichmentEvent
    | AnswerEvent
    | CompleteEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
"""Any item of a query's stream."""


@functools.cache
def _adapter() -> TypeAdapter[Any]:
    return TypeAdapter(Event)  # built on first use: importing this module stays cheap


def parse_event(data: Any) -> BaseModel:
    """Validate one item of a query's stream; raises ``pydantic.ValidationError``."""
    result: BaseModel = _adapter().validate_python(data)
    return result
