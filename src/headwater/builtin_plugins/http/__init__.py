"""HTTP connectors: the ``http.webhook`` and ``sse`` sources, the ``http.request``
transformer and the ``http`` sink.

Installed with ``pip install 'headwater[http]'`` (``httpx``, ``httpx-sse`` and
``uvicorn``). This package imports none of them: a component reports the missing
package when a pipeline uses it (:func:`headwater.core.optional.require`).

URLs a pipeline sets (``http.request``'s ``url``, ``sse``'s ``url``, the ``http``
sink's ``url``) must name a host the operator's sandbox allows
(``SandboxPolicy.hosts``; loopback only by default), checked when the params are
validated and again for every request sent, after templating and on every redirect
(:mod:`._hosts`).
"""

from __future__ import annotations

from typing import Any

import headwater

from .request import http_request
from .sink import HttpSink
from .sse import sse_source
from .webhook import webhook_source

__all__ = ["HttpSink", "http_request", "sse_source", "webhook_source"]


@headwater.hookimpl
def register_actions(register: Any) -> None:
    """Register the ``http.webhook`` and ``sse`` sources."""
    register(webhook_source)
    register(sse_source)


@headwater.hookimpl
def register_transformers(register: Any) -> None:
    """Register the ``http.request`` transformer."""
    register(http_request)


@headwater.hookimpl
def register_sinks(register: Any) -> None:
    """Register the ``http`` sink."""
    register(HttpSink)
