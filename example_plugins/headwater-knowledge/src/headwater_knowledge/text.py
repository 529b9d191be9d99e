"""Text helpers shared by the providers, the enricher, the ranker and the synthesizer.

Words, stop words and the FTS5 query a user's text becomes; sentences and passages;
BM25 scores of passages against a query; normalised URLs (the ranker's identity of a
result) and content hashes (its identity of a text); the text of an HTML page.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "bm25_scores",
    "content_hash",
    "fts_query",
    "html_to_text",
    "markdown_to_text",
    "normalize_url",
    "passages",
    "result_id",
    "sentences",
    "terms",
    "words",
]

STOP_WORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
    ]
)
"""English words too common to tell documents apart."""

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased."""
    return [w.lower() for w in _WORD.findall(text)]


def terms(text: str) -> list[str]:
    """The words of a query that count: stop words and repeats dropped, order kept.

    A query made only of stop words keeps them (``"to be or not to be"`` still means
    something)."""
    seen: dict[str, None] = {}
    all_words = words(text)
    for word in all_words:
        if word not in STOP_WORDS:
            seen.setdefault(word, None)
    if not seen:
        seen = dict.fromkeys(all_words)
    return list(seen)


def fts_query(text: str) -> str | None:
    """An SQLite FTS5 query matching documents with any of the query's terms.

    Each term is quoted (FTS5 syntax in the user's text has no effect) and the terms are
    joined with OR; BM25 then ranks documents with more and rarer terms first. None when
    the text has no word.
    """
    found = terms(text)
    if not found:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in found)


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (at ``.``, ``!`` or ``?`` followed by a capital or
    digit, and at blank lines); whitespace collapsed."""
    out: list[str] = []
    for block in _BLANK_LINES.split(text):
        block = _SPACES.sub(" ", block.replace("\n", " ")).strip()
        if block:
            out.extend(s.strip() for s in _SENTENCE_END.split(block) if s.strip())
    return out


def passages(text: str, size: int = 600) -> list[str]:
    """``text`` cut into passages of whole sentences, each at most about ``size``
    characters (a longer sentence is a passage of its own, cut at ``2 * size``).
    Paragraphs stay apart inside a passage (a blank line between them), so that a
    heading is never read as the start of the sentence after it."""
    out: list[str] = []
    current = ""
    for block in _BLANK_LINES.split(text):
        first = True
        for sentence in sentences(block):
            if len(sentence) > 2 * size:
                sentence = sentence[: 2 * size].rsplit(" ", 1)[0] + " …"
            if current and len(current) + len(sentence) > size:
                out.append(current)
                current = ""
            separator = "" if not current else "\n\n" if first else " "
            current += separator + sentence
            first = False
    if current:
        out.append(current)
    return out


def bm25_scores(
    query_terms: Sequence[str], docs: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75
) -> list[float]:
    """BM25 of each document (a list of words) for ``query_terms``, with the document
    frequencies of this small collection (the passages of one query)."""
    if not docs or not query_terms:
        return [0.0] * len(docs)
    n = len(docs)
    avg = sum(len(d) for d in docs) / n or 1.0
    counts = [Counter(d) for d in docs]
    df = {t: sum(1 for c in counts if t in c) for t in query_terms}
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in query_terms}
    scores = []
    for doc, c in zip(docs, counts, strict=True):
        norm = k1 * (1 - b + b * len(doc) / avg)
        scores.append(sum(idf[t] * c[t] * (k1 + 1) / (c[t] + norm) for t in query_terms if t in c))
    return scores


_TRACKING = re.compile(r"^(utm_[a-z]+|fbclid|gclid|ref)$")


def normalize_url(url: str) -> str:
    """The form of ``url`` two hits share when they are the same result: scheme and host
    lower-cased, default port, tracking parameters, the fragment of web pages and a
    trailing slash dropped. Other schemes (``file:``) keep their fragment (a line)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower()
    if (scheme, netloc.rpartition(":")[2]) in (("http", "80"), ("https", "443")):
        netloc = netloc.rpartition(":")[0]
    query = urlencode(
        sorted(
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not _TRACKING.match(k)
        )
    )
    path = parts.path.rstrip("/") if len(parts.path) > 1 else parts.path
    web = scheme in ("http", "https")
    return urlunsplit(
        (scheme, netloc, path or ("/" if web else ""), query, "" if web else parts.fragment)
    )


def result_id(url: str) -> str:
    """A short stable id for the result at ``url`` (from its normalised form)."""
    return hashlib.sha1(normalize_url(url).encode(), usedforsecurity=False).hexdigest()[:12]


def content_hash(text: str) -> str:
    """SHA-256 of ``text`` with case and whitespace normalised: two copies of a page
    (mirrors, the same file reached twice) share it."""
    return hashlib.sha256(" ".join(words(text)).encode()).hexdigest()


_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "nav", "footer"})
_BLOCK = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "td",
        "th",
        "tr",
        "ul",
    ]
)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> tuple[str | None, str]:
    """``(title, text)`` of an HTML page: scripts, styles, navigation and footers left
    out, blocks separated by blank lines."""
    parser = _TextExtractor()
    with contextlib.suppress(AssertionError, ValueError):  # malformed: keep what was read
        parser.feed(markup)
        parser.close()
    title = _SPACES.sub(" ", html.unescape("".join(parser.title))).strip() or None
    text = "".join(parser.parts)
    blocks = (_SPACES.sub(" ", b).strip() for b in _BLANK_LINES.split(text))
    return title, "\n\n".join(b for b in blocks if b)


_MD_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_MD_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.DOTALL | re.MULTILINE)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`)(?=\S)(.+?)(?<=\S)\1")
_MD_BLOCK_START = re.compile(r"^\s*(#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s?)")
_MD_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}")


def markdown_to_text(markup: str) -> str:
    """The prose of a Markdown document: code blocks and comments left out, links,
    emphasis and inline code reduced to their text, headings and list items made
    paragraphs of their own."""
    markup = _MD_FENCE.sub("", _MD_COMMENT.sub("", markup))
    lines: list[str] = []
    for line in markup.splitlines():
        if _MD_TABLE_RULE.match(line):
            continue
        if line.lstrip().startswith("|"):
            line = " ".join(c.strip() for c in line.strip().strip("|").split("|")) + "\n"
        elif _MD_BLOCK_START.match(line):
            line = "\n" + _MD_BLOCK_START.sub("", line) + "\n"
        line = _MD_IMAGE.sub(r"\1", line)
        line = _MD_LINK.sub(r"\1", line)
        lines.append(_MD_EMPHASIS.sub(r"\2", line))
    return "\n".join(lines)


def best_first(items: Iterable[tuple[float, str]], limit: int) -> list[tuple[float, str]]:
    """The ``limit`` best ``(score, text)`` pairs, best first, ties in original order."""
    ranked = sorted(enumerate(items), key=lambda p: (-p[1][0], p[0]))
    return [pair for _, pair in ranked[:limit]]
