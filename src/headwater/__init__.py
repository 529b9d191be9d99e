"""headwater: streaming pipelines assembled from plugins.

The public API for plugin authors and embedders: :class:`Engine` (one per embedding),
:class:`Pipeline` and the pipeline model, the component decorators, :func:`hookimpl`,
:data:`Register`, :class:`StreamContext`, run handles, events and errors. Other
audiences have their own modules: :mod:`headwater.server` (serving streams over
WebSocket/HTTP), :mod:`headwater.scheduler` (priority scheduling and jobs files),
:mod:`headwater.testing` (pytest fixtures for plugin authors). ``headwater.core`` is
private: import from these modules instead.

Attributes are loaded lazily so that ``import headwater`` stays cheap (no plugin
discovery, no pydantic import).
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

PLUGIN_API = "1"
"""The version of the plugin contract (hooks, decorators, :class:`StreamContext`).

A plugin declares the range it targets with a module attribute
``HEADWATER_PLUGIN_API = ">=1,<2"`` (a PEP 440 specifier); a plugin whose range excludes
this version fails to load with a message naming both."""

if TYPE_CHECKING:
    from .core.api import open_run, run, run_sync
    from .core.builder import Pipeline
    from .core.cancel import CancelToken
    from .core.checkpoints import Checkpoint, CheckpointError, CheckpointStore
    from .core.components import (
        Capability,
        Component,
        ComponentKind,
        LazyComponent,
        action,
        checkpoint_store,
        exporter,
        sink,
        transformer,
    )
    from .core.context import StreamContext
    from .core.engine import Engine
    from .core.errors import (
        CheckFailed,
        CheckSkipped,
        ComponentNotFound,
        HeadwaterError,
        PipelineCancelled,
        PipelineFailed,
        PipelineTimeout,
        PipelineValidationError,
        PluginLoadError,
        StageError,
        ValidationIssue,
    )
    from .core.events import Complete, ErrorEvent, Event, Progress, Status
    from .core.expr import Expr, ExprError, Expression, ExprLimitError, MissingField
    from .core.metrics import MetricsExporter, MetricsRegistry
    from .core.pipeline import (
        ComposeSpec,
        PipelineSpec,
        RetryPolicy,
        SinkSpec,
        SourceSpec,
        StepSpec,
        Timeouts,
        load_pipeline,
        parse_pipeline,
    )
    from .core.plugins import LoadFailure, PluginInfo, PluginManager
    from .core.policy import SandboxPolicy
    from .core.runtime import RunHandle, RunResult
    from .core.services import NoServerRunning
    from .core.types import CallableRef
    from .markers import hookimpl
    from .types import AuthRequest, HttpRequest, HttpResponse, HttpRoute, Register

_LAZY: dict[str, str] = {
    "Engine": "core.engine",
    "hookimpl": "markers",
    "Register": "types",
    "AuthRequest": "types",
    "HttpRequest": "types",
    "HttpResponse": "types",
    "HttpRoute": "types",
    "open_run": "core.api",
    "run": "core.api",
    "run_sync": "core.api",
    "Pipeline": "core.builder",
    "CancelToken": "core.cancel",
    "Capability": "core.components",
    "Component": "core.components",
    "ComponentKind": "core.components",
    "LazyComponent": "core.components",
    "action": "core.components",
    "exporter": "core.components",
    "checkpoint_store": "core.components",
    "sink": "core.components",
    "transformer": "core.components",
    "Checkpoint": "core.checkpoints",
    "CheckpointError": "core.checkpoints",
    "CheckpointStore": "core.checkpoints",
    "CallableRef": "core.types",
    "CheckFailed": "core.errors",
    "CheckSkipped": "core.errors",
    "Expr": "core.expr",
    "ExprError": "core.expr",
    "ExprLimitError": "core.expr",
    "Expression": "core.expr",
    "MissingField": "core.expr",
    "SandboxPolicy": "core.policy",
    "StreamContext": "core.context",
    "ComponentNotFound": "core.errors",
    "HeadwaterError": "core.errors",
    "PipelineCancelled": "core.errors",
    "PipelineFailed": "core.errors",
    "PipelineTimeout": "core.errors",
    "PipelineValidationError": "core.errors",
    "PluginLoadError": "core.errors",
    "StageError": "core.errors",
    "ValidationIssue": "core.errors",
    "NoServerRunning": "core.services",
    "Complete": "core.events",
    "ErrorEvent": "core.events",
    "Event": "core.events",
    "Progress": "core.events",
    "Status": "core.events",
    "ComposeSpec": "core.pipeline",
    "PipelineSpec": "core.pipeline",
    "RetryPolicy": "core.pipeline",
    "SinkSpec": "core.pipeline",
    "SourceSpec": "core.pipeline",
    "StepSpec": "core.pipeline",
    "Timeouts": "core.pipeline",
    "load_pipeline": "core.pipeline",
    "parse_pipeline": "core.pipeline",
    "LoadFailure": "core.plugins",
    "PluginInfo": "core.plugins",
    "PluginManager": "core.plugins",
    "RunHandle": "core.runtime",
    "RunResult": "core.runtime",
    "MetricsExporter": "core.metrics",
    "MetricsRegistry": "core.metrics",
}

_MOVED: dict[str, str] = {
    "Server": "headwater.server",
    "ServerConfig": "headwater.server",
    "StreamingManager": "headwater.server",
    "StreamingConfig": "headwater.server",
    "StreamError": "headwater.server",
    "ClientTransport": "headwater.server",
    "Scheduler": "headwater.scheduler",
    "RunRequest": "headwater.scheduler",
    "RunRejected": "headwater.scheduler",
    "RunSkipped": "headwater.scheduler",
    "RunStateChanged": "headwater.scheduler",
    "ScheduledRun": "headwater.scheduler",
    "SchedulerError": "headwater.scheduler",
    "JobsFile": "headwater.scheduler",
    "JobsFileError": "headwater.scheduler",
    "run_jobs": "headwater.scheduler",
    "validate_jobs": "headwater.scheduler",
}
"""Names that left the top level in 0.2 (deprecated aliases, removed in 0.3)."""

_SUBMODULES = frozenset({"scheduler", "server", "testing", "client", "hookspecs", "types"})
"""Public modules reachable as attributes after a bare ``import headwater``."""

_REMOVED: dict[str, str] = {
    "hookspec": "third-party plugins implement hooks (headwater.hookimpl); they cannot add any",
    "current_server": "a run publishes to the server of its engine: use ctx.publisher in a "
    "component, server.engine or engine.servers in an application",
    "get_plugin_manager": "hold an Engine and use engine.plugins",
}

__all__ = [
    "AuthRequest",
    "CallableRef",
    "CancelToken",
    "Capability",
    "CheckFailed",
    "CheckSkipped",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "Complete",
    "Component",
    "ComponentKind",
    "ComponentNotFound",
    "ComposeSpec",
    "Engine",
    "ErrorEvent",
    "Event",
    "Expr",
    "ExprError",
    "ExprLimitError",
    "Expression",
    "HeadwaterError",
    "HttpRequest",
    "HttpResponse",
    "HttpRoute",
    "LazyComponent",
    "LoadFailure",
    "MetricsExporter",
    "MetricsRegistry",
    "MissingField",
    "NoServerRunning",
    "Pipeline",
    "PipelineCancelled",
    "PipelineFailed",
    "PipelineSpec",
    "PipelineTimeout",
    "PipelineValidationError",
    "PluginInfo",
    "PluginLoadError",
    "PluginManager",
    "Progress",
    "Register",
    "RetryPolicy",
    "RunHandle",
    "RunResult",
    "SandboxPolicy",
    "SinkSpec",
    "SourceSpec",
    "StageError",
    "Status",
    "StepSpec",
    "StreamContext",
    "Timeouts",
    "ValidationIssue",
    "__version__",
    "action",
    "checkpoint_store",
    "exporter",
    "hookimpl",
    "load_pipeline",
    "open_run",
    "parse_pipeline",
    "run",
    "run_sync",
    "sink",
    "transformer",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    target = _MOVED.get(name)
    if target is not None:
        warnings.warn(
            f"headwater.{name} is deprecated: import it from {target} "
            "(the alias goes in headwater 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(import_module(target), name)
    if name == "get_plugin_manager":
        warnings.warn(
            f"headwater.get_plugin_manager is deprecated: {_REMOVED[name]} "
            "(the alias goes in headwater 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        from .core.plugins import get_plugin_manager

        return get_plugin_manager
    if name in _REMOVED:
        raise AttributeError(f"headwater.{name} was removed in 0.2: {_REMOVED[name]}")
    raise AttributeError(f"module 'headwater' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
