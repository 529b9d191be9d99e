"""TLS for ``headwater serve``: the certificate, its reload, and when it is required.

``tls: {cert_file, key_file}`` in the server configuration makes the one port speak
HTTPS and ``wss://``. :class:`ServerCertificate` owns the server's one
``ssl.SSLContext``; :meth:`ServerCertificate.reload` (``headwater serve`` calls it on
SIGHUP) loads the files again into that same context, so every new connection gets the
new certificate while open ones keep theirs. A reload that fails (a missing file, a key
that does not match) changes nothing: the files are first tried on a scratch context.

:func:`tls_requirement` is the rule, as plain code: a server that authenticates clients
and binds an address beyond loopback needs a certificate (bearer tokens must not cross
the network in clear), unless the operator waives it (``tls: {required: false}``, for a
proxy in front that terminates TLS), which is warned about.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from headwater.core.net import is_loopback

from .config import TlsConfig

__all__ = ["ServerCertificate", "TlsRequirement", "tls_requirement"]


@dataclass(frozen=True, slots=True)
class TlsRequirement:
    """What :func:`tls_requirement` decided: an error that stops the server, or a
    warning to log (or neither)."""

    error: str | None = None
    warning: str | None = None


def tls_requirement(host: str, auth_required: bool, tls: TlsConfig) -> TlsRequirement:
    """Whether a server on ``host`` may start with ``tls`` as configured.

    * ``tls.required`` true: a certificate is needed, wherever the server binds;
    * not set: a certificate is needed when the server authenticates clients
      (``auth_required``) and ``host`` is beyond loopback;
    * false: never needed; a warning when the default would have needed it.
    """
    has_cert = tls.cert_file is not None
    exposed = auth_required and not is_loopback(host)
    if has_cert:
        return TlsRequirement()
    if tls.required is True:
        return TlsRequirement(error="tls.required is true but tls.cert_file is not set")
    if not exposed:
        return TlsRequirement()
    if tls.required is False:
        return TlsRequirement(
            warning=f"serving on {host} without TLS (tls.required: false): bearer tokens "
            "cross the network in clear unless a proxy in front terminates TLS"
        )
    return TlsRequirement(
        error=f"refusing to serve on {host} with authentication but without TLS: clients' "
        "bearer tokens would cross the network in clear. Configure tls.cert_file and "
        "tls.key_file, or set tls.required: false when a proxy in front terminates TLS, "
        "or bind 127.0.0.1"
    )


class ServerCertificate:
    """The server's TLS context and the files it was loaded from."""

    def __init__(self, cert_file: Path, key_file: Path | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        """The context every connection is wrapped with (the same object for the
        server's whole life)."""
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        self.reload()

    def reload(self) -> None:
        """Load the certificate chain and key again, into the same context.

        Raises ``ValueError`` saying which file is wrong; the context then keeps the
        certificate it had.
        """
        scratch = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load(scratch)  # fails here, before the live context is touched
        self._load(self.context)

    def _load(self, context: ssl.SSLContext) -> None:
        key = self.key_file
        for path in (self.cert_file, key):
            if path is not None and not path.is_file():
                raise ValueError(f"tls: no such file: {path}")
        try:
            context.load_cert_chain(self.cert_file, key)
        except (ssl.SSLError, OSError) as exc:
            files = f"{self.cert_file}" + (f" and {key}" if key is not None else "")
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
            raise ValueError(f"tls: cannot load the certificate from {files}: {reason}") from None
