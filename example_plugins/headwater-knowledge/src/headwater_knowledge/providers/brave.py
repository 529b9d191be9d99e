"""The JSON shape of a Brave Search API web search answer (the part the provider reads).

``GET {base_url}/res/v1/web/search?q=...&count=N&offset=P`` with the key in the
``X-Subscription-Token`` header answers::

    {"type": "search",
     "query": {"original": "...", "more_results_available": true},
     "web": {"type": "search",
             "results": [{"type": "search_result", "title": "...", "url": "...",
                          "description": "...", "age": "...", "language": "en",
                          "family_friendly": true, "extra_snippets": ["..."],
                          "profile": {"name": "...", "url": "...", "long_name": "..."},
                          "meta_url": {"scheme": "https", "netloc": "...",
                                       "hostname": "...", "path": "..."}}]}}

Unknown fields are ignored (the API adds some over time); ``web`` is absent when
nothing matched. ``offset`` counts pages of ``count`` results (0 to 9).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SEARCH_PATH", "BraveQuery", "BraveResult", "BraveWeb", "BraveWebSearch"]

SEARCH_PATH = "/res/v1/web/search"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BraveProfile(_Lenient):
    """The site a result belongs to."""

    name: str | None = None
    url: str | None = None
    long_name: str | None = None


class BraveMetaUrl(_Lenient):
    """The parts of a result's URL."""

    scheme: str | None = None
    netloc: str | None = None
    hostname: str | None = None
    path: str | None = None


class BraveResult(_Lenient):
    """One web result."""

    type: str = "search_result"
    title: str
    url: str
    description: str = ""
    age: str | None = None
    language: str | None = None
    family_friendly: bool | None = None
    extra_snippets: list[str] = Field(default_factory=list)
    profile: BraveProfile | None = None
    meta_url: BraveMetaUrl | None = None


class BraveWeb(_Lenient):
    """The web results of an answer."""

    type: str = "search"
    results: list[BraveResult] = Field(default_factory=list)


class BraveQuery(_Lenient):
    """What the API understood of the query."""

    original: str = ""
    more_results_available: bool | None = None


class BraveWebSearch(_Lenient):
    """An answer of the web search endpoint."""

    type: str = "search"
    query: BraveQuery = Field(default_factory=BraveQuery)
    web: BraveWeb | None = None
