"""headwater: streaming pipelines assembled from plugins.

The public API. Everything is importable from here; attributes are loaded lazily so that
``import headwater`` stays cheap (no plugin discovery, no pydantic import).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .core.api import open_run, run, run_sync
    from .core.builder import Pipeline
    from .core.checkpoints import Checkpoint, CheckpointError, CheckpointStore
    from .core.components import (
        Capability,
        Component,
        ComponentKind,
        action,
        checkpoint_store,
        exporter,
        sink,
        transformer,
    )
    from .core.context import StreamContext
    from .core.errors import (
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
    from .core.jobs import JobsFile, JobsFileError, run_jobs, validate_jobs
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
    from .core.plugins import LoadFailure, PluginInfo, PluginManager, get_plugin_manager
    from .core.runtime import RunHandle, RunResult
    from .core.scheduler import (
        RunRejected,
        RunRequest,
        RunSkipped,
        RunStateChanged,
        ScheduledRun,
        Scheduler,
        SchedulerError,
    )
    from .core.streaming import ClientTransport, StreamError, StreamingConfig, StreamingManager
    from .core.types import CallableRef
    from .markers import hookimpl, hookspec
    from .server.app import Server
    from .server.config import ServerConfig
    from .server.registry import NoServerRunning, current_server

_LAZY: dict[str, str] = {
    "Server": "server.app",
    "ServerConfig": "server.config",
    "NoServerRunning": "server.registry",
    "current_server": "server.registry",
    "hookimpl": "markers",
    "hookspec": "markers",
    "open_run": "core.api",
    "run": "core.api",
    "run_sync": "core.api",
    "Pipeline": "core.builder",
    "Capability": "core.components",
    "Component": "core.components",
    "ComponentKind": "core.components",
    "action": "core.components",
    "exporter": "core.components",
    "checkpoint_store": "core.components",
    "Checkpoint": "core.checkpoints",
    "CheckpointError": "core.checkpoints",
    "CheckpointStore": "core.checkpoints",
    "CallableRef": "core.types",
    "sink": "core.components",
    "transformer": "core.components",
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
    "get_plugin_manager": "core.plugins",
    "RunHandle": "core.runtime",
    "RunResult": "core.runtime",
    "JobsFile": "core.jobs",
    "JobsFileError": "core.jobs",
    "run_jobs": "core.jobs",
    "validate_jobs": "core.jobs",
    "RunRejected": "core.scheduler",
    "RunRequest": "core.scheduler",
    "RunSkipped": "core.scheduler",
    "RunStateChanged": "core.scheduler",
    "ScheduledRun": "core.scheduler",
    "Scheduler": "core.scheduler",
    "SchedulerError": "core.scheduler",
    "ClientTransport": "core.streaming",
    "StreamError": "core.streaming",
    "StreamingConfig": "core.streaming",
    "StreamingManager": "core.streaming",
}

__all__ = [
    "CallableRef",
    "Capability",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "ClientTransport",
    "Complete",
    "Component",
    "ComponentKind",
    "ComponentNotFound",
    "ComposeSpec",
    "ErrorEvent",
    "Event",
    "HeadwaterError",
    "JobsFile",
    "JobsFileError",
    "LoadFailure",
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
    "RetryPolicy",
    "RunHandle",
    "RunRejected",
    "RunRequest",
    "RunResult",
    "RunSkipped",
    "RunStateChanged",
    "ScheduledRun",
    "Scheduler",
    "SchedulerError",
    "Server",
    "ServerConfig",
    "SinkSpec",
    "SourceSpec",
    "StageError",
    "Status",
    "StepSpec",
    "StreamContext",
    "StreamError",
    "StreamingConfig",
    "StreamingManager",
    "Timeouts",
    "ValidationIssue",
    "__version__",
    "action",
    "checkpoint_store",
    "current_server",
    "exporter",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_pipeline",
    "open_run",
    "parse_pipeline",
    "run",
    "run_jobs",
    "run_sync",
    "sink",
    "transformer",
    "validate_jobs",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headwater' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
