"""The ``metrics`` section of a configuration (``headwater serve``'s, for one): which
exporters to start alongside, by name, with their params (see
:func:`~headwater.core.metrics.build_exporters`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ExporterEntry", "MetricsConfig"]

_STRICT = ConfigDict(extra="forbid")


class ExporterEntry(BaseModel):
    """One exporter to start: its component name and params."""

    model_config = _STRICT

    exporter: str = Field(min_length=1, description="Exporter name, e.g. prometheus or jsonl.")
    params: dict[str, Any] = Field(default_factory=dict, description="The exporter's params.")


class MetricsConfig(BaseModel):
    """The ``metrics`` section of a configuration: exporters to run alongside."""

    model_config = _STRICT

    exporters: list[ExporterEntry] = Field(
        default_factory=list, description="Exporters started with the process, in order."
    )
