"""Answering with a language model: answer events from any async iterator of text.

The extractive :mod:`~headwater_knowledge.synthesize` needs no model. To answer with one,
write a ``stream`` transformer that collects the best passages, builds a prompt with
:func:`build_prompt` and turns the model's streamed text into ``answer`` events with
:func:`answer_events` (see the README for the whole transformer). Any client that
streams text as an async iterator of strings fits: nothing here knows a vendor.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from .events import AnswerEvent, Citation

__all__ = ["answer_events", "build_prompt"]

_MARK = re.compile(r"\[(\d{1,3})\]")
_OPEN = re.compile(r"\[\d{0,3}$")


def build_prompt(query: str, sources: Sequence[tuple[Citation, str]]) -> str:
    """A prompt asking for an answer to ``query`` from numbered ``sources`` (a citation and
    its passage each), citing them as ``[n]``."""
    lines = [
        "Answer the question using only the sources below. Cite each claim with the",
        "number of its source in brackets, like [1]. Say so if the sources do not answer.",
        "",
    ]
    for citation, passage in sources:
        lines.append(f"[{citation.n}] {citation.title} ({citation.url})")
        lines.append(passage.strip())
        lines.append("")
    lines.append(f"Question: {query}")
    return "\n".join(lines)


async def answer_events(
    tokens: AsyncIterable[str], sources: Sequence[Citation]
) -> AsyncIterator[AnswerEvent]:
    """One ``answer`` event per piece of text the model streams, its citations resolved.

    A citation mark split across pieces (``"[", "2", "]"``) is held back until it is
    whole, so every delta's ``citations`` lists the sources its own marks name (marks
    naming no source are left as text).
    """
    by_n = {c.n: c for c in sources}
    pending = ""
    index = 0
    async for token in tokens:
        pending += token
        held = _OPEN.search(pending)
        ready, pending = (
            (pending[: held.start()], pending[held.start() :]) if held else (pending, "")
        )
        if ready:
            yield _event(index, ready, by_n)
            index += 1
    if pending:
        yield _event(index, pending, by_n)


def _event(index: int, text: str, by_n: dict[int, Citation]) -> AnswerEvent:
    cited = dict.fromkeys(int(m) for m in _MARK.findall(text) if int(m) in by_n)
    return AnswerEvent(index=index, delta=text, citations=[by_n[n] for n in cited])
