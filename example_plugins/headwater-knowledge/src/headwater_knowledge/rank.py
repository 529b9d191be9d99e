"""``knowledge.rank``: deduplicate hits and rank them, incrementally, across providers.

Hits of the same normalised URL are one result; results whose fetched text has the same
content hash are merged into one (the one whose URL sorts first stays). A result's score
is the reciprocal rank fusion of its ranks in each provider, ``sum(w_p / (k + rank_p))``:
providers' own scores (BM25, a web engine's order) are not comparable, their ranks are.
Ties are broken by the best rank, then by URL, so the final order depends only on the
hits, never on the order they arrived in.

After each hit the ranking's top ``limit`` is compared with the one before and the
difference goes out as ``result`` events (``inserted``, ``moved``, ``removed``), so a
client applying them in order always shows the current top ``limit``.
:class:`Ranker` is plain synchronous code; the transformer is a thin loop around it.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import headwater
from pydantic import BaseModel, ConfigDict, Field

from .events import ResultEvent
from .text import normalize_url, result_id

__all__ = ["RankParams", "Ranker", "rank"]


class RankParams(BaseModel):
    """Params of ``knowledge.rank``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    k: float = Field(60.0, gt=0, description="The fusion constant: larger flattens ranks.")
    limit: int = Field(50, ge=1, le=10_000, description="Results kept in the ranking shown.")
    weights: dict[str, float] = Field(
        default_factory=dict, description="Weight of each provider (default 1)."
    )


@dataclass(slots=True)
class _Result:
    id: str
    url: str
    key_url: str
    title: str
    snippet: str
    ranks: dict[str, int] = field(default_factory=dict)
    score: float = 0.0
    content_hash: str | None = None

    def sort_key(self) -> tuple[float, int, str]:
        return (-self.score, min(self.ranks.values()), self.key_url)


class Ranker:
    """The ranking of one query; :meth:`feed` takes an item and returns what to emit."""

    def __init__(self, params: RankParams | None = None) -> None:
        self.params = params or RankParams()
        self.results: dict[str, _Result] = {}
        self.alias: dict[str, str] = {}
        """Ids of results merged away -> the result that stayed."""
        self._gone: dict[str, _Result] = {}
        self.by_hash: dict[str, str] = {}
        self.order: list[str] = []
        self._keys: list[tuple[float, int, str]] = []
        self.hits = 0
        self.duplicates = 0

    # -- the ranking ----------------------------------------------------------------------

    def _score(self, result: _Result) -> float:
        weights = self.params.weights
        return sum(weights.get(p, 1.0) / (self.params.k + r) for p, r in result.ranks.items())

    def _take_out(self, rid: str) -> None:
        result = self.results[rid]
        i = bisect.bisect_left(self._keys, result.sort_key())
        del self._keys[i], self.order[i]

    def _put_in(self, rid: str) -> None:
        result = self.results[rid]
        result.score = self._score(result)
        key = result.sort_key()
        i = bisect.bisect_left(self._keys, key)
        self._keys.insert(i, key)
        self.order.insert(i, rid)

    def top(self) -> list[str]:
        """The ids of the current top ``limit``, best first."""
        return self.order[: self.params.limit]

    def _diff(self, before: list[str], dup: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """``result`` events turning the ranking shown ``before`` into the current one."""
        after = self.top()
        if after == before:
            return []
        events: list[dict[str, Any]] = []
        shown = list(before)
        keep = set(after)
        for rid in [r for r in shown if r not in keep]:
            events.append(self._event("removed", rid, None, shown.index(rid) + 1, dup))
            shown.remove(rid)
        for i, rid in enumerate(after):
            if i < len(shown) and shown[i] == rid:
                continue
            if rid in shown:
                previous = shown.index(rid) + 1
                shown.remove(rid)
                shown.insert(i, rid)
                events.append(self._event("moved", rid, i + 1, previous))
            else:
                shown.insert(i, rid)
                events.append(self._event("inserted", rid, i + 1, None))
        return events

    def _event(
        self,
        change: str,
        rid: str,
        position: int | None,
        previous: int | None,
        dup: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        result = self.results.get(rid) or self._gone[rid]
        return ResultEvent(
            change=change,
            id=rid,
            position=position,
            previous=previous,
            url=result.url,
            title=result.title,
            snippet=result.snippet,
            score=round(result.score, 6),
            providers=dict(result.ranks),
            duplicate_of=(dup or {}).get(rid),
        ).item()

    # -- items ----------------------------------------------------------------------------

    def feed(self, item: Any) -> list[Any]:
        """What to emit for ``item``: result events for a hit, the enrichment (annotated)
        and result events for an enrichment, any other item as it is."""
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "hit":
            return self.hit(item)
        if kind == "enrichment":
            return self.enrichment(item)
        return [item]

    def hit(self, hit: dict[str, Any]) -> list[dict[str, Any]]:
        """Add a provider's hit; returns the result events."""
        self.hits += 1
        key_url = normalize_url(hit["url"])
        rid = result_id(hit["url"])
        rid = self.alias.get(rid, rid)
        provider, rank = str(hit["provider"]), int(hit["rank"])
        before = self.top()
        result = self.results.get(rid)
        if result is None:
            result = _Result(
                rid, hit["url"], key_url, hit.get("title") or hit["url"], hit.get("snippet") or ""
            )
            self.results[rid] = result
        else:
            if provider in result.ranks and result.ranks[provider] <= rank:
                return []  # the same provider again, ranked no better
            self._take_out(rid)
            if not result.snippet and hit.get("snippet"):
                result.snippet = hit["snippet"]
        result.ranks[provider] = min(rank, result.ranks.get(provider, rank))
        self._put_in(rid)
        return self._diff(before)

    def enrichment(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Note a result's content hash; merge it with a result of the same content."""
        rid = self.alias.get(event["id"], event["id"])
        result = self.results.get(rid)
        digest = event.get("content_hash")
        if result is None or not event.get("ok") or not digest:
            return [event] if result is not None else []
        result.content_hash = digest
        other_id = self.by_hash.get(digest)
        if other_id is None or other_id == rid or other_id not in self.results:
            self.by_hash[digest] = rid
            return [event]
        other = self.results[other_id]
        stay, go = (other, result) if other.key_url <= result.key_url else (result, other)
        before = self.top()
        self._take_out(stay.id)
        self._take_out(go.id)
        for provider, rank in go.ranks.items():
            stay.ranks[provider] = min(rank, stay.ranks.get(provider, rank))
        del self.results[go.id]
        self._gone[go.id] = go
        self.alias[go.id] = stay.id
        for old, new in list(self.alias.items()):
            if new == go.id:
                self.alias[old] = stay.id
        self.by_hash[digest] = stay.id
        self._put_in(stay.id)
        self.duplicates += 1
        events = self._diff(before, {go.id: stay.id})
        if go.id == rid:
            event = {**event, "duplicate_of": stay.id}
        return [*events, event]


@headwater.transformer(
    "knowledge.rank",
    kind="stream",
    params=RankParams,
    output="result events for hits (inserted, moved, removed); other items passed on",
)
async def rank(
    items: AsyncIterator[Any], params: RankParams, ctx: headwater.StreamContext
) -> AsyncIterator[Any]:
    """Deduplicate hits by URL and by content, rank them by reciprocal rank fusion across
    providers, and stream each change of the top ``limit`` as it happens."""
    ranker = Ranker(params)
    async for item in items:
        for out in ranker.feed(item):
            yield out
    ctx.status(f"{ranker.hits} hits, {len(ranker.results)} results, {ranker.duplicates} merged")
