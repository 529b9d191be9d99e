"""The dashboard's HTTP side: the ``/api/pipelines`` listing, the page and its assets.

The dashboard (``/`` of ``headwater serve``) is a static page (``static/``: plain ES
modules, no build step, no third-party request); its live data comes over the WebSocket
protocol from :class:`~headwater.server.dashboard.DashboardFeed`. This module holds what
is served over plain HTTP:

* :func:`pipelines_listing` is the body of ``/api/pipelines``: the named pipelines a
  principal may run, each with the JSON Schema of the params a ``run`` may set (taken
  from the components' params models, with the pipeline's own values as defaults).
* :func:`static_response` serves the page and its assets with their content types and a
  strict Content-Security-Policy (:func:`content_security_policy`).

:mod:`headwater.server.dashboard` re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from headwater.types import HttpResponse

if TYPE_CHECKING:
    from headwater.core.plugins import PluginManager

    from .config import NamedPipeline

__all__ = [
    "content_security_policy",
    "pipelines_listing",
    "static_response",
]


# -- /api/pipelines ---------------------------------------------------------------------

_KINDS: Final = {"sources": "action", "steps": "transformer", "sinks": "sink"}


def _split_path(path: str) -> list[str | int]:
    """``a.b[0].c`` (or ``a.b.0.c``) -> ``["a", "b", 0, "c"]`` (as ``--set`` paths)."""
    parts: list[str | int] = []
    for chunk in path.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", chunk)
        if not m:
            return []
        if m.group(1):
            parts.append(int(m.group(1)) if m.group(1).isdecimal() else m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def _lookup(data: Any, parts: Sequence[str | int]) -> tuple[bool, Any]:
    node = data
    for part in parts:
        in_dict = isinstance(node, Mapping) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_dict or in_list):
            return False, None
        node = node[part]
    return True, node


def _inline_refs(schema: Any, defs: Mapping[str, Any], depth: int = 0) -> Any:
    """``schema`` with local ``$ref``s (``#/$defs/X``) replaced by their definitions."""
    if depth > 8:
        return {}
    if isinstance(schema, list):
        return [_inline_refs(s, defs, depth + 1) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"), {})
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _inline_refs(merged, defs, depth + 1)
    return {k: _inline_refs(v, defs, depth + 1) for k, v in schema.items() if k != "$defs"}


def _param_schema(named: NamedPipeline, path: str, plugins: PluginManager) -> dict[str, Any]:
    """JSON Schema of the value at ``path`` of a named pipeline, as precise as known."""
    parts = _split_path(path)
    schema: dict[str, Any] = {}
    if len(parts) >= 4 and parts[0] in _KINDS and parts[2] == "params":
        found, stage = _lookup(named.data, parts[:2])
        kind = _KINDS[str(parts[0])]
        name = stage.get(kind) if found and isinstance(stage, Mapping) else None
        if isinstance(name, str):
            try:
                full = plugins.registry.get(kind, name).params_schema()
            except Exception:  # unknown component or a model without a schema
                full = {}
            node: Any = full
            defs = full.get("$defs", {})
            for part in parts[3:]:
                node = _inline_refs(node, defs)
                props = node.get("properties", {}) if isinstance(node, Mapping) else {}
                node = props.get(part) if isinstance(part, str) else None
                if node is None:
                    break
            if isinstance(node, Mapping):
                schema = dict(_inline_refs(node, defs))
                schema["x-component"] = f"{kind}:{name}"
    elif len(parts) == 1 and isinstance(parts[0], str):
        from headwater.core.pipeline import PipelineSpec

        full = PipelineSpec.model_json_schema()
        prop = full.get("properties", {}).get(parts[0])
        if isinstance(prop, Mapping):
            schema = dict(_inline_refs(prop, full.get("$defs", {})))
    found, value = _lookup(named.data, parts)
    if found:
        schema["default"] = value
    schema["x-path"] = path
    return schema


def pipelines_listing(
    pipelines: Mapping[str, NamedPipeline], plugins: PluginManager
) -> list[dict[str, Any]]:
    """Each named pipeline with the JSON Schema (an object) of the params ``run`` accepts.

    A param's schema is the component's own (``sources.x.params.stop`` is the ``stop``
    field of source ``x``'s action), with the pipeline's value as ``default``, and
    ``x-path`` naming the place it sets. No param is required: an absent one keeps the
    pipeline's value.
    """
    out = []
    for name in sorted(pipelines):
        named = pipelines[name]
        properties = {
            param: _param_schema(named, path, plugins) for param, path in named.params.items()
        }
        out.append(
            {
                "name": name,
                "description": named.description or str(named.data.get("description") or ""),
                "params": {
                    "type": "object",
                    "properties": properties,
                    "required": [],
                    "additionalProperties": False,
                },
                "sources": sorted(str(k) for k in (named.data.get("sources") or {})),
            }
        )
    return out


# -- static assets ----------------------------------------------------------------------

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

_ASSET_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]*\.(?:html|js|css|svg)")
_HOST: Final = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


@cache
def _assets() -> dict[str, bytes]:
    """Every file of ``static/`` by name (read once: a few small files)."""
    found: dict[str, bytes] = {}
    for entry in (resources.files("headwater.server") / "static").iterdir():
        if _ASSET_NAME.fullmatch(entry.name) and entry.is_file():
            found[entry.name] = entry.read_bytes()
    return found


def _asset(name: str) -> bytes | None:
    """The bytes of ``static/NAME``, or None (only the files shipped are ever served)."""
    return _assets().get(name)


def content_security_policy(host: str | None) -> str:
    """The page's CSP: only this server's own scripts, styles, images and WebSocket."""
    sockets = "ws: wss:"
    if host and _HOST.fullmatch(host):
        sockets = f"ws://{host} wss://{host}"
    return (
        "default-src 'self'; "
        "script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self' {sockets}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    )


PAGES: Final = ("/", "/index.html", "/errors")
"""Paths of the dashboard's page at the top level; ``/runs/{run}`` is the page one level
down."""


@cache
def _page(root: str) -> bytes | None:
    """``index.html`` with its relative URLs (``"./...``) starting at ``root``."""
    body = _asset("index.html")
    if body is None or root == "./":
        return body
    return body.replace(b'"./', b'"' + root.encode())


def static_response(path: str, host: str | None) -> HttpResponse | None:
    """The dashboard's page (``/``, ``/index.html``, ``/errors``, ``/runs/{run}``: one
    page whose script shows the view of its path) or one of its assets (``/static/X``).

    None when ``path`` is none of them (the caller answers 404).
    """
    body: bytes | None
    if path in PAGES:
        name, body = "index.html", _page("./")
    elif path.startswith("/runs/") and path.count("/") == 2 and len(path) > 6:
        name, body = "index.html", _page("../")
    elif path.startswith("/static/"):
        name = path.removeprefix("/static/")
        body = _asset(name)
    else:
        return None
    if body is None:
        return None
    suffix = name[name.rindex(".") :]
    headers = (
        ("Cache-Control", "no-cache"),
        ("Content-Security-Policy", content_security_policy(host)),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
    )
    return HttpResponse(200, body, _TYPES[suffix], headers)
