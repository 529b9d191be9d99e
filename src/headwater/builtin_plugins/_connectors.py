"""The delivery facts of a connector, carried in its component's metadata.

A connector (a source or sink talking to another system) states what it promises: the
extra that installs it, its delivery guarantee, where it acknowledges, its ordering, its
backpressure and how it resumes. :func:`connector` stores them under
``Component.extra["connector"]``; ``headwater describe NAME --json`` and
``/api/components`` show them, and :func:`headwater.docgen.connectors_table` makes the
table of the Connectors page from them.
"""

from __future__ import annotations

from typing import Any, Final

from headwater.core.components import Component

__all__ = ["FACTS", "connector"]

FACTS: Final = ("extra", "guarantee", "ack", "ordering", "backpressure", "resume")
"""The keys of a connector's facts, in the order of the table's columns."""


def connector(
    component: Any,
    *,
    extra: str,
    guarantee: str,
    ack: str,
    ordering: str,
    backpressure: str,
    resume: str,
) -> Component:
    """Give ``component`` (what ``@headwater.action`` or ``@headwater.sink`` made) its
    connector facts, in ``extra["connector"]`` (Markdown text); returns it."""
    if not isinstance(component, Component):
        raise TypeError(f"connector() needs a declared component, got {component!r}")
    facts = {
        "extra": extra,
        "guarantee": guarantee,
        "ack": ack,
        "ordering": ordering,
        "backpressure": backpressure,
        "resume": resume,
    }
    component.extra["connector"] = facts  # declared at import, before registration
    return component
