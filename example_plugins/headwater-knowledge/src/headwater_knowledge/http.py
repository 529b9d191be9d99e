"""HTTP clients of the plugin: one TLS context per process, shared by every client.

Loading the CA bundle costs tens of milliseconds; a client per query (each query has its
own, closed with it) must not pay that each time.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx

__all__ = ["USER_AGENT", "async_client"]

USER_AGENT = "headwater-knowledge/0.1"


@functools.cache
def _tls() -> ssl.SSLContext:
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # the system's store
        return ssl.create_default_context()


def async_client(**kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` verifying TLS with the shared context."""
    headers = {"User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
    return httpx.AsyncClient(verify=_tls(), headers=headers, **kwargs)
