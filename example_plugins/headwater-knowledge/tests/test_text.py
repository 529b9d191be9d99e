"""The text helpers, the ranker's events and the LLM helper, without any I/O."""

from __future__ import annotations

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ranking

from headwater_knowledge.events import Citation, parse_event
from headwater_knowledge.llm import answer_events, build_prompt
from headwater_knowledge.rank import Ranker, RankParams
from headwater_knowledge.synthesize import SynthesizeParams, Synthesizer
from headwater_knowledge.text import (
    fts_query,
    html_to_text,
    markdown_to_text,
    normalize_url,
    passages,
    result_id,
    sentences,
    terms,
)


def test_terms_and_fts_query_quote_the_users_words() -> None:
    assert terms("How does the River flow, the river?") == ["river", "flow"]
    assert terms("to be or not to be") == ["to", "be", "or", "not"]  # only stop words: kept
    assert fts_query('river "NEAR(a b)" OR x') == '"river" OR "near" OR "b" OR "x"'
    assert fts_query("!!! ???") is None


def test_sentences_and_passages() -> None:
    text = "First one. Second one! Third?\n\nA new paragraph without end"
    assert sentences(text) == ["First one.", "Second one!", "Third?", "A new paragraph without end"]
    pieces = passages("Alpha beta gamma. " * 40, size=100)
    assert all(len(p) <= 110 for p in pieces) and len(pieces) > 5
    assert " ".join(pieces).count("Alpha") == 40


def test_urls_normalise_to_one_result() -> None:
    a = "HTTPS://Example.org:443/guide/?utm_source=x&b=2&a=1#part"
    b = "https://example.org/guide?a=1&b=2"
    assert normalize_url(a) == normalize_url(b) == "https://example.org/guide?a=1&b=2"
    assert result_id(a) == result_id(b)
    # a file URL keeps its fragment: two docstrings of one module are two results
    assert result_id("file:///m.py#L1") != result_id("file:///m.py#L9")


def test_html_and_markdown_become_prose() -> None:
    title, text = html_to_text(
        "<html><head><title>T &amp; U</title><script>x()</script></head>"
        "<body><nav>Menu</nav><h1>Head</h1><p>One. Two.</p><footer>f</footer></body></html>"
    )
    assert (title, text) == ("T & U", "Head\n\nOne. Two.")
    prose = markdown_to_text(
        "<!-- generated -->\n# Title\n\nSee [the guide](g.md) and `code`.\n\n```py\nx = 1\n```\n"
        "- item one\n"
    )
    assert "generated" not in prose and "x = 1" not in prose
    assert "See the guide and code." in prose
    assert sentences(prose)[:2] == ["Title", "See the guide and code."]


def _hit(provider: str, rank: int, url: str) -> dict[str, object]:
    return {"type": "hit", "provider": provider, "rank": rank, "url": url, "title": url}


hits = st.lists(
    st.tuples(st.sampled_from(["fts", "files", "web"]), st.integers(1, 30), st.integers(0, 25)),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(hits, st.integers(1, 12), st.randoms(use_true_random=False))
def test_result_events_rebuild_the_top_whatever_the_arrival_order(
    sequence: list[tuple[str, int, int]], limit: int, random: object
) -> None:
    """Applying the events in order always gives the ranker's top ``limit``, and the final
    ranking does not depend on the order the hits arrived in."""
    ranker = Ranker(RankParams(limit=limit))
    events: list[dict[str, object]] = []
    for provider, rank, page in sequence:
        out = ranker.hit(_hit(provider, rank, f"https://example.org/{page}"))
        for event in out:
            parse_event(event)
        events += out
        assert ranking(events) == ranker.top()
    shuffled = list(sequence)
    random.shuffle(shuffled)  # type: ignore[attr-defined]
    again = Ranker(RankParams(limit=limit))
    for provider, rank, page in shuffled:
        again.hit(_hit(provider, rank, f"https://example.org/{page}"))
    assert again.top() == ranker.top()


def test_fusion_and_merging_by_content() -> None:
    ranker = Ranker()
    ranker.hit(_hit("web", 1, "https://a.example/x"))
    ranker.hit(_hit("fts", 2, "https://b.example/y"))
    ranker.hit(_hit("web", 3, "https://b.example/y/"))  # the same URL: fused
    assert ranker.top() == [result_id("https://b.example/y"), result_id("https://a.example/x")]
    a, b = result_id("https://a.example/x"), result_id("https://b.example/y")
    ranker.enrichment({"type": "enrichment", "id": b, "url": "u", "ok": True, "content_hash": "h"})
    out = ranker.enrichment(
        {"type": "enrichment", "id": a, "url": "u", "ok": True, "content_hash": "h"}
    )
    removed = [e for e in out if e.get("change") == "removed"]
    assert [(e["id"], e["duplicate_of"]) for e in removed] == [(b, a)]  # a's URL sorts first
    assert ranker.top() == [a]
    assert ranker.results[a].ranks == {"web": 1, "fts": 2}
    assert out[-1]["id"] == a and "duplicate_of" not in out[-1]  # the one that stays


def _enrichment(rid: str, text: str) -> dict[str, object]:
    passage = {"id": f"{rid}:0", "text": text, "score": 1.0}
    return {"type": "enrichment", "id": rid, "url": f"u/{rid}", "ok": True, "passages": [passage]}


def test_the_synthesizer_cites_what_it_quotes_and_sums_up() -> None:
    synth = Synthesizer(SynthesizeParams(max_sentences=3, min_enriched=1))
    out = synth.feed({"type": "query", "query": "river delta", "providers": ["fts"], "started": 0})
    for i, rid in enumerate(["r1", "r2"]):
        result = {
            "type": "result",
            "change": "inserted",
            "id": rid,
            "position": i + 1,
            "url": f"u/{rid}",
            "title": rid,
            "score": 1.0,
            "providers": {"fts": i + 1},
        }
        out += synth.feed(result)
    out += synth.feed(_enrichment("r2", "A delta is where a river meets the sea. Bread is good."))
    out += synth.feed(_enrichment("r1", "The river flows through a wide delta plain today."))
    out += synth.feed({"type": "status", "provider": "fts", "state": "done", "hits": 2})
    out += synth.finish()
    answers = [e for e in out if e["type"] == "answer"]
    text = "".join(a["delta"] for a in answers)
    # incremental: the first sentence went out with the first evidence (r2's)
    assert text == (
        "A delta is where a river meets the sea. [1] "
        "The river flows through a wide delta plain today. [2]"
    )
    assert [c["id"] for a in answers for c in a["citations"]] == ["r2", "r1"]
    complete = out[-1]
    assert complete["type"] == "complete" and complete["counts"]["answer_sentences"] == 2
    assert complete["providers"]["fts"]["state"] == "done"
    for event in out:
        parse_event(event)


async def _tokens(pieces: list[str]):  # type: ignore[no-untyped-def]
    for piece in pieces:
        await anyio.lowlevel.checkpoint()
        yield piece


def test_llm_deltas_from_a_fake_token_stream_keep_split_citations_whole() -> None:
    sources = [
        Citation(n=1, id="a", url="u1", title="A"),
        Citation(n=2, id="b", url="u2", title="B"),
    ]
    pieces = ["Rivers flow ", "to the sea [", "1", "] and deltas [2", "]", " form. [9]"]

    async def main() -> list[object]:
        return [e async for e in answer_events(_tokens(pieces), sources)]

    events = anyio.run(main)
    assert "".join(e.delta for e in events) == "".join(pieces)  # type: ignore[attr-defined]
    assert [[c.n for c in e.citations] for e in events] == [[], [], [1], [2], []]  # type: ignore[attr-defined]
    prompt = build_prompt("where do rivers go?", [(sources[0], "To the sea.")])
    assert "[1] A (u1)\nTo the sea." in prompt and prompt.endswith("Question: where do rivers go?")
