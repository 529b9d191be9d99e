"""The configuration of ``headwater serve``: a YAML file validated by pydantic.

Every problem is reported with its path (``pipelines.count.params.stop``,
``limits.max_frame_bytes``), never as a traceback. The shape::

    host: 127.0.0.1
    port: 8765
    pipelines:
      count:                              # long form: a pipeline and the params clients set
        pipeline: {name: count, sources: {numbers: {action: range, params: {stop: 10}}},
                   sinks: [{sink: websocket}]}
        params: {stop: sources.numbers.params.stop}
      errors: pipelines/errors.yaml       # short forms: a path (relative to this file) ...
      evens: {name: evens, sources: ..., sinks: ...}   # ... or an inline pipeline
    streaming: {inactivity_timeout: 300, client_queue_size: 1024}   # StreamingConfig
    auth: {tokens: {s3cret: alice, t0ken: {principal: bob, streams: ["errors*"]}}}
    origins: ["https://dashboard.example.com"]
    allowed_hosts: [streams.example.com]  # Host header values served (default: this machine)
    tls: {cert_file: cert.pem, key_file: key.pem}   # HTTPS and wss:// (reloaded on SIGHUP)
    limits: {max_frame_bytes: 65536, max_subscriptions: 100, rate: 50, burst: 100}
    sse: {heartbeat: 15, retry: 3000}     # Server-Sent Events
    sandbox: {roots: [data], commands: [git]}   # what pipelines may open and run
    shutdown: {drain_seconds: 20}         # SIGTERM: runs going on may take this long to end
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from headwater.core.errors import (
    InvalidFileError,
    PipelineValidationError,
    ValidationIssue,
    issues_from_pydantic,
    join_path,
)
from headwater.core.metrics.config import MetricsConfig
from headwater.core.pipeline import apply_override, parse_pipeline
from headwater.core.secrets import Secrets
from headwater.core.streaming import StreamingConfig

from .bridge import BridgeConfig
from .config_sections import (
    AuthConfig,
    LimitsConfig,
    SandboxConfig,
    ShutdownConfig,
    SseConfig,
    TlsConfig,
    TokenConfig,
)
from .history.config import HistoryConfig

if TYPE_CHECKING:
    from .hosts import HostPolicy

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "RELOADED_KEYS",
    "AuthConfig",
    "LimitsConfig",
    "NamedPipeline",
    "PipelineEntry",
    "SandboxConfig",
    "ServerConfig",
    "ServerConfigError",
    "ShutdownConfig",
    "SseConfig",
    "TlsConfig",
    "TokenConfig",
    "load_server_config",
    "parse_server_config",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765

_STRICT = ConfigDict(extra="forbid")

RELOADED_KEYS: Final = frozenset(
    {"pipelines", "auth", "origins", "allowed_hosts", "limits", "sse", "shutdown"}
)
"""The sections a running server takes from its file again on SIGHUP
(:meth:`BaseServer.reload <headwater.server.base.BaseServer.reload>`); the others (the
address, TLS files, streaming, bridge, metrics, sandbox, keepalive, compression) are read
at start only."""


class ServerConfigError(InvalidFileError):
    """The server configuration is invalid; ``issues`` lists every problem with its path."""

    subject = "server configuration"


class PipelineEntry(BaseModel):
    """A named pipeline clients may ``run``, and the params they may set."""

    model_config = _STRICT

    pipeline: dict[str, Any] | str = Field(
        description="The pipeline: an inline mapping, or the path of a YAML file (relative "
        "to the configuration file)."
    )
    params: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Params a client's `run` may set: param name -> dotted path in the pipeline "
            "(e.g. `stop: sources.numbers.params.stop`). Anything else is rejected."
        ),
    )
    description: str = ""


def _host_entry(value: str) -> str:
    from .hosts import HostPolicy

    HostPolicy.parse([value])  # ValueError says what is wrong
    return value


class ServerConfig(BaseModel):
    """Everything ``headwater serve`` needs: address, pipelines, limits, security."""

    model_config = _STRICT

    host: str = Field(
        DEFAULT_HOST,
        min_length=1,
        description="Address to bind. Without authentication only loopback is allowed.",
    )
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="Port (0: any free port).")
    pipelines: dict[str, PipelineEntry] = Field(
        default_factory=dict, description="Pipelines clients may run, by name."
    )
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    origins: list[str] | None = Field(
        None,
        description=(
            "Origins (`https://host[:port]`) of browser pages allowed to connect; `*` allows "
            "any. Default: the server's own origin. Clients that send no Origin header "
            "(non-browser) are always allowed."
        ),
    )
    allowed_hosts: list[Annotated[str, AfterValidator(_host_entry)]] | None = Field(
        None,
        description=(
            "Values of the `Host` header the server answers (`HOST`: any port, "
            "`HOST:PORT`, `[IPV6]:PORT`, `.example.com`: the domain and its subdomains, "
            "`*`: any); others get 421, which defeats DNS rebinding. Default: `localhost`, "
            "`127.0.0.1`, `[::1]`, the bound address and the address a request arrived "
            "on, with the server's port or none (ASGI app: the loopback names with any "
            "port, and the address the ASGI server reports)."
        ),
    )
    tls: TlsConfig = Field(
        default_factory=TlsConfig,
        description="TLS certificate of `headwater serve` (HTTPS, wss://), reloaded on SIGHUP.",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    sse: SseConfig = Field(default_factory=SseConfig, description="Server-Sent Events.")
    compression: bool = Field(
        False,
        description="Enable permessage-deflate (saves bandwidth, costs 20-45% throughput).",
    )
    ping_interval: float | None = Field(
        20.0, gt=0, description="Seconds between keepalive pings (None: no pings)."
    )
    ping_timeout: float | None = Field(
        20.0, gt=0, description="Seconds to wait for a pong before closing the connection."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Metrics exporters run with the server."
    )
    bridge: BridgeConfig | None = Field(
        None, description="Share streams with other nodes through Redis (see scaling out)."
    )
    history: HistoryConfig = Field(
        default_factory=HistoryConfig,
        description="Run history: where runs are recorded and how much is kept.",
    )
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig,
        description="What the pipelines may open and run: file roots, callables, programs, "
        "hosts (see the Security page).",
    )
    shutdown: ShutdownConfig = Field(
        default_factory=ShutdownConfig,
        description="The drain on SIGTERM: how long the runs going on may take to end.",
    )

    def host_policy(self) -> HostPolicy | None:
        """The policy of ``allowed_hosts`` (None: the default, see :mod:`.hosts`)."""
        from .hosts import HostPolicy

        return None if self.allowed_hosts is None else HostPolicy.parse(self.allowed_hosts)

    @field_validator("pipelines", mode="before")
    @classmethod
    def _short_forms(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[Any, Any] = {}
        for name, entry in value.items():
            if isinstance(entry, str) or (isinstance(entry, Mapping) and "pipeline" not in entry):
                out[name] = {"pipeline": entry}
            else:
                out[name] = entry
        return out

    @field_validator("pipelines")
    @classmethod
    def _pipeline_names(cls, value: dict[str, PipelineEntry]) -> dict[str, PipelineEntry]:
        for name in value:
            if not 1 <= len(name) <= 256 or any(c.isspace() for c in name):
                raise ValueError(f"pipeline name {name!r}: 1 to 256 characters, no spaces")
        return value

    def named_pipelines(
        self, base_dir: str | Path | None = None, *, secrets: Secrets | None = None
    ) -> dict[str, NamedPipeline]:
        """Load every pipeline (files relative to ``base_dir``) and check its shape.

        ``${...}`` in pipeline files are substituted, the values added to ``secrets``.
        Raises :class:`ServerConfigError` listing every problem with its path.
        """
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        issues: list[ValidationIssue] = []
        out: dict[str, NamedPipeline] = {}
        for name, entry in self.pipelines.items():
            named = _load_entry(name, entry, base, issues, secrets)
            if named is not None:
                out[name] = named
        if issues:
            raise ServerConfigError(issues)
        return out


@dataclass(frozen=True, slots=True)
class NamedPipeline:
    """A pipeline of the server configuration, loaded and shape-checked."""

    name: str
    data: dict[str, Any]
    """The pipeline mapping (as in YAML); each run applies its params to a deep copy."""
    params: dict[str, str]
    """Param name -> dotted path, the params a client's ``run`` may set."""
    description: str = ""
    source: str | None = None
    """The file the pipeline came from, if any."""

    def with_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the pipeline mapping with a client's params applied.

        Raises :class:`~headwater.PipelineValidationError` for an unknown param (listing
        the allowed ones) or a path that cannot be set.
        """
        unknown = sorted(k for k in params if k not in self.params)
        if unknown:
            allowed = ", ".join(sorted(self.params)) or "none"
            raise PipelineValidationError(
                [
                    ValidationIssue(f"params.{key}", f"unknown param (allowed: {allowed})")
                    for key in unknown
                ]
            )
        data = copy.deepcopy(self.data)
        for key, value in params.items():
            apply_override(data, self.params[key], value)
        return data


def _prefixed(prefix: str, issues: list[ValidationIssue]) -> list[ValidationIssue]:
    return [ValidationIssue(join_path(prefix, i.path), i.message) for i in issues]


def _load_entry(
    name: str,
    entry: PipelineEntry,
    base: Path,
    issues: list[ValidationIssue],
    secrets: Secrets | None = None,
) -> NamedPipeline | None:
    where = f"pipelines.{name}" if name.isidentifier() else f"pipelines[{name!r}]"
    source: str | None = None
    if isinstance(entry.pipeline, str):
        from headwater.core.yamlfile import YamlFileError, read_yaml

        path = Path(os.path.expanduser(entry.pipeline))
        if not path.is_absolute():
            path = base / path
        source = str(path)
        try:
            data = read_yaml(path, secrets=secrets)
        except YamlFileError as exc:
            issues.append(ValidationIssue(f"{where}.pipeline", exc.describe(name_file=True)))
            return None
        if not isinstance(data, dict):
            issues.append(ValidationIssue(f"{where}.pipeline", f"{path} is not a mapping"))
            return None
        prefix = f"{where} ({path.name})"
    else:
        data = copy.deepcopy(entry.pipeline)
        prefix = f"{where}.pipeline"
    try:
        parse_pipeline(data)
    except PipelineValidationError as exc:
        issues.extend(_prefixed(prefix, exc.issues))
        return None
    for param, dotted in entry.params.items():
        probe = copy.deepcopy(data)
        try:
            apply_override(probe, dotted, None)
        except PipelineValidationError as exc:
            problem = exc.issues[0].message if exc.issues else "cannot be set"
            issues.append(ValidationIssue(f"{where}.params.{param}", f"{dotted}: {problem}"))
    return NamedPipeline(name, data, dict(entry.params), entry.description, source)


def parse_server_config(
    data: Any,
    *,
    base_dir: str | Path | None = None,
    source: str | None = None,
    secrets: Secrets | None = None,
) -> ServerConfig:
    """Validate a mapping (parsed YAML) into a :class:`ServerConfig`; check its pipelines.

    Pipeline files are read relative to ``base_dir`` (default: the working directory),
    with substitution (the values substituted are added to ``secrets``).
    Raises :class:`ServerConfigError` listing every problem with its path.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ServerConfigError(
            [
                ValidationIssue(
                    "", f"the configuration must be a mapping, not {type(data).__name__}"
                )
            ],
            source,
        )
    try:
        config = ServerConfig.model_validate(dict(data))
    except ValidationError as exc:
        issues = _issues(exc)
        if not any(i.path.startswith("pipelines") for i in issues):
            # report the pipelines' problems too, all at once
            try:
                only = ServerConfig.model_validate({"pipelines": data.get("pipelines") or {}})
                only.named_pipelines(base_dir, secrets=secrets)
            except (ValidationError, ServerConfigError) as more:
                if isinstance(more, ServerConfigError):
                    issues.extend(more.issues)
        raise ServerConfigError(issues, source) from None
    try:
        config.named_pipelines(base_dir, secrets=secrets)
    except ServerConfigError as exc:
        raise ServerConfigError(exc.issues, source) from None
    try:
        config.auth.settings()
    except ValueError as exc:
        raise ServerConfigError([ValidationIssue("auth", str(exc))], source) from None
    return config


def load_server_config(path: str | Path, *, secrets: Secrets | None = None) -> ServerConfig:
    """Read and validate a server configuration file (YAML).

    ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in its string values and in its
    pipeline files are substituted; the values substituted are added to ``secrets`` (pass
    the serving engine's, ``engine.services.secrets``, to have them masked).
    """
    from headwater.core.yamlfile import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path, ServerConfigError, secrets=secrets)
    return parse_server_config(data, base_dir=path.parent, source=str(path), secrets=secrets)


def _issues(exc: ValidationError) -> list[ValidationIssue]:
    # unions (token: str | TokenConfig) add the member's name to the path: drop it
    return issues_from_pydantic(exc, union_tags=("str", "TokenConfig"))
