"""``knowledge.synthesize``: an extractive answer, streamed sentence by sentence.

An ordinary ``stream`` transformer: every item passes through, and the synthesizer
follows the query, the providers' statuses, the ranking (``result`` events, applied as a
client does) and the passages of the enriched results. Once the evidence is worth
answering from (``min_enriched`` of the top results enriched, or every provider done),
each item it passes on may be followed by the next sentence of the answer: the unused
sentence of the top ``top`` results that covers most of the query's words, favouring
better-ranked results and skipping near-repeats, with a citation mark ``[n]``. When the
input ends the answer is completed up to ``max_sentences`` and a ``complete`` event
sums the query up.

:class:`Synthesizer` is plain synchronous code; see :mod:`headwater_knowledge.llm` for
answering with a language model instead.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import headwater
from pydantic import BaseModel, ConfigDict, Field

from .events import FINAL_STATES, AnswerEvent, Citation, CompleteEvent, ProviderSummary
from .text import sentences, terms, words

__all__ = ["SynthesizeParams", "Synthesizer", "synthesize"]


class SynthesizeParams(BaseModel):
    """Params of ``knowledge.synthesize``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    max_sentences: int = Field(5, ge=0, le=500, description="Sentences of the answer.")
    top: int = Field(10, ge=1, le=1000, description="Results whose passages may be cited.")
    min_enriched: int = Field(
        3,
        ge=1,
        description="Start answering once this many of the top results are "
        "enriched (or every provider is done).",
    )
    min_words: int = Field(5, ge=1, description="Shortest sentence used, in words.")
    max_chars: int = Field(400, ge=40, description="Longest sentence used, in characters.")


@dataclass(slots=True)
class _Sentence:
    result: str
    text: str
    words: frozenset[str]
    coverage: float
    order: int


class Synthesizer:
    """The answer of one query; :meth:`feed` per item, :meth:`finish` at the end."""

    def __init__(self, params: SynthesizeParams | None = None) -> None:
        self.params = params or SynthesizeParams()
        self.query = ""
        self.terms: list[str] = []
        self.started = time.time()
        self.providers: dict[str, ProviderSummary] = {}
        self.asked: list[str] = []
        self.shown: list[str] = []
        self.info: dict[str, tuple[str, str]] = {}
        self.candidates: dict[str, list[_Sentence]] = {}
        self.used: list[frozenset[str]] = []
        self.citations: dict[str, int] = {}
        self.deltas = 0
        self.timings: dict[str, float | None] = dict.fromkeys(
            (
                "first_status",
                "first_result",
                "first_enrichment",
                "first_answer",
                "providers_done",
                "total",
            ),
        )
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "hits",
                "results",
                "duplicates",
                "enriched",
                "enrich_failed",
                "passages",
                "answer_sentences",
                "errors",
            ),
            0,
        )
        self._order = 0

    def _mark(self, name: str) -> None:
        if self.timings[name] is None:
            self.timings[name] = round(time.time() - self.started, 4)

    # -- following the query --------------------------------------------------------------

    def feed(self, item: Any) -> list[Any]:
        """``item``, then the next sentence of the answer if one is due."""
        kind = item.get("type") if isinstance(item, dict) else None
        handler = getattr(self, f"_on_{kind}", None) if kind else None
        if handler is not None:
            handler(item)
        out = [item]
        if kind in ("result", "enrichment", "status") and self.ready():
            answer = self.next_sentence()
            if answer is not None:
                out.append(answer)
        return out

    def _on_query(self, item: dict[str, Any]) -> None:
        self.query = str(item["query"])
        self.terms = terms(self.query)
        self.started = float(item.get("started") or self.started)
        self.asked = list(item.get("providers") or [])

    def _on_status(self, item: dict[str, Any]) -> None:
        self._mark("first_status")
        if item["state"] in FINAL_STATES:
            self.providers[item["provider"]] = ProviderSummary(
                state=item["state"],
                hits=item.get("hits", 0),
                elapsed=round(item.get("elapsed", 0.0), 4),
            )
            self.counts["hits"] += int(item.get("hits", 0))
            if self.providers_done():
                self._mark("providers_done")

    def _on_result(self, item: dict[str, Any]) -> None:
        self._mark("first_result")
        rid = item["id"]
        if rid in self.shown:
            self.shown.remove(rid)
        if item["change"] == "removed":
            if item.get("duplicate_of"):
                self.counts["duplicates"] += 1
            self.candidates.pop(rid, None)
            return
        if item["change"] == "inserted":
            self.counts["results"] += 1
        self.info[rid] = (item["url"], item["title"])
        self.shown.insert(int(item["position"]) - 1, rid)

    def _on_enrichment(self, item: dict[str, Any]) -> None:
        if not item.get("ok"):
            self.counts["enrich_failed"] += 1
            return
        self._mark("first_enrichment")
        self.counts["enriched"] += 1
        if item.get("duplicate_of"):
            return
        query = set(self.terms)
        found: list[_Sentence] = []
        for passage in item.get("passages", []):
            self.counts["passages"] += 1
            for text in sentences(passage["text"]):
                ws = words(text)
                if len(ws) < self.params.min_words or len(text) > self.params.max_chars:
                    continue
                if not _prose(text):
                    continue
                present = query.intersection(ws)
                if not present:
                    continue
                self._order += 1
                found.append(
                    _Sentence(
                        item["id"], text, frozenset(ws), len(present) / len(query), self._order
                    )
                )
        self.candidates[item["id"]] = found

    def _on_error(self, item: dict[str, Any]) -> None:
        self.counts["errors"] += 1

    def providers_done(self) -> bool:
        """True once every provider asked has ended."""
        return bool(self.asked) and all(p in self.providers for p in self.asked)

    # -- answering ------------------------------------------------------------------------

    def ready(self) -> bool:
        """Is the evidence worth answering from?"""
        if self.deltas >= self.params.max_sentences:
            return False
        top = self.shown[: self.params.top]
        enriched = sum(1 for rid in top if rid in self.candidates)
        return enriched >= self.params.min_enriched or self.providers_done()

    def next_sentence(self) -> dict[str, Any] | None:
        """The next answer event: the best unused sentence of the top results."""
        if self.deltas >= self.params.max_sentences:
            return None
        best: tuple[float, int, _Sentence] | None = None
        for position, rid in enumerate(self.shown[: self.params.top]):
            for sentence in self.candidates.get(rid, ()):
                score = sentence.coverage / (1 + 0.15 * position)
                key = (score, -sentence.order)
                if (best is None or key > best[:2]) and not any(
                    _similar(sentence.words, u) for u in self.used
                ):
                    best = (score, -sentence.order, sentence)
        if best is None:
            return None
        sentence = best[2]
        self.used.append(sentence.words)
        self.candidates[sentence.result].remove(sentence)
        n = self.citations.setdefault(sentence.result, len(self.citations) + 1)
        url, title = self.info[sentence.result]
        text = f"{sentence.text} [{n}]"
        event = AnswerEvent(
            index=self.deltas,
            delta=text if self.deltas == 0 else " " + text,
            citations=[Citation(n=n, id=sentence.result, url=url, title=title)],
        )
        self.deltas += 1
        self.counts["answer_sentences"] += 1
        self._mark("first_answer")
        return event.item()

    def finish(self) -> list[dict[str, Any]]:
        """The rest of the answer, then the ``complete`` event."""
        out: list[dict[str, Any]] = []
        while (answer := self.next_sentence()) is not None:
            out.append(answer)
        self._mark("total")
        self.timings["total"] = round(time.time() - self.started, 4)
        cancelled = any(p.state == "cancelled" for p in self.providers.values())
        out.append(
            CompleteEvent(
                query=self.query,
                cancelled=cancelled,
                timings=self.timings,
                counts=self.counts,
                providers=self.providers,
            ).item()
        )
        return out


_CODE = ("```", ">>>", "{", "}", "=", "$ ", "| ")


def _prose(text: str) -> bool:
    """A sentence a person would read out: no code, mostly letters and spaces."""
    if any(mark in text for mark in _CODE):
        return False
    plain = sum(c.isalpha() or c.isspace() for c in text)
    return plain >= 0.85 * len(text)


def _similar(a: frozenset[str], b: frozenset[str]) -> bool:
    """Near-repeats: more than 60% of their words in common (Jaccard)."""
    return len(a & b) > 0.6 * len(a | b)


@headwater.transformer(
    "knowledge.synthesize",
    kind="stream",
    params=SynthesizeParams,
    output="every item passed on, answer events as evidence arrives, a complete event last",
)
async def synthesize(
    items: AsyncIterator[Any], params: SynthesizeParams, ctx: headwater.StreamContext
) -> AsyncIterator[Any]:
    """Stream an extractive answer, sentence by sentence, citing the ranked results it
    comes from; end with a ``complete`` summary of the query."""
    synthesizer = Synthesizer(params)
    async for item in items:
        for out in synthesizer.feed(item):
            yield out
    for out in synthesizer.finish():
        yield out
