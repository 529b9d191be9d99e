"""The sections of the ``headwater serve`` configuration: ``auth``, ``limits``, ``sse``,
``shutdown``, ``tls`` and ``sandbox`` (see :mod:`headwater.server.config`, which
re-exports them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from headwater.core.policy import SandboxPolicy

from .auth import TOKENS_ENV, AuthSettings, TokenGrant, parse_tokens_env

__all__ = [
    "AuthConfig",
    "LimitsConfig",
    "SandboxConfig",
    "ShutdownConfig",
    "SseConfig",
    "TlsConfig",
    "TokenConfig",
]

_STRICT = ConfigDict(extra="forbid")


class TokenConfig(BaseModel):
    """A static token's principal and the streams and pipelines it may reach."""

    model_config = _STRICT

    principal: str = Field(min_length=1, description="Name of the principal the token is for.")
    streams: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Patterns (fnmatch) of the stream ids it may subscribe to, cancel and "
        "name in a `run` (`$dashboard` and `$metrics` included: `*` matches them).",
    )
    pipelines: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Patterns (fnmatch) of the pipeline names it may run.",
    )


class AuthConfig(BaseModel):
    """Authentication of clients."""

    model_config = _STRICT

    required: bool | None = Field(
        None,
        description=(
            "Reject connections that no `authenticate` plugin accepts. Default: true when "
            "static tokens are configured (here or in HEADWATER_TOKENS), else false. Set it "
            "to true when a third-party plugin authenticates clients."
        ),
    )
    tokens: dict[str, str | TokenConfig] = Field(
        default_factory=dict,
        description="Static bearer tokens: token -> principal name, or -> {principal, "
        "streams, pipelines}.",
    )
    env: bool = Field(True, description=f"Also read static tokens from {TOKENS_ENV}.")

    @field_validator("tokens")
    @classmethod
    def _non_empty_tokens(cls, value: dict[str, Any]) -> dict[str, Any]:
        for token in value:
            if not token.strip() or any(c.isspace() for c in token):
                raise ValueError("a token must be non-empty and contain no spaces")
        return value

    def settings(self, environ: Mapping[str, str] | None = None) -> AuthSettings:
        """The effective settings: these tokens plus ``HEADWATER_TOKENS`` (unless ``env``
        is false); tokens given here win over the environment's."""
        env = os.environ if environ is None else environ
        grants: dict[str, TokenGrant] = {}
        raw = env.get(TOKENS_ENV, "") if self.env else ""
        if raw.strip():
            grants.update(parse_tokens_env(raw))
        for token, spec in self.tokens.items():
            if isinstance(spec, str):
                grants[token] = TokenGrant(spec)
            else:
                grants[token] = TokenGrant(
                    spec.principal, tuple(spec.streams) or ("*",), tuple(spec.pipelines) or ("*",)
                )
        required = self.required if self.required is not None else bool(grants)
        return AuthSettings(required=required, tokens=grants)


class LimitsConfig(BaseModel):
    """Per-connection limits; breaking one earns an `error` with a documented code."""

    model_config = _STRICT

    max_frame_bytes: int = Field(
        64 * 1024,
        ge=256,
        description=(
            "Largest client frame accepted; larger ones get `too_large`. Frames over 4x "
            "this size close the connection (WebSocket code 1009)."
        ),
    )
    max_subscriptions: int = Field(
        100, ge=1, description="Streams one connection may be subscribed to at once."
    )
    max_connections: int = Field(
        1000, ge=1, description="Open WebSocket connections; more get HTTP 503."
    )
    max_runs: int = Field(16, ge=1, description="Runs started by clients going at once.")
    rate: float = Field(
        50.0, gt=0, description="Messages per second a connection may send, on average."
    )
    burst: int = Field(100, ge=1, description="Messages a connection may send in a burst.")


class SseConfig(BaseModel):
    """Server-Sent Events (``/api/streams/{stream}/events``)."""

    model_config = _STRICT

    heartbeat: float = Field(
        15.0,
        gt=0,
        description="Seconds of silence after which an event stream gets a `: hb` comment "
        "(keeps proxies and browsers from closing an idle connection).",
    )
    retry: int | None = Field(
        None,
        ge=0,
        description="Milliseconds a browser waits before reconnecting (the `retry:` field "
        "sent first); None: the browser's default.",
    )


class ShutdownConfig(BaseModel):
    """How ``headwater serve`` stops on SIGTERM (a deploy, a scale-down)."""

    model_config = _STRICT

    drain_seconds: float = Field(
        20.0,
        ge=0,
        description="Seconds the runs going on may take to end after SIGTERM, while new "
        "`run` requests are refused (`draining`) and `/readyz` answers 503; runs still "
        "going then are cancelled (checkpointed ones commit a final checkpoint). 0: no "
        "drain. Keep it, plus about 10 s to close the connections, below the time your "
        "supervisor waits before SIGKILL (Kubernetes: terminationGracePeriodSeconds, 30 "
        "by default).",
    )


class TlsConfig(BaseModel):
    """TLS for ``headwater serve``: HTTPS and ``wss://`` on its one port.

    The files are read at start and again on SIGHUP (new connections then get the new
    certificate; open ones keep theirs). Relative paths start at the configuration
    file's folder.
    """

    model_config = _STRICT

    cert_file: str | None = Field(
        None,
        min_length=1,
        description="PEM file with the server's certificate chain (and its key, when "
        "`key_file` is not given).",
    )
    key_file: str | None = Field(
        None, min_length=1, description="PEM file with the certificate's private key."
    )
    required: bool | None = Field(
        None,
        description="Refuse to start without a certificate. Default: required when the "
        "server authenticates clients and binds an address beyond loopback (tokens must "
        "not cross the network in clear). `false` waives it, with a warning (a proxy in "
        "front terminates TLS).",
    )

    @field_validator("key_file")
    @classmethod
    def _key_needs_cert(cls, value: str | None, info: Any) -> str | None:
        if value is not None and info.data.get("cert_file") is None:
            raise ValueError("key_file needs cert_file")
        return value

    def paths(self, base_dir: str | Path | None = None) -> tuple[Path, Path | None] | None:
        """``(cert_file, key_file)`` relative to ``base_dir`` (the configuration file's
        folder; default: the working directory), or None without a certificate."""
        if self.cert_file is None:
            return None
        base = Path(base_dir) if base_dir is not None else Path.cwd()

        def resolve(name: str) -> Path:
            path = Path(os.path.expanduser(name))
            return path if path.is_absolute() else base / path

        return resolve(self.cert_file), resolve(self.key_file) if self.key_file else None


class SandboxConfig(BaseModel):
    """The operator's sandbox for the server's pipelines (see the Security page).

    Each setting left out comes from the environment (``HEADWATER_ROOTS``, ...), else its
    default; one given here replaces the environment's.
    """

    model_config = _STRICT

    roots: list[str] | None = Field(
        None,
        min_length=1,
        description="Folders the file tools may read and write; relative ones start at the "
        "configuration file's folder. Default: HEADWATER_ROOTS, else the working directory.",
    )
    callables: list[str] | None = Field(
        None,
        description="Modules or `module:function` patterns that `fn`-like params may name, "
        "beyond the built-in allow-list. Default: HEADWATER_ALLOW_CALLABLES.",
    )
    commands: list[str] | None = Field(
        None,
        description="Programs the `command` action may start (names on the server's PATH or "
        "absolute paths). Default: HEADWATER_COMMAND_ALLOW.",
    )
    command_env: list[str] | None = Field(
        None,
        description="Protected variables (PATH, LD_*, PYTHON*) a `command`'s env may set "
        "nevertheless. Default: HEADWATER_COMMAND_ENV.",
    )
    hosts: list[str] | None = Field(
        None,
        description="Hosts (globs) connectors with settable addresses may reach. Default: "
        "HEADWATER_ALLOW_HOSTS, else loopback only.",
    )
    tables: list[str] | None = Field(
        None,
        description="Database tables (globs on the name as written) that database "
        "connectors may read or write; with a list, free SQL queries are refused. Default: "
        "HEADWATER_ALLOW_TABLES, else any table.",
    )

    def policy(
        self, base_dir: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> SandboxPolicy:
        """The policy: these settings over the environment's; relative roots start at
        ``base_dir`` (the configuration file's folder; default: the working directory)."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        roots = None
        if self.roots is not None:
            roots = tuple(base / os.path.expanduser(root) for root in self.roots)
        return SandboxPolicy.from_environment(
            environ,
            roots=roots,
            callables=self.callables,
            commands=self.commands,
            command_env=self.command_env,
            hosts=self.hosts,
            tables=self.tables,
        )
